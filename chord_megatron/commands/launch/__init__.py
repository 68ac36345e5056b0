"""`chord launch`: what a multi-node job will do, checked before it starts.

plan.py    node roles, ranks, ports and the exact commands; refuses impossible layouts
layout.py  ParallelLayout (TP x PP x CP x DP over the trainer GPUs) and LayoutError
memory.py  an estimate of one trainer GPU's peak memory for a layout
"""
