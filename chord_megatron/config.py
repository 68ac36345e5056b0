"""Typed configuration: YAML files plus `key=value` dotted overrides.

A config is a tree of frozen dataclasses, one per concern (model, parallel, data, rollout,
algorithm, optim, train, logging, checkpoint). Options of Megatron and SGLang that this project
does not model pass through verbatim in the free-form `megatron:` and `sglang:` sections.

Every problem is reported at load time as one ConfigError line that names the key and where
its value came from (the YAML file or the command line):

    configs/demo.yaml: algorithm.mu.peek: unknown key (known: warmup, decay, peak, valley, ...)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from .algo.schedules import staged_mu
from .algo.weights import TOKEN_WEIGHT_KINDS
from .config_checks import first_problem
from .errors import ChordError

COMMAND_LINE = "command line"


class ConfigError(ChordError, ValueError):
    """A config problem; str(error) is one line naming the source and the key."""

    exit_code, kind = 2, "config error"

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key = source, key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
def one_of(*choices: str, default: Optional[str] = None):
    """A str field that takes one of `choices` (default: the first, or `default`). The choices
    live here only: validation (CHOICES) and the reference (`chord config reference`) read them."""
    return field(default=default or choices[0], metadata={"choices": tuple(choices)})


@dataclass(frozen=True)
class ModelConfig:
    """A Llama/Qwen2-style decoder (RMSNorm, SwiGLU, RoPE, grouped-query attention)."""

    name: str = "tiny"  # a label for logs and reports
    hf_path: Optional[str] = None  # a local Hugging Face checkpoint folder to load weights from
    num_layers: int = 2  # transformer layers
    hidden_size: int = 64  # model width
    ffn_hidden_size: int = 176  # SwiGLU inner width
    num_attention_heads: int = 4  # query heads
    num_query_groups: int = 2  # key/value heads (grouped-query attention)
    vocab_size: int = 64  # output vocabulary (padded size; at least the tokenizer's)
    max_seq_length: int = 256  # longest prompt + response the model sees
    rotary_base: float = 10000.0  # RoPE theta
    norm_eps: float = 1e-6  # RMSNorm epsilon
    qkv_bias: bool = False  # bias on the QKV projection (Qwen2)
    tie_embeddings: bool = True  # share the input embedding and the output layer
    head_dim: Optional[int] = None  # attention head size; None = hidden_size / num_attention_heads
    qk_layernorm: bool = False  # RMSNorm of each query and key head before RoPE (Qwen3)
    rope_scaling: str = one_of("none", "llama3", "linear")  # llama3: Llama-3.1/3.2 frequency scaling
    rope_scaling_factor: float = 8.0  # the checkpoint's rope factor when rope_scaling is not none
    dtype: str = one_of("auto", "fp32", "bf16")  # auto = bf16 on GPU, fp32 on CPU
    # auto = transformer_engine when present with CUDA, else local
    transformer_impl: str = one_of("auto", "local", "transformer_engine")

    @property
    def kv_channels(self) -> int:
        """The attention head size: head_dim, or hidden_size / num_attention_heads."""
        return self.head_dim or self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ParallelConfig:
    tensor: int = 1  # tensor-parallel size (divides heads, query groups, ffn width)
    pipeline: int = 1  # pipeline-parallel stages
    virtual_pipeline: Optional[int] = None  # model chunks per pipeline rank (interleaved schedule)
    context: int = 1  # context-parallel size: each sequence is split over this many ranks (2 x context chunks)
    sequence_parallel: bool = False  # Megatron sequence parallelism (GPU only, needs tensor > 1)
    distributed_optimizer: bool = True  # shard optimizer state over data-parallel ranks
    backend: str = one_of("auto", "nccl", "gloo")  # auto = nccl with CUDA, gloo without
    # how long ranks 1..N wait for rank 0's rollouts and evaluations: object broadcasts go
    # through a gloo group with this timeout, not the default group's (NCCL's 30 minutes)
    rank0_wait_minutes: float = 360.0


@dataclass(frozen=True)
class DataConfig:
    task: str = one_of("arith", "jsonl")  # arith = the generated toy task; jsonl = the files below
    prompt_path: Optional[str] = None  # RL prompts JSONL ({prompt or messages, answer})
    expert_path: Optional[str] = None  # expert JSONL ({prompt, response} or messages)
    eval_path: Optional[str] = None  # held-out prompts JSONL (default: the first RL prompts)
    max_prompt_tokens: int = 64  # longer prompts are bad rows
    max_response_tokens: int = 96  # longer expert responses are bad rows
    on_bad_row: str = one_of("error", "skip")  # error = stop naming file and line; skip = drop it and count it
    seed: int = 0  # seed of the generated task's splits
    reward: str = "arith"  # a name in the reward registry (chord_megatron/rewards)
    tokenizer: Optional[str] = None  # a local HF tokenizer folder; default: model.hf_path, else characters
    # The generated arithmetic task (data.task = arith): problem sizes and split sizes.

    arith_digits: int = 2
    arith_rl_prompts: int = 2000
    arith_expert_rows: int = 1000
    arith_eval_prompts: int = 200
    expert_error_rate: float = 0.0  # share of expert rows with a forgotten carry (a wrong answer): an imperfect expert


@dataclass(frozen=True)
class BaseModelConfig:
    """The demo's base model: trained from scratch by direct-answer SFT in a first stage and
    cached, so that later runs (and `chord compare`'s variants) start from the same weights.
    Needs data.task=arith; unused when model.hf_path names a checkpoint."""

    steps: int = 600  # the most steps of the stage (0 = start RL from random weights)
    lr: float = 3e-3
    batch_rows: int = 64
    problems: int = 50000
    cache_dir: str = "runs/base-cache"
    # The stop rule (demo/plateau.py): a plateau, so that the base does not hinge on where a
    # still-rising curve was cut.
    eval_every: int = 0  # score held-out problems every N steps (0 = no rule: train all `steps`)
    patience: int = 3  # stop after this many scores in a row without a gain of min_delta on the best
    min_delta: float = 0.005  # the score: mean probability of the exact answer at temperature 1
    # or stop at the first score >= target (0 = none): a base of set strength on every seed (plateau.py)
    target: float = 0.0
    val_problems: int = 200  # scored problems: held out from pre-training and from the RL evaluation set
    expert_style_frac: float = 0.0  # share of pre-training rows written as the expert writes (correctly)


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = one_of("inprocess", "sglang")  # inprocess: CPU, HF transformers
    prompts_per_step: int = 8  # prompts rolled out per optimiser step
    samples_per_prompt: int = 8  # K responses per prompt (the GRPO group)
    temperature: float = 1.0  # sampling temperature; the trainer scales its logits by it too
    top_p: float = 1.0  # nucleus sampling
    max_new_tokens: int = 64  # response length limit (a cut response scores -1)
    sync_every: int = 1  # push weights to the engines every N optimiser steps
    # generate step t+1's rollouts while step t trains (one step off-policy: the ratio is taken
    # against the rollout's own log-probs); the in-process engine then runs in its own process
    asynchronous: bool = False
    # check the served weights after every N syncs (0 = never): the next step's training forward
    # scores the served tokens anyway (free); a probe batch only where no step will (see probe_every)
    verify_every: int = 1
    # also sample a probe batch every N checked syncs (0 = only at the first sync, before an
    # SFT-only step and before the final evaluation, which no training forward checks)
    probe_every: int = 0
    # largest allowed token-mean KL (k3) between served and trainer log-probs; null = by precision
    # (1e-2 when bf16 is involved, 1e-4 in fp32)
    verify_tolerance: Optional[float] = None
    # tensor: colocated; nccl: separate nodes; disk: a shared file system
    weight_sync: str = one_of("tensor", "nccl", "disk")
    sync_bucket_mb: int = 512  # size of one weight-sync bucket
    # sglang colocated: servers release KV cache (and weights when a sync follows) during each
    # train step, the trainer empties its cache after it (needs sglang.enable_memory_saver)
    release_sglang_memory: bool = False
    # tensor sync: the SGLang servers' CUDA_VISIBLE_DEVICES (e.g. "4,5,6,7" or GPU UUIDs) when it
    # is not the trainer's; each server TP rank is fed by the trainer rank on its GPU. null = the trainer's
    server_visible_devices: Optional[str] = None
    # ports the NCCL weight-update group may take on trainer rank 0's host, [first, last]; the
    # launch scripts give the job's reserved range; [] = any free port
    sync_ports: List[int] = field(default_factory=list)
    router_url: Optional[str] = None  # attach to a running sglang-router
    server_urls: List[str] = field(default_factory=list)  # SGLang servers to put behind a router started here
    concurrency: int = 64  # in-flight /generate requests
    # sglang: one request per sample with its own sampling_seed (reproducible rollouts; start
    # servers with --enable-deterministic-inference)
    seeded_sampling: bool = False
    request_timeout_s: float = 600.0  # per request
    max_retries: int = 3  # per request, with backoff
    num_servers: int = 1  # SGLang servers to launch from the sglang: section (no urls given)
    startup_timeout_s: float = 900.0  # wait this long for launched servers and the router


@dataclass(frozen=True)
class MuConfig:
    """mu(step): linear warmup to `peak`, cosine decay to `valley` (constant valley if both 0)."""

    warmup: int = 0  # steps of linear warmup to peak
    decay: int = 0  # steps of cosine decay from peak to valley
    peak: float = 0.1  # mu after warmup
    valley: float = 0.1  # mu after decay (the floor)
    sft_steps: int = 0  # mu = 1 for this many steps first, then the schedule (SFT-then-RL)
    adaptive: bool = False  # appendix variant: mu = max(0, tau - mean reward)
    tau: float = 0.5  # adaptive mu's target reward

    def at(self, step: int) -> Optional[float]:
        """mu of `step` (the SFT stage, then the schedule); None when adaptive: it then needs
        the step's rewards (algo.adaptive_mu). The loop and the engine both ask here."""
        if self.adaptive:
            return None
        return staged_mu(
            step, sft_steps=self.sft_steps, warmup=self.warmup, decay=self.decay, peak=self.peak, valley=self.valley
        )


@dataclass(frozen=True)
class AlgorithmConfig:
    mu: MuConfig = field(default_factory=MuConfig)
    token_weight: str = one_of(*TOKEN_WEIGHT_KINDS, default="p1mp")
    gamma: float = 2.0  # focal exponent
    is_cap: float = 0.4  # is_clip cap
    cutoff_prob: Optional[float] = None  # expert tokens with p above it get no SFT gradient
    clip_low: float = 0.2  # PPO clip: ratio >= 1 - clip_low
    clip_high: float = 0.2  # PPO clip: ratio <= 1 + clip_high
    dual_clip: Optional[float] = None  # the reference uses 3.0
    logratio_clamp: Optional[float] = 20.0  # clamp log(pi/pi_old) to [-c, c]
    tis_cap: Optional[float] = None  # truncated IS against rollout/trainer mismatch (off)
    adv_scale: str = one_of("std", "none")  # none: the mean-only advantage
    adv_eps: float = 1e-6  # added to the group std
    adv_singleton: str = one_of("zero", "raw")  # advantage of a group of one response
    expert_data_ratio: float = 0.2  # fraction of a batch's rows that are expert rows


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5  # Adam learning rate
    min_lr: float = 0.0  # floor of cosine / linear decay
    lr_schedule: str = one_of("constant", "cosine", "linear")
    lr_warmup_steps: int = 0  # linear LR warmup
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0  # decoupled (AdamW)
    grad_clip: float = 1.0  # global gradient-norm clip (0 = off)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100  # optimiser steps (one per rollout batch)
    micro_batch_size: int = 4  # rows per micro-batch, at most (a step's rows are spread evenly over as few as fit)
    seed: int = 1234  # seeds weights, sampling and data order
    eval_every: int = 10  # evaluate every N steps, at step 0 and at the end (0 = never)
    eval_samples: int = 4  # k of avg@k
    log_prob_impl: str = one_of("auto", "triton", "chunked", "reference")
    pack_sequences: bool = False  # pack several rows into each model row (micro_batch_size = model rows)
    pack_length: int = 0  # tokens per packed model row (0 = the batch's padded row length; longer rows widen it)
    # a separate forward pass for the old log-probs; with one update per batch the training
    # forward's own (detached) log-probs are the same numbers, so the pass is off by default
    recompute_old_logp: bool = False
    output_dir: str = "runs/chord"  # metrics, TensorBoard, checkpoints and generated data go here
    # cuda: stop at startup when torch sees no GPU (e.g. a driver older than torch's CUDA build
    # needs) instead of training on CPU over gloo; auto: CUDA when torch sees it, else CPU
    device: str = one_of("auto", "cuda")
    # torch's intra-op threads when training on the CPU (0 = torch's default, one per core). A
    # model as small as the demo's loses more to handing each small op between threads than
    # it gains: on 2 cores it runs ~1.5x faster with 1 thread (configs/demo.yaml).
    cpu_threads: int = 0


@dataclass(frozen=True)
class LoggingConfig:
    jsonl: bool = True  # write <output_dir>/metrics.jsonl
    tensorboard: bool = True  # write <output_dir>/tensorboard
    progress: bool = True  # progress bar


@dataclass(frozen=True)
class CheckpointConfig:
    dir: Optional[str] = None  # default: <train.output_dir>/checkpoints
    save_every: int = 0  # 0 = only at the end
    keep_last: int = 2  # older checkpoints are deleted
    # Adam state: dp_reshardable resumes on the same layout; fully_reshardable on any
    # (all-gathered over DP while saving)
    optimizer_format: str = one_of("dp_reshardable", "fully_reshardable")


@dataclass(frozen=True)
class LaunchConfig:
    """How `chord launch plan` and launch/*.sbatch lay out a slurm job (--rollout-nodes and
    ROLLOUT_NODES win over the config)."""

    # disaggregated jobs: the nodes that run SGLang; null = ceil(nodes / 4), at least 1
    rollout_nodes: Optional[int] = None


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    base: BaseModelConfig = field(default_factory=BaseModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    # Pass-through: handed to Megatron's TransformerConfig / SGLang's server arguments untouched.
    megatron: Dict[str, Any] = field(default_factory=dict)
    sglang: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: str) -> "Config":
        """A copy with dotted overrides applied, e.g. cfg.replace(**{"train.steps": "3"})."""
        return load_config(None, [f"{k}={v}" for k, v in overrides.items()], base=self.to_dict())


PASS_THROUGH = ("megatron", "sglang")


def _choices(cls, prefix: str = "") -> Dict[str, Tuple[str, ...]]:
    out: Dict[str, Tuple[str, ...]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_choices(hints[f.name], f"{prefix}{f.name}."))
        elif "choices" in f.metadata:
            out[prefix + f.name] = f.metadata["choices"]
    return out


CHOICES: Dict[str, Tuple[str, ...]] = _choices(Config)  # dotted key -> its allowed values


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def load_config(
    path: Optional[str | Path],
    overrides: Sequence[str] = (),
    *,
    base: Optional[Mapping[str, Any]] = None,
) -> Config:
    """Read a YAML file (or start from `base` / the defaults), apply `key=value` overrides, build
    the typed Config and check it. Raises ConfigError naming the key and the source."""
    raw: Dict[str, Any] = _deep_copy(base) if base is not None else {}
    sources: Dict[str, str] = {}
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(source, "", f"cannot read config file ({e.strerror})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(source, "", yaml_error_text(e)) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(source, "", "the top level must be a mapping of sections")
        _merge(raw, loaded, "", source, sources)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(COMMAND_LINE, item, "an override must look like section.key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        _set_dotted(raw, key, value, COMMAND_LINE)
        sources[key] = COMMAND_LINE
    default_source = str(path) if path is not None else COMMAND_LINE
    cfg = _build(Config, raw, "", sources, default_source)
    validate(cfg, sources, default_source)
    return cfg


def yaml_error_text(e: yaml.YAMLError) -> str:
    """Where a YAML (or JSON, which YAML reads) file is wrong, as line and column. An unclosed
    bracket is found only at the end of the file, so the place it opened is named too."""
    mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = f"{where}not valid YAML ({getattr(e, 'problem', None) or e}"
    if (
        context is not None
        and getattr(e, "context", None)
        and (context.line, context.column) != (mark.line, mark.column)
    ):
        text += f"; {e.context} that starts at line {context.line + 1}, column {context.column + 1}"
    return text + ")"


def _deep_copy(d: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: (_deep_copy(v) if isinstance(v, Mapping) else v) for k, v in d.items()}


def _merge(dst: Dict[str, Any], src: Mapping[str, Any], prefix: str, source: str, sources: Dict[str, str]):
    for k, v in src.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _merge(dst[k], v, key + ".", source, sources)
        else:
            dst[k] = _deep_copy(v) if isinstance(v, Mapping) else v
        if isinstance(v, Mapping):
            _record_sources(v, key, source, sources)
        sources[key] = source


def _record_sources(d: Mapping[str, Any], prefix: str, source: str, sources: Dict[str, str]):
    for k, v in d.items():
        sources[f"{prefix}.{k}"] = source
        if isinstance(v, Mapping):
            _record_sources(v, f"{prefix}.{k}", source, sources)


def _set_dotted(raw: Dict[str, Any], key: str, value: Any, source: str):
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(source, ".".join(parts[: i + 1]), "is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _build(cls, raw: Any, prefix: str, sources: Dict[str, str], default_source: str):
    section = prefix.rstrip(".") or "config"
    src = sources.get(prefix.rstrip("."), default_source)
    if not isinstance(raw, Mapping):
        raise ConfigError(src, section, f"expected a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in raw:
        if k not in names:
            key = f"{prefix}{k}"
            raise ConfigError(sources.get(key, default_source), key, f"unknown key (known: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        key = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name] if raw[name] is not None else {}, key + ".", sources, default_source)
        else:
            kwargs[name] = _coerce(raw[name], tp, key, sources.get(key, default_source))
    return cls(**kwargs)


def _describe(v: Any) -> str:
    return f"{type(v).__name__} {v!r}" if not isinstance(v, (dict, list)) else type(v).__name__


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is unambiguous
    (YAML reads `1e-5` as a string, and an int where a float is expected is fine)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(source, key, f"expected a list, got {_describe(value)}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(source, key, f"expected a mapping, got {_describe(value)}")
        return _deep_copy(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(source, key, f"expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(source, key, f"expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(source, key, f"expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(source, key, f"expected a string, got {_describe(value)}")
    raise TypeError(f"config field {key} has an unsupported annotation {tp}")  # a bug here, not input


# ----------------------------------------------------------------------------------------------
# Consistency checks
# ----------------------------------------------------------------------------------------------
def validate(cfg: Config, sources: Optional[Mapping[str, str]] = None, default_source: str = COMMAND_LINE):
    """Cross-field checks (config_checks.py); raises ConfigError for the first problem found,
    naming the key and where its value came from."""
    problem = first_problem(cfg, CHOICES)
    if problem:
        key, message = problem
        raise ConfigError((sources or {}).get(key, default_source), key, message)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, sections in declaration order."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)
