"""The Megatron seam: parallel init, model, CHORD training step, log-probs, checkpoints.

  parallel.py     process groups (TP / PP / CP / DP) in one ParallelState
  compat/         what depends on megatron-core / torch internals (CPU patches, workarounds)
  model.py        Llama/Qwen2-style GPTModel from the config, DDP-wrapped
  weights.py      full (unsharded) parameters <-> TP/PP shards; export for weight sync
  batching.py     global batch -> this DP rank's rows; global token counts
  micro_batch.py  rows -> the model's input on this rank (packed, context-parallel split) and back
  packing.py      sequence packing: which rows share a model row, block-diagonal mask, THD bounds
  cp_attention.py context parallelism for the local layer spec (all-gather K/V attention)
  log_probs.py    vocab-parallel log-probs / entropies via chord_kernels
  step.py         forward_step / loss_func adaptor: chord_loss under Megatron's schedules
  metrics.py      count-weighted metric reduction over micro-batches and ranks (metrics/table.py)
  optim.py        Megatron distributed Adam + LR schedule
  checkpoint.py   dist-checkpointing save / load (atomic, keep_last, resharding)
  engine.py       MegatronEngine: train_step / compute_logprobs / save / load / export_weights

Nothing here is imported by `import chord_megatron`; megatron-core loads on first use.
"""
