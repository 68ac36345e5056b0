#!/bin/bash
# One node's SGLang servers; run by launch/*.sbatch through srun, one task per server node.
#
# Starts SERVERS_PER_NODE servers, server i on GPUs [i*G_s, (i+1)*G_s) (G_s = SGLANG_GPUS_PER_SERVER,
# via --base-gpu-id), port SERVER_PORT_BASE + i and NCCL port SERVER_NCCL_PORT_BASE + i (the job's
# range; SGLang would otherwise draw one from 22000-29999), each logging to
# $LOG_DIR/sglang-<host>-<i>.log, then waits. Each server runs in its own session (setsid), so its process group holds exactly the
# processes it spawned; on TERM/INT/exit this script stops those groups -- and nothing else.
#
# From the batch script: SERVERS_PER_NODE SGLANG_GPUS_PER_SERVER SERVER_PORT_BASE SERVER_NCCL_PORT_BASE
# SGLANG_SERVER_ARGS LOG_DIR SGLANG_SERVER_CMD [SGLANG_HOST] [STOP_GRACE_S].
set -uo pipefail

# Trainer-only settings stay out of the servers: launch/env.sh keeps them in CHORD_TRAINER_ENV, and
# this covers a value that reached the job some other way. One hardware queue per GPU (Megatron's
# setting) would serialise the servers' overlapped CUDA streams.
unset CUDA_DEVICE_MAX_CONNECTIONS

# The server program: `python -m sglang.launch_server` of SGLang's environment by default.
read -ra server_cmd <<<"$SGLANG_SERVER_CMD"
host_bind=${SGLANG_HOST:-0.0.0.0}
node=$(hostname -s)  # as srun names the other logs (%N)
eval "server_args=($SGLANG_SERVER_ARGS)"  # shell-quoted by chord_megatron.commands.launch.script_env (shlex)

pids=()
stop() {
    local rc=$?
    trap - EXIT TERM INT
    local pid deadline=$((SECONDS + ${STOP_GRACE_S:-30}))
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do
        while kill -0 -- "-$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 1; done
        kill -KILL -- "-$pid" 2>/dev/null
    done
    echo "[sglang_node $node] servers stopped"
    exit "$rc"
}
trap stop EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

for ((i = 0; i < SERVERS_PER_NODE; i++)); do
    port=$((SERVER_PORT_BASE + i))
    nccl_port=$((SERVER_NCCL_PORT_BASE + i))
    gpu=$((i * SGLANG_GPUS_PER_SERVER))
    # Not a process-group leader (no job control here), so setsid does not fork: $! is the server.
    setsid "${server_cmd[@]}" --host "$host_bind" --port "$port" --base-gpu-id "$gpu" --nccl-port "$nccl_port" \
        "${server_args[@]}" >"$LOG_DIR/sglang-$node-$i.log" 2>&1 </dev/null &
    pids+=("$!")
    echo "[sglang_node $node] server $i: pid $! port $port nccl port $nccl_port GPUs $gpu-$((gpu + SGLANG_GPUS_PER_SERVER - 1))"
done
# One server exiting ends this node's step (and stops its other servers): the batch script sees
# the step gone while it waits for /health, and the router marks the workers unhealthy.
wait -n
rc=$?
echo "[sglang_node $node] a server exited with status $rc"
exit "$rc"
