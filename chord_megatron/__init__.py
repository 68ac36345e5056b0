"""chord-megatron: CHORD on Megatron-core.

Layers, from the inside out:
  algo/      the CHORD math in pure torch (mu schedule, phi weights, advantages, loss)
  config.py  typed configuration, YAML + key=value overrides
  cli.py     the `chord` command
"""

__version__ = "0.1.0"
