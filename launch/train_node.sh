#!/bin/bash
# One training node; run by launch/*.sbatch through srun, one task per training node.
#
# torchrun with a static rendezvous: node rank = this node's position in TRAIN_HOSTS (so ranks
# follow allocation order: node r runs ranks r*NPROC_PER_NODE ...), master = the first training
# node at TRAIN_PORT. Arguments: CONFIG [key=value ...], passed to `chord train`.
# From the batch script: TRAIN_HOSTS NPROC_PER_NODE TRAIN_PORT PYTHON CHORD_CPU, and from launch/env.sh
# CHORD_TRAINER_ENV: the settings for the trainer only (NAME=value words), set here for torchrun.
set -euo pipefail

read -ra train_hosts <<<"$TRAIN_HOSTS"
node=${SLURMD_NODENAME:-$(hostname -s)}
node_rank=-1
for i in "${!train_hosts[@]}"; do
    [[ ${train_hosts[$i]} == "$node" ]] && node_rank=$i
done
if ((node_rank < 0)); then
    echo "train_node: this node ($node) is not in TRAIN_HOSTS ($TRAIN_HOSTS)" >&2
    exit 1
fi

if [[ ${CHORD_CPU:-0} != 1 ]]; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if ((gpus < NPROC_PER_NODE)); then
        echo "train_node: $node sees $gpus GPU(s) but NPROC_PER_NODE=$NPROC_PER_NODE: submit with" \
            "--gpus-per-node=$NPROC_PER_NODE (or your site's --gres=gpu:$NPROC_PER_NODE), or set CHORD_CPU=1" >&2
        exit 1
    fi
fi

echo "train_node: $node is node $node_rank of ${#train_hosts[@]}, master ${train_hosts[0]}:$TRAIN_PORT"
progress=()
[[ ${CHORD_PROGRESS:-0} == 1 ]] || progress=(--no-progress)  # progress bars make long log lines

read -ra trainer_env <<<"${CHORD_TRAINER_ENV:-}"
# exec: srun's task is torchrun itself, which passes TERM on to its workers.
exec env "${trainer_env[@]}" "$PYTHON" -m torch.distributed.run --nnodes="${#train_hosts[@]}" --node-rank="$node_rank" \
    --nproc-per-node="$NPROC_PER_NODE" --master-addr="${train_hosts[0]}" --master-port="$TRAIN_PORT" \
    -m chord_megatron.cli train "${progress[@]}" "$@"
