"""Trainer -> rollout engine weight sync: one pure conversion, one file per transport.

  convert.py   Megatron full parameters <-> Hugging Face Llama/Qwen2 names and layouts (pure)
  buckets.py   size-bounded buckets of named tensors, and SyncStats (bytes, seconds, bytes/s)
  tensor.py    colocated SGLang servers: CUDA-IPC handles via /update_weights_from_tensor, every
               TP rank fed by the trainer rank on its GPU (gpu_seats.py says which)
  nccl.py      separate nodes: a broadcast group via /update_weights_from_distributed
  disk.py      a shared file system: an HF checkpoint folder via /update_weights_from_disk
  factory.py   the transport rollout.weight_sync names
  verified.py  the loop's sync: every rank walks the weights, rank 0 pushes, then probes

Every transport is a callable (engine, named_hf_tensors, version) -> SyncStats that plugs into
SGLangEngine(weight_sync=...). After a sync, check served log-probs against the trainer: an
HTTP 200 does not prove the weights arrived intact (tied embeddings are the classic failure).
"""
