"""Hugging Face checkpoints (Qwen2 / Qwen2.5, Qwen3, Llama-3) in and out of the Megatron model.

  config.py   config.json <-> ModelConfig; refuses what megatron-core cannot express
  weights.py  a checkpoint folder as a lazy full Megatron state dict
  export.py   Megatron full tensors -> a folder transformers and SGLang load

The tensor renaming and re-packing is weight_sync/convert.py (one mapping for weight sync,
loading and export).
"""
