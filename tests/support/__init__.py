"""What the tests share and the product never imports (tests/unit/test_layering.py checks it):

  fake_sglang.py        a stdlib-only fake SGLang 0.5.23 worker as a process (serve(argv, handler=...),
                        launch_fake_workers, running, stats)
  fake_sglang_routes.py what that worker answers: its State and the Handler of every route
  sglang_contract.py    SGLang's own request types and routes, read from the installed wheel
  hf_weight_receiver.py a fake worker that holds a real HF model and applies NCCL broadcasts
  hf_models.py          tiny random Qwen2 / Qwen3 / Llama checkpoints; config_for(folder)
  dist_harness.py       run_job(fn, world=N): a gloo world of N spawned processes
  torch_oracle.py       the CHORD step written out in plain torch (model, loss, clipped Adam)
  chord_step.py         the layout tests' config, batches and one training step
  chord_cli.py          run `chord` in a subprocess; the demo config and a shortened demo

Children that run one of these as a module (`python -m tests.support.fake_sglang`) get the
repository on PYTHONPATH from fake_sglang.child_env().
"""
