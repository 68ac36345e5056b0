# Environment of every process a chord job starts: the ONE place for NCCL / CUDA / torch settings.
# Sourced by launch/*.sbatch before any srun; srun passes the environment on to every task.
# Every value is a default: export your own before `sbatch` (jobs inherit the submitter's
# environment) to override it, e.g. `NCCL_SOCKET_IFNAME=ib0 NCCL_DEBUG=INFO sbatch ...`.

# ---- NCCL: network ------------------------------------------------------------------------
# Interface for NCCL's bootstrap and socket transport. The default excludes loopback and docker
# bridges (NCCL's own behaviour); clusters often want the fabric's name here (ib0, bond0, ...).
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-^lo,docker}
# InfiniBand / RoCE: which HCAs (site-specific, e.g. mlx5_0,mlx5_1; unset = all that NCCL finds)
# and the GID index for RoCE (usually 3). Exported only when set.
[[ -n ${NCCL_IB_HCA:-} ]] && export NCCL_IB_HCA
[[ -n ${NCCL_IB_GID_INDEX:-} ]] && export NCCL_IB_GID_INDEX
# IB verbs timeout (4.096 us x 2^22 ~ 17 s) and retries: large jobs see transient fabric stalls.
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
export NCCL_IB_RETRY_CNT=${NCCL_IB_RETRY_CNT:-7}
# WARN keeps logs short; INFO prints the chosen transports (use it when debugging a new cluster).
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

# ---- torch.distributed ----------------------------------------------------------------------
# A failed or timed-out collective aborts the process (and so the job) instead of hanging.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# Megatron's recommendation for its grad/param buffers (less allocator fragmentation).
export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}

# ---- CUDA / Megatron: the trainer only ---------------------------------------------------------
# Megatron needs one hardware work queue so that tensor-parallel communication kernels are
# scheduled in issue order ahead of the GEMMs they overlap with. SGLang's servers must not get
# it (one queue serialises their overlapped streams), so it is not exported to every process:
# launch/train_node.sh puts CHORD_TRAINER_ENV (NAME=value words) into torchrun's environment.
CHORD_TRAINER_ENV="CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
export CHORD_TRAINER_ENV
unset CUDA_DEVICE_MAX_CONNECTIONS  # a value exported before sbatch also reaches the trainer only

# ---- SGLang ----------------------------------------------------------------------------------
# /health answers without generating a token. By default SGLang 0.5.23 runs a one-token request
# for every health check (the router's, every few seconds), which would run on released memory
# while a colocated server lends its KV cache and weights to a train step
# (rollout.release_sglang_memory); the check then tests that the server's processes live.
export SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION=${SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION:-0}

# ---- logs ----------------------------------------------------------------------------------
export PYTHONUNBUFFERED=1  # each role's log shows lines as they are written
