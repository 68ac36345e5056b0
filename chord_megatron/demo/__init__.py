"""The CPU demos (configs/demo.yaml, configs/demo-expert.yaml): a generated arithmetic task and a base model trained for it.

arith.py       multi-digit addition: direct answers, the expert's scratchpad, the reward
base_model.py  the base model: trained in a first stage (mu = 1 on direct answers), cached
plateau.py     the base stage's stop rule: a plateau of held-out accuracy
"""
