"""The checkpoint tests' small model, its per-step batches and a weights snapshot
(tests/dist/test_train_checkpoint.py, tests/dist/test_fused_adam_resume.py)."""

import torch

BASE = [
    "model.num_layers=4",
    "model.hidden_size=32",
    "model.ffn_hidden_size=48",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.vocab_size=64",
    "model.max_seq_length=32",
    "optim.lr=0.01",
    "optim.lr_schedule=cosine",
    "optim.lr_warmup_steps=1",
    "optim.min_lr=0.001",
    "optim.weight_decay=0.01",
    "train.steps=6",
    "train.micro_batch_size=2",
    "checkpoint.keep_last=2",
    "algorithm.mu.warmup=2",
    "algorithm.mu.decay=4",
    "algorithm.mu.peak=0.5",
    "algorithm.mu.valley=0.1",
    "data.max_prompt_tokens=8",
    "data.max_response_tokens=8",
    "rollout.max_new_tokens=8",
]


def config(*overrides):
    from chord_megatron.config import load_config

    return load_config(None, BASE + list(overrides))


def batch(step: int):
    """A different mixed batch per step (8 rows, on-policy and expert)."""
    from chord_megatron.types import TrainBatch

    g = torch.Generator().manual_seed(100 + step)
    B, S = 8, 12
    ids = torch.randint(1, 64, (B, S), generator=g)
    mask = torch.zeros(B, S)
    mask[:, 4:11] = 1
    is_expert = torch.arange(B) % 3 == 1
    return TrainBatch(
        input_ids=ids,
        labels=torch.roll(ids, -1, 1),
        loss_mask=mask,
        is_expert=is_expert,
        advantages=torch.randn(B, generator=g) * (~is_expert),
        old_logp=-4.1 + 0.3 * torch.randn(B, S, generator=g),
    )


def weights(engine):
    return {n: t.clone() for n, t in engine.export_weights()}
