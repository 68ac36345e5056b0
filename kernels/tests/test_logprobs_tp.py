"""A real 2-process tensor-parallel run over gloo: TP=2 shards must reproduce TP=1.

Each rank builds the same full logits from a seed, keeps its vocabulary shard (even and uneven
splits), runs every implementation with the world group as tp_group, and compares its log-probs,
entropies and shard gradient with a single-process computation on the full vocabulary.
"""

import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

N, V = 48, 1000
TEMPERATURE = 0.8
SPLITS = {"even": [0, 500, 1000], "uneven": [0, 613, 1000]}
TOL = dict(rtol=1e-5, atol=1e-5)


# ---- TP=1 truth: stock torch on the full vocabulary ----------------------------------------
def full_vocab_truth(logits, targets, g_logp, g_ent):
    x = logits.clone().requires_grad_()
    z = x / TEMPERATURE
    logp = -F.cross_entropy(z, targets, reduction="none", ignore_index=-100)
    ent = torch.distributions.Categorical(logits=z).entropy()
    ((g_logp * logp).sum() + (g_ent * ent).sum()).backward()
    return logp.detach(), ent.detach(), x.grad


def _case(dtype):
    gen = torch.Generator().manual_seed(1234)
    logits = (torch.randn(N, V, generator=gen) * 4).to(dtype)
    targets = torch.randint(0, V, (N,), generator=gen)
    # Both sides of every shard boundary, the vocabulary ends, and ignore_index.
    targets[:8] = torch.tensor([0, 499, 500, 612, 613, 999, -100, 1])
    return logits, targets, torch.randn(N, generator=gen), torch.randn(N, generator=gen)


def _worker(rank, world, port):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        from chord_kernels import vocab_parallel_logprobs

        group = dist.group.WORLD
        for dtype in (torch.float32, torch.bfloat16):
            logits, targets, g_logp, g_ent = _case(dtype)
            truth = full_vocab_truth(logits.float(), targets, g_logp, g_ent)
            for split, bounds in SPLITS.items():
                start, stop = bounds[rank], bounds[rank + 1]
                for impl in ("triton", "chunked", "reference"):
                    for inplace in (False, True) if impl != "reference" else (False,):
                        where = f"rank {rank} {dtype} {split} {impl} inplace={inplace}"
                        shard = logits[:, start:stop].clone().requires_grad_()
                        logp, ent = vocab_parallel_logprobs(
                            shard,
                            targets,
                            vocab_start=start,
                            temperature=TEMPERATURE,
                            tp_group=group,
                            impl=impl,
                            inplace_backward=inplace,
                        )
                        ((g_logp * logp).sum() + (g_ent * ent).sum()).backward()
                        torch.testing.assert_close(logp, truth[0], **TOL, msg=lambda m: f"{where} logp: {m}")
                        torch.testing.assert_close(ent, truth[1], **TOL, msg=lambda m: f"{where} entropy: {m}")
                        want_grad = truth[2][:, start:stop]
                        if dtype == torch.float32:
                            torch.testing.assert_close(shard.grad, want_grad, **TOL, msg=lambda m: f"{where} grad: {m}")
                        else:  # one bf16 ulp (the interpreter truncates where torch rounds)
                            torch.testing.assert_close(
                                shard.grad.float(),
                                want_grad.to(dtype).float(),
                                rtol=2**-7,
                                atol=1e-6,
                                msg=lambda m: f"{where} grad: {m}",
                            )
                        assert logp[6] == 0, "ignore_index target must give logp 0"
        # Shards that do not tile the vocabulary are an error for the oracle.
        with pytest.raises(ValueError, match="tile"):
            bad = logits[:, :500] if rank == 0 else logits[:, 600:]
            vocab_parallel_logprobs(bad, targets, vocab_start=0 if rank == 0 else 600, tp_group=group, impl="reference")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
def test_tp2_matches_tp1_all_impls():
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)
