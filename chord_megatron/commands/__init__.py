"""One module per `chord` subcommand, imported by cli.py only when it runs; nothing else
imports them (tests/unit/test_layering.py).

  train.py      chord train (and --nproc: N local processes, torchrun-style)
  compare.py    chord compare: the method and its baselines, same budget and seeds
  report.py     chord report: the tables and curves of a results file
  eval.py       chord eval: avg@k on a benchmark file
  export_hf.py  chord export-hf: a training checkpoint as a Hugging Face folder
  bench.py      chord bench train-step: tokens/s and peak memory of a training step
  config.py     chord config show | reference | from-hf
  doctor.py     chord doctor: the trainer's, SGLang's and the router's Python, checked together
  launch/       chord launch plan | script-env: node roles, layout, memory estimate
  data.py       chord data prep-openr1 | prep-toolace
"""
