"""Rollouts: the engines that sample responses (the rewards that score them: chord_megatron/rewards).

  engine.py           the RolloutEngine interface every engine implements, SamplingParams
  inprocess.py        a Hugging Face transformers engine in this process (CPU, tests, demo)
  sglang_protocol.py  SGLang 0.5.23 wire format: request bodies and response parsing (pure)
  sglang_contract.py  SGLang's own request types, read from the installed wheel (for checks)
  sglang_client.py    the one module that speaks HTTP to SGLang servers (async, retries)
  sglang_engine.py    the RolloutEngine over SGLang servers behind sglang-router
  router.py           start sglang-router (and servers) from config, or attach to running ones
  fake_sglang.py      a stdlib-only fake SGLang worker for tests and CPU smoke runs

Nothing is imported here on purpose: importing one module must not pay for torch or
transformers.
"""
