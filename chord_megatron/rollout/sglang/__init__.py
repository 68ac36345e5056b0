"""SGLang 0.5.23 servers behind sglang-router as a RolloutEngine.

  protocol.py  the wire format: request bodies and response parsing (pure)
  client.py    the one module that speaks HTTP to SGLang servers (async, retries, timeouts)
  engine.py    SGLangEngine: generate, pause / resume, weight updates through a transport
  router.py    start sglang-router (and servers) from the config, or attach to running ones

The contract tests read SGLang's own request types from the installed wheel
(tests/support/sglang_contract.py); the fake worker is tests/support/fake_sglang.py.
"""
