"""Parity of the Triton (interpreted on CPU) and chunked paths against the torch reference.

Single process, one vocabulary shard per call. Multi-rank sharding is in test_logprobs_tp.py.
Tolerances: fp32 within 1e-5; bf16 logits give fp32 log-probs (same tolerance, the math is fp32)
and bf16 gradients that may differ by one bf16 ulp: the Triton interpreter rounds fp32 -> bf16
by truncation where a GPU (and torch) round to nearest even.
"""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import chord_kernels.chunked
from chord_kernels import LaunchConfig, vocab_parallel_logprobs
from chord_kernels.reference import reference_vocab_parallel_logprobs


# ---- independent torch reference: full vocabulary, stock torch losses ----------------------
def torch_full_vocab(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    """log p(target) (0 for ignore_index -100) and entropy via cross_entropy and Categorical."""
    z = logits.float() / temperature
    logp = -F.cross_entropy(z, targets, reduction="none", ignore_index=-100)
    return logp, torch.distributions.Categorical(logits=z).entropy()


FP32_TOL = dict(rtol=1e-5, atol=1e-5)
# One bf16 ulp is a relative step of 2**-8 .. 2**-7.
BF16_GRAD_TOL = dict(rtol=2**-7, atol=1e-6)


def run_loss(fn, logits, targets, g_logp, g_ent, **kwargs):
    """Forward, then backward of sum(g_logp * logp + g_ent * H); returns (logp, H, grad).

    The gradient is read from the leaf's .grad *after* backward, so it is correct even when
    the implementation wrote it over the logits buffer.
    """
    x = logits.detach().clone().requires_grad_()
    logp, ent = fn(x, targets, **kwargs)
    loss = (g_logp * logp).sum() + (0 if ent is None else (g_ent * ent).sum())
    loss.backward()
    return logp.detach(), (None if ent is None else ent.detach()), x.grad


def make_case(n, v, dtype, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=gen) * scale).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    g_logp = torch.randn(n, generator=gen)
    g_ent = torch.randn(n, generator=gen)
    return logits, targets, g_logp, g_ent


def assert_grad_close(actual, expected, dtype):
    assert actual.dtype == dtype
    tol = FP32_TOL if dtype == torch.float32 else BF16_GRAD_TOL
    torch.testing.assert_close(actual.float(), expected.float(), **tol)


# ---- the oracle itself ---------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_reference_matches_stock_torch(temperature):
    logits, targets, g_logp, g_ent = make_case(64, 777, torch.float32)
    targets[:5] = -100
    logp, ent = reference_vocab_parallel_logprobs(logits, targets, vocab_start=0, temperature=temperature)
    want_logp, want_ent = torch_full_vocab(logits, targets, temperature)
    torch.testing.assert_close(logp, want_logp, **FP32_TOL)
    torch.testing.assert_close(ent, want_ent, **FP32_TOL)
    assert (logp[:5] == 0).all()

    # Gradient of the combined loss, through stock torch ops.
    _, _, grad = run_loss(
        reference_vocab_parallel_logprobs, logits, targets, g_logp, g_ent, vocab_start=0, temperature=temperature
    )
    x = logits.clone().requires_grad_()
    want_lp, want_h = torch_full_vocab(x, targets, temperature)
    ((g_logp * want_lp).sum() + (g_ent * want_h).sum()).backward()
    torch.testing.assert_close(grad, x.grad, **FP32_TOL)


# ---- fast paths vs the oracle --------------------------------------------------------------
IMPLS = ["triton", "chunked"]
DTYPES = [torch.float32, torch.bfloat16]

