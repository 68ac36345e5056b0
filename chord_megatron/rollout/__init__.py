"""Rollouts: the engines that sample responses (the rewards that score them: chord_megatron/rewards).

  engine.py     the RolloutEngine interface every engine implements, SamplingParams
  factory.py    the engine rollout.engine names, built from the config
  sampling.py   the stop ids and the evaluation's sampling, shared by training and chord eval
  inprocess.py  a Hugging Face transformers engine in this process (CPU, tests, demo)
  sglang/       SGLang servers behind sglang-router: protocol, client, engine, router

Nothing is imported here on purpose: importing one module must not pay for torch or
transformers.
"""
