"""One module per `chord` subcommand, imported by cli.py only when it runs; nothing else
imports them (tests/unit/test_layering.py).

  train.py      chord train (and --nproc: N local processes, torchrun-style)
  compare.py    chord compare: the method and its baselines, same budget and seeds
    compare_variants.py  the compared methods as overrides; the lr grid, --set, --quick
    compare_queue.py     --jobs N: the grid's runs N at a time from one queue
    compare_runs.py      run again: finished runs kept, stopped ones resumed or started over
  report.py     chord report: the tables and curves of a results file
  eval.py       chord eval: avg@k on a benchmark file
  export_hf.py  chord export-hf: a training checkpoint as a Hugging Face folder
  bench.py      chord bench train-step: tokens/s and peak memory of a training step
    bench_loop.py        chord bench loop: steps/s of the whole loop, time per phase
    bench_trl.py         --vs-trl: the same run with TRL's GRPOTrainer
    bench_trl_eval.py    its clock, reward and held-out accuracy, each as chord measures it
  config.py     chord config show | reference | from-hf
  doctor.py     chord doctor: the trainer's, SGLang's and the router's Python, checked together
  launch/       chord launch plan | script-env: node roles, layout, memory estimate
  data.py       chord data prep-openr1 | prep-toolace
"""
