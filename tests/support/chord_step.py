"""The small CHORD step the layout tests run on every layout: its config, its 7-row batches of
three kinds, and one training step from given weights (tests/dist/test_train_layouts.py,
tests/gpu/test_te_packing_cp.py)."""

import torch

BASE = [
    "model.num_layers=4",
    "model.hidden_size=32",
    "model.ffn_hidden_size=48",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.vocab_size=64",
    "model.max_seq_length=32",
    "model.rotary_base=500.0",
    "rollout.temperature=0.7",
    "algorithm.mu.peak=0.3",
    "algorithm.mu.valley=0.3",
    "algorithm.clip_high=0.28",
    "algorithm.dual_clip=3.0",
    "optim.lr=0.05",
    "optim.adam_eps=0.1",
    "optim.grad_clip=0.5",
    "train.seed=7",
    "data.max_prompt_tokens=8",
    "data.max_response_tokens=8",
    "rollout.max_new_tokens=8",
]
KINDS = ("mixed", "rl_only", "sft_only")


def config(*overrides):
    from chord_megatron.config import load_config

    return load_config(None, BASE + list(overrides))


def make_batch(kind: str, *, with_rollout_logp: bool = False):
    """7 right-padded rows of length 12; prompts of 3-5 tokens, responses of 4-7 tokens."""
    from chord_megatron.types import TrainBatch

    g = torch.Generator().manual_seed(11)
    B, S = 7, 12
    expert = {"mixed": [0, 1, 0, 0, 1, 0, 1], "rl_only": [0] * 7, "sft_only": [1] * 7}[kind]
    ids = torch.randint(1, 64, (B, S), generator=g)
    loss_mask = torch.zeros(B, S)
    for r in range(B):
        prompt, resp = 3 + r % 3, 4 + r % 4
        ids[r, prompt + resp :] = 0  # padding
        loss_mask[r, prompt - 1 : prompt + resp - 1] = 1
    labels = torch.roll(ids, -1, 1)
    labels[:, -1] = 0
    is_expert = torch.tensor(expert, dtype=torch.bool)
    old = -4.1 + 0.4 * torch.randn(B, S, generator=g)
    old[is_expert] = float("nan")  # expert rows have no behaviour policy
    return TrainBatch(
        input_ids=ids,
        labels=labels,
        loss_mask=loss_mask,
        is_expert=is_expert,
        advantages=torch.randn(B, generator=g) * (~is_expert),
        old_logp=old,
        rollout_logp=(-4.0 + 0.1 * torch.randn(B, S, generator=g)) if with_rollout_logp else None,
    )


def one_step(cfg, par, W0, kind):
    """One train_step of a fresh engine from W0 on batch `kind`: metrics, full grads, params."""
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.train.weights import iter_full_tensors

    engine = MegatronEngine(cfg, par=par, full_state_dict=W0)
    loaded = {n: t.clone() for n, t in engine.export_weights()}
    metrics = engine.train_step(make_batch(kind), step=0)
    grads = dict(iter_full_tensors(engine.model, engine.par, what="grad"))
    params = {n: t.clone() for n, t in engine.export_weights()}
    return {"metrics": metrics, "grads": grads, "params": params, "loaded": loaded}, engine
