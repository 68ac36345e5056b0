"""Everything that depends on megatron-core 0.16.1 internals or torch's private APIs; a version
bump starts here, and tests/unit/test_compat_pins.py (+ test_compat_cpu_patches.py) fail first.

  cpu_patches.py     what megatron-core needs to run without CUDA (applied only then)
  ckpt_writer.py     an in-process writer for dist-checkpointing (no subprocesses)
  ckpt_warnings.py   the FutureWarnings of a dist-checkpointing load, silenced around ours
  optimizer_load.py  loading the distributed optimizer: Adam states, the step workaround
  finalize_grads.py  Megatron's grad finalisation without its per-token division
  cp_config.py       the config our context-parallel attention hands its base class
  process_group.py   a process group outside the world, for SGLang's weight updates
"""
