"""`chord launch`: what a multi-node job will do, checked before it starts.

plan.py           node roles, ranks, ports and the exact commands; refuses impossible layouts
plan_text.py      `chord launch plan`: the plan printed
script_env.py     `chord launch script-env`: the plan's check and shell assignments for launch/*.sbatch
layout.py         ParallelLayout (TP x PP x CP x DP over the trainer GPUs) and LayoutError
memory.py         an estimate of GPU 0's peak memory for a layout, term by term, per phase of a step
sglang_memory.py  an SGLang server's static and dynamic memory per GPU
memory_table.py   the estimate as the plan prints it
"""
