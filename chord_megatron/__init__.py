"""chord-megatron: CHORD on Megatron-core.

Layers, from the inside out (tests/unit/test_layering.py keeps them so):
  algo/         the CHORD math in pure torch (mu schedule, phi weights, advantages, loss)
  errors.py     ChordError, the root of every error `chord` reports as one line
  config.py     typed configuration, YAML + key=value overrides
  types.py      the records that cross layers: Rollout, TrainBatch
  data/         tokenizers, validated JSONL/Parquet loading, a run's task, batches, seeds
  rewards/      the reward registry, its worker pool, scoring with the overlong policy
  train/        the Megatron seam (compat/: what depends on megatron-core / torch internals)
  weight_sync/  Megatron <-> HF conversion, one file per transport, the verified sync
  rollout/      RolloutEngine: in-process transformers, SGLang behind sglang-router
  hf/           Hugging Face checkpoints: config.json, lazy weights in, export out
  metrics/      the metric table, metrics.jsonl + TensorBoard, progress bar, report curves
  demo/         the CPU demo's arithmetic task and its cached base model
  services.py   rank 0's task, rollout engine, scorer and log behind the loop's verbs
  loop.py       the driver: generate -> reward -> train -> sync -> evaluate -> save
  commands/     one module per `chord` subcommand; only cli.py imports them
  cli.py        the `chord` command: arguments, and errors as one line + exit code
  net.py        a free TCP port
  versions.py   what a Python environment has (torch, CUDA, NCCL, TE, megatron-core, SGLang)
"""

__version__ = "0.1.0"
