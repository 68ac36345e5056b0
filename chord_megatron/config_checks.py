"""What makes a built config valid beyond its types: ranges, choices, and how sections must fit
together (parallel layout vs model shape, SGLang's options vs the weight-sync transport, ...).

Reads the config's attributes only, so that it imports nothing of config.py (which calls it from
load_config and turns the first problem into a ConfigError naming the key and its source). The
SGLang layout rules live here too: the launch plan, the router and the NCCL sync count with them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Tuple


def sglang_gpus_per_server(options: Mapping[str, Any]) -> int:
    """GPUs one SGLang server takes, from its options -- the sglang: section, or a running
    server's /server_info, which reports the same keys: (tp_size, or tp; default 1) x dp_size x
    pp_size. The launch plan, the server launcher and the NCCL weight sync all count with it."""
    tp = options.get("tp_size", options.get("tp", 1))
    return int(tp or 1) * int(options.get("dp_size", 1) or 1) * int(options.get("pp_size", 1) or 1)


def weight_sync_layout_problem(options: Mapping[str, Any], weight_sync: str) -> Optional[Tuple[str, str]]:
    """(sglang key, reason) when SGLang 0.5.23 cannot take weights by `weight_sync` (nccl or
    tensor) from servers with these options (the sglang: section, or /server_info), else None.

    * dp_size > 1: every update_weights_from_tensor / _distributed (and the update group's
      setup) asserts dp_size == 1 (tokenizer_control_mixin.py), an HTTP 500 at the first sync;
    * pp_size > 1: a server's GPUs join the update group at rank_offset + tp_rank, so the GPUs
      of different pipeline stages with the same TP rank take the same rank."""
    if weight_sync not in ("nccl", "tensor"):
        return None
    dp = int(options.get("dp_size", options.get("data_parallel_size", 1)) or 1)
    pp = int(options.get("pp_size", options.get("pipeline_parallel_size", 1)) or 1)
    if dp > 1:
        return "sglang.dp_size", (
            f"{dp}: SGLang refuses weight updates by {weight_sync} from a server with data-parallel replicas "
            f"(it asserts dp_size == 1); use rollout.weight_sync=disk, or dp_size=1 and several servers"
        )
    if pp > 1:
        return "sglang.pp_size", (
            f"{pp}: with pipeline stages two GPUs of a server take the same rank in SGLang's weight-update "
            f"group (rank_offset + tp_rank), so {weight_sync} sync cannot work; use rollout.weight_sync=disk, "
            f"or pp_size=1 (a larger tp_size, or several servers)"
        )
    return None


def first_problem(cfg, choices: Mapping[str, Tuple[str, ...]]) -> Optional[Tuple[str, str]]:
    """(dotted key, message) of the first check a built config fails, else None. `choices`: the
    allowed values of the one_of fields (config.CHOICES)."""
    try:
        _check(cfg, choices)
    except _Problem as p:
        return p.key, p.message
    return None


class _Problem(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _check(cfg, choices: Mapping[str, Tuple[str, ...]]) -> None:
    def fail(key: str, message: str):
        raise _Problem(key, message)

    def get(key: str):
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        return node

    for key, allowed in choices.items():
        if get(key) not in allowed:
            fail(key, f"must be one of {', '.join(allowed)}, got {get(key)!r}")

    positive_ints = [
        "model.num_layers",
        "model.hidden_size",
        "model.ffn_hidden_size",
        "model.num_attention_heads",
        "model.num_query_groups",
        "model.vocab_size",
        "model.max_seq_length",
        "parallel.tensor",
        "parallel.pipeline",
        "parallel.context",
        "rollout.prompts_per_step",
        "rollout.samples_per_prompt",
        "rollout.max_new_tokens",
        "rollout.sync_every",
        "rollout.concurrency",
        "rollout.sync_bucket_mb",
        "data.max_prompt_tokens",
        "data.max_response_tokens",
        "train.micro_batch_size",
        "train.eval_samples",
        "checkpoint.keep_last",
        "data.arith_digits",
        "data.arith_rl_prompts",
        "data.arith_eval_prompts",
        "base.batch_rows",
        "base.problems",
        "base.patience",
        "base.val_problems",
    ]
    for key in positive_ints:
        if get(key) < 1:
            fail(key, f"must be >= 1, got {get(key)}")
    for key in [
        "train.steps",
        "train.eval_every",
        "rollout.verify_every",
        "rollout.probe_every",
        "rollout.max_retries",
        "checkpoint.save_every",
        "optim.lr_warmup_steps",
        "algorithm.mu.warmup",
        "algorithm.mu.decay",
        "algorithm.mu.sft_steps",
        "data.arith_expert_rows",
        "base.steps",
        "base.eval_every",
        "train.pack_length",
        "train.cpu_threads",
    ]:
        if get(key) < 0:
            fail(key, f"must be >= 0, got {get(key)}")

    d, b = cfg.data, cfg.base
    if d.task == "arith":  # the generated problems are drawn without repeats from half the space
        space = (9 * 10 ** (d.arith_digits - 1)) ** 2
        asked = d.arith_rl_prompts + d.arith_expert_rows + d.arith_eval_prompts
        asked += b.val_problems if b.eval_every and b.steps else 0
        if asked > space // 2:
            fail(
                "data.arith_digits",
                f"{d.arith_digits}-digit additions give {space} problems; data.arith_rl_prompts + arith_expert_rows + "
                f"arith_eval_prompts (+ base.val_problems with base.eval_every) ask for {asked}, more than half of them",
            )

    m, p = cfg.model, cfg.parallel
    if m.hidden_size % m.num_attention_heads:
        fail(
            "model.hidden_size",
            f"{m.hidden_size} is not divisible by model.num_attention_heads={m.num_attention_heads}",
        )
    if m.num_attention_heads % m.num_query_groups:
        fail(
            "model.num_query_groups",
            f"{m.num_query_groups} does not divide model.num_attention_heads={m.num_attention_heads}",
        )
    if m.head_dim is not None and m.head_dim < 1:
        fail("model.head_dim", f"must be >= 1, got {m.head_dim}")
    if m.kv_channels % 2:
        fail(
            "model.head_dim" if m.head_dim else "model.hidden_size",
            "the head dimension must be even for rotary embeddings",
        )
    if not m.rope_scaling_factor > 0:
        fail("model.rope_scaling_factor", f"must be > 0, got {m.rope_scaling_factor}")
    if m.num_attention_heads % p.tensor:
        fail("parallel.tensor", f"{p.tensor} does not divide model.num_attention_heads={m.num_attention_heads}")
    if m.num_query_groups % p.tensor:
        fail("parallel.tensor", f"{p.tensor} does not divide model.num_query_groups={m.num_query_groups}")
    if m.ffn_hidden_size % p.tensor:
        fail("parallel.tensor", f"{p.tensor} does not divide model.ffn_hidden_size={m.ffn_hidden_size}")
    chunks = p.pipeline * (p.virtual_pipeline or 1)
    if p.virtual_pipeline is not None and (p.virtual_pipeline < 1 or p.pipeline < 2):
        fail("parallel.virtual_pipeline", "needs parallel.pipeline >= 2 and a value >= 1")
    if m.num_layers % chunks:
        fail(
            "parallel.pipeline", f"pipeline x virtual stages = {chunks} does not divide model.num_layers={m.num_layers}"
        )
    if p.sequence_parallel and p.tensor == 1:
        fail("parallel.sequence_parallel", "needs parallel.tensor > 1")
    if not p.rank0_wait_minutes > 0:
        fail("parallel.rank0_wait_minutes", f"must be > 0, got {p.rank0_wait_minutes}")
    if p.context > 1 and (m.max_seq_length % (2 * p.context)):
        fail("parallel.context", f"2 x {p.context} must divide model.max_seq_length={m.max_seq_length}")

    a = cfg.algorithm
    if not 0.0 <= a.expert_data_ratio <= 1.0:
        fail("algorithm.expert_data_ratio", f"must be in [0, 1], got {a.expert_data_ratio}")
    for key in ("algorithm.mu.peak", "algorithm.mu.valley"):
        if not 0.0 <= get(key) <= 1.0:
            fail(key, f"must be in [0, 1], got {get(key)}")
    if a.mu.decay > 0 and a.mu.peak < a.mu.valley:
        fail("algorithm.mu.peak", f"{a.mu.peak} is below algorithm.mu.valley={a.mu.valley}: a decaying mu must fall")
    for key in ("algorithm.clip_low", "algorithm.clip_high"):
        if not 0.0 <= get(key) < 1.0:
            fail(key, f"must be in [0, 1), got {get(key)}")
    if a.dual_clip is not None and a.dual_clip <= 1.0:
        fail("algorithm.dual_clip", f"must be > 1 (the reference uses 3.0), got {a.dual_clip}")
    if a.cutoff_prob is not None and not 0.0 < a.cutoff_prob <= 1.0:
        fail("algorithm.cutoff_prob", f"must be in (0, 1], got {a.cutoff_prob}")
    if a.tis_cap is not None and a.tis_cap <= 0:
        fail("algorithm.tis_cap", f"must be > 0, got {a.tis_cap}")
    if a.logratio_clamp is not None and a.logratio_clamp <= 0:
        fail("algorithm.logratio_clamp", f"must be > 0, got {a.logratio_clamp}")

    r = cfg.rollout
    if not r.temperature > 0:
        fail("rollout.temperature", f"must be > 0, got {r.temperature}")
    if not 0.0 < r.top_p <= 1.0:
        fail("rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    if r.sync_ports and not (len(r.sync_ports) == 2 and 0 < r.sync_ports[0] <= r.sync_ports[1] < 65536):
        fail("rollout.sync_ports", f"must be [first, last] with 0 < first <= last < 65536, got {r.sync_ports}")
    if r.engine == "sglang" and not (r.router_url or r.server_urls or cfg.sglang):
        fail("rollout.engine", "sglang needs rollout.router_url, rollout.server_urls or an sglang: section to launch")
    if r.engine == "sglang":
        problem = weight_sync_layout_problem(cfg.sglang, r.weight_sync)
        if problem:
            fail(*problem)
    if r.release_sglang_memory and r.engine != "sglang":
        fail("rollout.release_sglang_memory", f"needs rollout.engine=sglang (got {r.engine})")
    if r.release_sglang_memory and r.asynchronous:
        fail(
            "rollout.asynchronous",
            "cannot be combined with rollout.release_sglang_memory: the servers keep generating while the "
            "trainer trains, so they cannot hand it their memory",
        )
    if r.release_sglang_memory and cfg.sglang and cfg.sglang.get("enable_memory_saver") is not True:
        fail(
            "sglang.enable_memory_saver", "must be true with rollout.release_sglang_memory (else SGLang frees nothing)"
        )

    o = cfg.optim
    if not (o.lr > 0 and math.isfinite(o.lr)):
        fail("optim.lr", f"must be > 0, got {o.lr}")
    if o.min_lr > o.lr:
        fail("optim.min_lr", f"{o.min_lr} is above optim.lr={o.lr}")
    for key in ("optim.adam_beta1", "optim.adam_beta2"):
        if not 0.0 <= get(key) < 1.0:
            fail(key, f"must be in [0, 1), got {get(key)}")
    if o.grad_clip < 0:
        fail("optim.grad_clip", f"must be >= 0 (0 = off), got {o.grad_clip}")
    for key in ("data.expert_error_rate", "base.expert_style_frac", "base.target"):
        if not 0.0 <= get(key) < 1.0:
            fail(key, f"must be in [0, 1), got {get(key)}")
    if cfg.base.min_delta < 0:
        fail("base.min_delta", f"must be >= 0, got {cfg.base.min_delta}")

    if cfg.launch.rollout_nodes is not None and cfg.launch.rollout_nodes < 1:
        fail("launch.rollout_nodes", f"must be >= 1 (or null for the default), got {cfg.launch.rollout_nodes}")

    if cfg.data.task == "jsonl":
        for key in ("data.prompt_path",):
            if not get(key):
                fail(key, "is required when data.task is jsonl")
        if a.expert_data_ratio > 0 and not cfg.data.expert_path:
            fail("data.expert_path", "is required when data.task is jsonl and algorithm.expert_data_ratio > 0")
    if cfg.base.steps > 0 and cfg.data.task != "arith" and not m.hf_path:
        fail(
            "base.steps",
            f"trains the demo's toy base model, which only data.task=arith defines (data.task is "
            f"{cfg.data.task}): start from model.hf_path, or set base.steps=0 for random weights",
        )
    if cfg.data.max_prompt_tokens + r.max_new_tokens > m.max_seq_length:
        fail(
            "rollout.max_new_tokens",
            f"data.max_prompt_tokens ({cfg.data.max_prompt_tokens}) + rollout.max_new_tokens ({r.max_new_tokens}) "
            f"exceeds model.max_seq_length ({m.max_seq_length})",
        )
    if cfg.data.max_prompt_tokens + cfg.data.max_response_tokens > m.max_seq_length:
        fail(
            "data.max_response_tokens",
            f"data.max_prompt_tokens ({cfg.data.max_prompt_tokens}) + data.max_response_tokens "
            f"({cfg.data.max_response_tokens}) exceeds model.max_seq_length ({m.max_seq_length})",
        )