# (name, N, V_local, vocab_start, temperature): V never a multiple of the 2048-wide interpreter
# tile or the 32-row chunk, N not a multiple of the rows per program.
CASES = [
    ("ragged_v", 45, 2500, 0, 1.0),
    ("temperature", 37, 1000, 0, 0.7),
    ("shard_at_offset", 50, 700, 300, 1.3),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("name,n,v,start,temp", CASES, ids=[c[0] for c in CASES])
def test_parity(impl, dtype, name, n, v, start, temp):
    logits, targets, g_logp, g_ent = make_case(n, v, dtype, seed=len(name))
    targets += start
    # Targets on both edges of the shard, just outside it, and ignore_index; masked tokens get
    # a zero upstream gradient, as a loss mask would give them.
    targets[:6] = torch.tensor([start, start + v - 1, start - 1, start + v, -100, start + 1])
    g_logp[6:9] = 0.0
    g_ent[6:9] = 0.0
    kw = dict(vocab_start=start, temperature=temp)
    want = run_loss(reference_vocab_parallel_logprobs, logits, targets, g_logp, g_ent, **kw)
    got = run_loss(vocab_parallel_logprobs, logits, targets, g_logp, g_ent, impl=impl, **kw)
    torch.testing.assert_close(got[0], want[0], **FP32_TOL)
    torch.testing.assert_close(got[1], want[1], **FP32_TOL)
    assert_grad_close(got[2], want[2], dtype)
    # Out-of-shard targets (no TP group: the shard is the whole vocabulary) are "invalid": 0.
    assert got[0][2] == 0 and got[0][3] == 0 and got[0][4] == 0
    assert (got[0][[0, 1, 5]] < 0).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_inplace_backward_into_strided_view(impl, dtype):
    """The gradient lands in the caller's (row-strided) buffer and nowhere else."""
    logits, targets, g_logp, g_ent = make_case(40, 900, dtype, seed=3)
    want = run_loss(reference_vocab_parallel_logprobs, logits, targets, g_logp, g_ent, vocab_start=0)

    storage = torch.full((40, 1000), 7.0, dtype=dtype)
    storage[:, :900] = logits
    leaf = storage[:, :900].requires_grad_()  # a leaf view with row stride 1000
    logp, ent = vocab_parallel_logprobs(leaf, targets, vocab_start=0, impl=impl, inplace_backward=True)
    ((g_logp * logp).sum() + (g_ent * ent).sum()).backward()
    # (AccumulateGrad copies a gradient for a non-dense leaf, so look at the buffer itself.)
    assert_grad_close(storage[:, :900], want[2], dtype)
    assert_grad_close(leaf.grad, want[2], dtype)
    assert (storage[:, 900:] == 7.0).all(), "wrote outside the view"


@pytest.mark.parametrize("impl", IMPLS)
def test_inplace_backward_after_output_layer(impl):
    """As in training: logits = hidden @ W^T (non-leaf); the gradient reaching the matmul is the
    logits buffer itself, and the weight gradient matches the reference."""
    gen = torch.Generator().manual_seed(9)
    hidden = torch.randn(24, 16, generator=gen)
    weight = torch.randn(500, 16, generator=gen)
    targets = torch.randint(0, 500, (24,), generator=gen)
    g_logp, g_ent = torch.randn(24, generator=gen), torch.randn(24, generator=gen)

    def weight_grad(**kw):
        w = weight.clone().requires_grad_()
        logits = hidden @ w.t()
        seen = []
        logits.register_hook(lambda g: seen.append(g.data_ptr() == logits.data_ptr()))
        logp, ent = vocab_parallel_logprobs(logits, targets, vocab_start=0, temperature=0.8, **kw)
        ((g_logp * logp).sum() + (g_ent * ent).sum()).backward()
        return w.grad, seen

    want, _ = weight_grad(impl="reference")
    got, seen = weight_grad(impl=impl, inplace_backward=True)
    assert seen == [True], "gradient did not reuse the logits buffer"
    torch.testing.assert_close(got, want, **FP32_TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_not_inplace_leaves_logits_untouched(impl):
    logits, targets, g_logp, g_ent = make_case(20, 600, torch.float32, seed=4)
    x = logits.clone().requires_grad_()
    logp, ent = vocab_parallel_logprobs(x, targets, vocab_start=0, impl=impl)
    ((g_logp * logp).sum() + (g_ent * ent).sum()).backward()
    assert torch.equal(x.detach(), logits)
    assert x.grad.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("impl", IMPLS)
def test_without_entropy_and_logp_only_loss(impl):
    logits, targets, g_logp, g_ent = make_case(33, 1100, torch.float32, seed=5)
    targets = targets.to(torch.int32)  # int32 ids are accepted too
    kw = dict(vocab_start=0, temperature=0.9, with_entropy=False)
    want = run_loss(reference_vocab_parallel_logprobs, logits, targets.long(), g_logp, g_ent, **kw)
    got = run_loss(vocab_parallel_logprobs, logits, targets, g_logp, g_ent, impl=impl, **kw)
    assert got[1] is None and want[1] is None
    torch.testing.assert_close(got[0], want[0], **FP32_TOL)
    torch.testing.assert_close(got[2], want[2], **FP32_TOL)

    # Entropy computed but not used by the loss: its gradient is None inside backward.
    def logp_only(x, t, **k):
        return vocab_parallel_logprobs(x, t, impl=impl, **k)[0], None

    got = run_loss(logp_only, logits, targets, g_logp, g_ent, vocab_start=0, temperature=0.9)
    torch.testing.assert_close(got[2], want[2], **FP32_TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_batch_dims_and_large_logits(impl):
    """[B, T, V] in -> [B, T] out; logits around 1e3 (entropy must not cancel catastrophically)."""
    logits, targets, g_logp, g_ent = make_case(2 * 17, 800, torch.float32, seed=6)
    logits = logits + 1000.0
    shape = (2, 17)
    args = [logits.view(*shape, 800), targets.view(shape), g_logp.view(shape), g_ent.view(shape)]
    want = run_loss(reference_vocab_parallel_logprobs, *args, vocab_start=0)
    got = run_loss(vocab_parallel_logprobs, *args, vocab_start=0, impl=impl)
    assert got[0].shape == shape and got[1].shape == shape and got[2].shape == (*shape, 800)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **FP32_TOL)


# Launch variants under the interpreter: tiles narrower than V (V = 700 is a multiple of none of
# them), N = 9 not a multiple of the rows, per-row and per-lane accumulators, pipelining depths.
# (num_stages changes nothing in the interpreter; the sm_90 AOT test compiles the pipelined loop.)
LAUNCHES = [
    LaunchConfig(1, 256, 1),  # GPU-style: one row per program
    LaunchConfig(4, 128, 1, num_stages=2),
    LaunchConfig(1, 256, 4, num_stages=3, lane_accumulators=True),
    LaunchConfig(16, 512, 1, lane_accumulators=True),
]


def moving_max_case(dtype):
    """Rows whose maximum moves the way that stresses the online merges: rising along the
    vocabulary (every tile raises every lane's max), falling, one spike 200 above the rest (the
    other lanes' rescale factors underflow to 0), and logits around 1e3."""
    logits, targets, g_logp, g_ent = make_case(9, 700, torch.float32, seed=7)
    ramp = torch.linspace(0, 30, 700)
    logits[0] += ramp
    logits[1] -= ramp
    logits[2, 350] += 200.0
    logits[3] += 1000.0
    targets[2] = 350
    return logits.to(dtype), targets, g_logp, g_ent


@pytest.mark.parametrize("launch", LAUNCHES, ids=LaunchConfig.note)
def test_triton_launch_configs(launch):
    logits, targets, g_logp, g_ent = moving_max_case(torch.float32)
    # T = 1: at |z| ~ 1e3 an fp32 ulp is 6e-5, so x / T (reference) and x * (1 / T) (kernel)
    # would differ by more than the tolerance before any kernel math happens.
    kw = dict(vocab_start=0)
    want = run_loss(reference_vocab_parallel_logprobs, logits, targets, g_logp, g_ent, **kw)
    got = run_loss(vocab_parallel_logprobs, logits, targets, g_logp, g_ent, impl="triton", launch=launch, **kw)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **FP32_TOL)


@pytest.mark.parametrize("with_entropy", [True, False], ids=["entropy", "logp_only"])
def test_triton_lane_accumulators_bf16(with_entropy):
    logits, targets, g_logp, g_ent = moving_max_case(torch.bfloat16)
    kw = dict(vocab_start=0, with_entropy=with_entropy)
    want = run_loss(reference_vocab_parallel_logprobs, logits, targets, g_logp, g_ent, **kw)
    launch = LaunchConfig(2, 256, 1, lane_accumulators=True)
    got = run_loss(vocab_parallel_logprobs, logits, targets, g_logp, g_ent, impl="triton", launch=launch, **kw)
    torch.testing.assert_close(got[0], want[0], **FP32_TOL)
    if with_entropy:
        torch.testing.assert_close(got[1], want[1], **FP32_TOL)
    assert_grad_close(got[2], want[2], torch.bfloat16)


def test_launch_config_is_validated():
    with pytest.raises(ValueError, match="block_v"):
        LaunchConfig(1, 3000, 8)
    with pytest.raises(ValueError, match="num_stages"):
        LaunchConfig(1, 4096, 8, num_stages=0)
    logits, targets, _, _ = make_case(4, 50, torch.float32)
    with pytest.raises(ValueError, match="launch"):
        vocab_parallel_logprobs(logits, targets, vocab_start=0, impl="chunked", launch=LaunchConfig(1, 64, 1))


def test_chunk_size_does_not_matter():
    from chord_kernels.chunked import ChunkedVocabParallelLogprobs

    logits, targets, g_logp, g_ent = make_case(50, 300, torch.bfloat16, seed=8)
    want = run_loss(reference_vocab_parallel_logprobs, logits, targets, g_logp, g_ent, vocab_start=0)
    for rows in (1, 7, 64):
        got = run_loss(
            lambda x, t: ChunkedVocabParallelLogprobs.apply(x, t, 0, 1.0, None, True, False, rows),
            logits,
            targets,
            g_logp,
            g_ent,
        )
        torch.testing.assert_close(got[0], want[0], **FP32_TOL)
        torch.testing.assert_close(got[1], want[1], **FP32_TOL)
        assert_grad_close(got[2], want[2], torch.bfloat16)


def test_auto_uses_chunked_on_cpu(monkeypatch):
    calls = []
    real = chord_kernels.chunked.ChunkedVocabParallelLogprobs.apply
    monkeypatch.setattr(
        chord_kernels.chunked.ChunkedVocabParallelLogprobs, "apply", lambda *a: calls.append(1) or real(*a)
    )
    logits, targets, _, _ = make_case(4, 50, torch.float32)
    vocab_parallel_logprobs(logits, targets, vocab_start=0)
    assert calls == [1]


def test_rejects_bad_arguments():
    logits, targets, _, _ = make_case(4, 50, torch.float32)
    with pytest.raises(ValueError, match="impl"):
        vocab_parallel_logprobs(logits, targets, vocab_start=0, impl="cuda")
    with pytest.raises(ValueError, match="targets"):
        vocab_parallel_logprobs(logits, targets[:3], vocab_start=0)
    with pytest.raises(ValueError, match="temperature"):
        vocab_parallel_logprobs(logits, targets, vocab_start=0, temperature=0.0)
    with pytest.raises(TypeError):
        vocab_parallel_logprobs(logits, targets.float(), vocab_start=0)


def test_empty_batch():
    for impl in IMPLS:
        logp, ent = vocab_parallel_logprobs(
            torch.zeros(0, 10), torch.zeros(0, dtype=torch.long), vocab_start=0, impl=impl
        )
        assert logp.shape == (0,) and ent.shape == (0,)


def test_import_and_chunked_path_without_triton():
    """Triton is imported lazily: the package and its CPU path work where Triton is absent."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, chord_kernels\n"
        "lp, h = chord_kernels.vocab_parallel_logprobs(torch.zeros(2, 4), torch.tensor([0, 3]), vocab_start=0)\n"
        "assert torch.allclose(lp, torch.full((2,), -1.3862944)) and torch.allclose(h, torch.full((2,), 1.3862944))\n"
        "assert 'chord_kernels.triton_logprobs' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
