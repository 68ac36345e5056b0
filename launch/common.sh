# The machinery shared by launch/colocated.sbatch and launch/disaggregated.sbatch. Sourced, not run.
#
# chord_run_job does, in order:
#   1. hosts: `scontrol show hostnames "$SLURM_JOB_NODELIST"`, in allocation order;
#   2. ports: PORT_BASE from SLURM_JOB_ID unless set (offsets below; chord_megatron/commands/launch/plan.py
#      uses the same numbers);
#   3. the plan: `chord launch script-env` checks the layout (exit 2 with the
#      reason if impossible), writes $LOG_DIR/plan.txt and says how many servers go where;
#      then `chord doctor` checks that the trainer's, SGLang's and the router's Python fit
#      together (one NCCL version, sglang-router present; exit 2 with the fix), $LOG_DIR/doctor.txt;
#   4. SGLang servers (launch/sglang_node.sh, one srun task per server node), waits for /health;
#   5. sglang-router on the first node, waits until it sees every server healthy;
#   6. training: launch/train_node.sh, one srun task per training node, torchrun inside;
#   7. on any exit (end of training, error, TERM from scancel or the time limit): stops the srun
#      steps it started (TERM to the step through slurm, then KILL after STOP_GRACE_S).
# Nothing is ever stopped by process name: only the srun steps recorded in CHORD_PIDS/CHORD_STEPS.
#
# The caller sets: MODE, CONFIG, OVERRIDES (array), CHORD_ROOT, PYTHON, SGLANG_PYTHON,
# ROUTER_PYTHON, SGLANG_SERVER_CMD, LOG_DIR, NPROC_PER_NODE, CHORD_CPU, STARTUP_TIMEOUT_S,
# STOP_GRACE_S, and optionally ROLLOUT_NODES.

# ---- ports (offsets from PORT_BASE) --------------------------------------------------------
# Every port the job opens is one of these (SGLang too: --nccl-port, or it draws one at random
# from 22000-29999, where other jobs' blocks lie); chord_megatron/commands/launch/plan.py has
# the same numbers (a unit test checks).
PORT_SPAN=64                # ports a job reserves on every node
TRAIN_PORT_OFFSET=0         # torchrun master on the first training node
ROUTER_PORT_OFFSET=1        # sglang-router
ROUTER_METRICS_PORT_OFFSET=2  # the router's Prometheus exporter
SYNC_PORT_OFFSET=8          # the NCCL weight-update group on trainer rank 0: +8 ... (rollout.sync_ports)
SYNC_PORTS=8                # ... +15, a new port for each group after a failed sync
SERVER_PORT_OFFSET=16       # SGLang server i of a node: PORT_BASE + 16 + i
SERVER_NCCL_PORT_OFFSET=40  # its --nccl-port (its own NCCL group): PORT_BASE + 40 + i

CHORD_PIDS=()     # srun clients started in the background by this job, stopped by chord_cleanup
CHORD_STEPS=()    # their job-step names (srun --job-name), to signal the steps' tasks
CHORD_NAMES=()

chord_log() { echo "[chord $(date +%H:%M:%S)] $*"; }

# chord_step NAME STEP_NAME SRUN_ARGS...: run `srun --job-name=STEP_NAME SRUN_ARGS...` in the
# background and record it.
chord_step() {
    local name=$1 step=$2
    shift 2
    srun --job-name="$step" "$@" </dev/null &
    CHORD_PIDS+=("$!")
    CHORD_STEPS+=("$step")
    CHORD_NAMES+=("$name")
    chord_log "started $name (srun pid $!, step name $step)"
}

# The id (JOBID.STEPID) of this job's step called $1, if it is running. Asked up to
# ${CHORD_SQUEUE_TRIES:-3} times, a second apart: a busy slurmctld can fail or miss one call, and
# without the id chord_cleanup can only kill the step's srun, which kills the step without the
# graceful stop (a server node's script never gets to stop its servers' process groups).
chord_step_id() {
    local try id
    for ((try = 1; try <= ${CHORD_SQUEUE_TRIES:-3}; try++)); do
        id=$(squeue --noheader --steps --jobs="$SLURM_JOB_ID" --format="%i %j" 2>/dev/null | awk -v n="$1" '$2 == n {print $1; exit}')
        if [[ -n $id ]]; then
            echo "$id"
            return 0
        fi
        ((try < ${CHORD_SQUEUE_TRIES:-3})) && sleep 1
    done
    return 0
}

# Stop what chord_step started, newest first. `srun` turns a TERM it receives into an immediate
# kill of its step, so the graceful path goes through slurm instead: `scancel --signal=TERM
# JOBID.STEPID` delivers TERM to the step's processes (launch/sglang_node.sh then stops its
# servers' process groups; torchrun stops its workers). After STOP_GRACE_S whatever is left gets
# KILL: the srun client (slurm then kills its step). Anything still alive when the batch script
# ends, slurm ends with the job. Only steps this script started are touched.
chord_cleanup() {
    local rc=$?
    trap - EXIT TERM INT
    local i pid id alive deadline
    for ((i = ${#CHORD_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${CHORD_PIDS[$i]}
        kill -0 "$pid" 2>/dev/null || continue
        id=$(chord_step_id "${CHORD_STEPS[$i]}")
        chord_log "stopping ${CHORD_NAMES[$i]} (step ${id:-not registered}, srun pid $pid): TERM"
        if [[ -n $id ]]; then scancel --signal=TERM "$id" 2>/dev/null; else kill -TERM "$pid" 2>/dev/null; fi
    done
    deadline=$((SECONDS + ${STOP_GRACE_S:-30}))
    while ((SECONDS < deadline)); do
        alive=0
        for pid in "${CHORD_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 1
    done
    for i in "${!CHORD_PIDS[@]}"; do
        pid=${CHORD_PIDS[$i]}
        if kill -0 "$pid" 2>/dev/null; then
            chord_log "killing ${CHORD_NAMES[$i]} (srun pid $pid) after ${STOP_GRACE_S:-30}s"
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    wait 2>/dev/null
    chord_log "exit status $rc; logs in $LOG_DIR"
    exit "$rc"
}

# True when GET $1 answers 2xx (stdlib only: no chord or torch import, ~50 ms).
chord_http_ok() {
    "$PYTHON" -c 'import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=5).close()
except Exception:
    sys.exit(1)' "$1"
}

# True when the router at $1 lists at least $2 healthy workers (GET /workers).
chord_router_ready() {
    "$PYTHON" -c 'import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/workers", timeout=5) as r:
        workers = json.loads(r.read()).get("workers", [])
except Exception:
    sys.exit(1)
sys.exit(0 if sum(1 for w in workers if w.get("is_healthy")) >= int(sys.argv[2]) else 1)' "$1" "$2"
}

# chord_wait WHAT TIMEOUT_S PID CMD...: poll CMD every 2 s until it succeeds; fail if PID (the
# step that should serve it) exits or the timeout passes.
chord_wait() {
    local what=$1 timeout=$2 pid=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            chord_log "ERROR: the step serving $what exited; see $LOG_DIR"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            chord_log "ERROR: timed out after ${timeout}s waiting for $what; see $LOG_DIR"
            return 1
        fi
        sleep 2
    done
    chord_log "ready: $what"
}

chord_join() { local IFS=$1; shift; echo "$*"; }

chord_run_job() {
    trap chord_cleanup EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT

    # ---- 1. hosts, 2. ports --------------------------------------------------------------
    local -a hosts
    mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    local nodes=${#hosts[@]}
    PORT_BASE=${PORT_BASE:-$((10000 + (SLURM_JOB_ID % 300) * PORT_SPAN))}
    export PORT_BASE
    export TRAIN_PORT=$((PORT_BASE + TRAIN_PORT_OFFSET))
    export ROUTER_PORT=$((PORT_BASE + ROUTER_PORT_OFFSET))
    export SERVER_PORT_BASE=$((PORT_BASE + SERVER_PORT_OFFSET))
    export SERVER_NCCL_PORT_BASE=$((PORT_BASE + SERVER_NCCL_PORT_OFFSET))
    mkdir -p "$LOG_DIR"
    chord_log "job $SLURM_JOB_ID: $MODE on $nodes node(s): ${hosts[*]}; PORT_BASE=$PORT_BASE; logs in $LOG_DIR"

    # ---- 3. the plan ---------------------------------------------------------------------
    local -a plan_args=(script-env "$CONFIG" "${OVERRIDES[@]}" --nodes "$nodes" --gpus-per-node "$NPROC_PER_NODE"
        --mode "$MODE" --hosts "$(chord_join , "${hosts[@]}")" --port-base "$PORT_BASE"
        --plan-file "$LOG_DIR/plan.txt")
    [[ -n ${ROLLOUT_NODES:-} ]] && plan_args+=(--rollout-nodes "$ROLLOUT_NODES")
    [[ $CHORD_CPU == 1 ]] && plan_args+=(--cpu)
    if ! "$PYTHON" -m chord_megatron.cli launch "${plan_args[@]}" >"$LOG_DIR/plan.env"; then
        chord_log "ERROR: the launch plan refused this job (reason above); nothing was started"
        return 2
    fi
    # shellcheck disable=SC1091  # NAME=value lines, values shell-quoted by the plan (shlex.quote)
    source "$LOG_DIR/plan.env"
    cat "$LOG_DIR/plan.txt"

    # ---- the environments ----------------------------------------------------------------
    # Here, on the first node, before any step: every node is assumed to see the same
    # environments (a shared filesystem or the same container image).
    local -a doctor_args=(doctor)
    if [[ $ENGINE == sglang ]]; then
        doctor_args+=(--sglang-python "$SGLANG_PYTHON" --router-python "$ROUTER_PYTHON")
    else
        doctor_args+=(--trainer-only)
    fi
    [[ $CHORD_CPU == 1 ]] && doctor_args+=(--cpu)
    if ! "$PYTHON" -m chord_megatron.cli "${doctor_args[@]}" >"$LOG_DIR/doctor.txt"; then
        cat "$LOG_DIR/doctor.txt"
        chord_log "ERROR: chord doctor refused the environments (fixes above); nothing was started"
        return 2
    fi
    cat "$LOG_DIR/doctor.txt"

    local -a server_hosts=() train_hosts=("${hosts[@]:ROLLOUT_NODES}") train_overrides=()
    if [[ $ENGINE == sglang ]]; then
        if [[ $MODE == disaggregated ]]; then server_hosts=("${hosts[@]:0:ROLLOUT_NODES}"); else server_hosts=("${hosts[@]}"); fi
    fi
    export TRAIN_HOSTS="${train_hosts[*]}" LOG_DIR NPROC_PER_NODE PYTHON SGLANG_PYTHON SERVERS_PER_NODE
    export SGLANG_GPUS_PER_SERVER SGLANG_SERVER_ARGS SGLANG_SERVER_CMD CHORD_CPU STOP_GRACE_S
    local cpus=${SLURM_CPUS_ON_NODE:-1}

    # ---- 4. SGLang servers, 5. router ----------------------------------------------------
    if [[ $ENGINE == sglang ]]; then
        chord_step "sglang servers on ${server_hosts[*]}" chord-sglang \
            --overlap --nodes="${#server_hosts[@]}" --ntasks-per-node=1 --cpus-per-task="$cpus" \
            --nodelist="$(chord_join , "${server_hosts[@]}")" --kill-on-bad-exit=0 \
            --output="$LOG_DIR/sglang-node-%N.log" bash "$CHORD_ROOT/launch/sglang_node.sh"
        local servers_pid=$! h i
        local -a urls=()
        for h in "${server_hosts[@]}"; do
            for ((i = 0; i < SERVERS_PER_NODE; i++)); do urls+=("http://$h:$((SERVER_PORT_BASE + i))"); done
        done
        for u in "${urls[@]}"; do
            chord_wait "SGLang server $u" "$STARTUP_TIMEOUT_S" "$servers_pid" chord_http_ok "$u/health" || return 1
        done
        local router_host=${hosts[0]}
        local -a router_args router_python router_cmd
        eval "router_args=($ROUTER_ARGS)"
        read -ra router_python <<<"$ROUTER_PYTHON"
        # ROUTER_PYTHON, not SGLANG_PYTHON: sglang[all]==0.5.23 does not install sglang-router.
        router_cmd=("${router_python[@]}" -m sglang_router.launch_router --host 0.0.0.0 --port "$ROUTER_PORT"
            --worker-urls "${urls[@]}" "${router_args[@]}")
        chord_log "router command: ${router_cmd[*]}"
        # --gres=none: the router needs no GPU. By default a step gets all the job's GRES on its
        # node, so it would hold the GPUs the server step uses (and wait for them on slurm
        # versions whose --overlap does not share GRES).
        chord_step "sglang-router on $router_host" chord-router \
            --overlap --gres=none --nodes=1 --ntasks=1 --nodelist="$router_host" --output="$LOG_DIR/router.log" \
            "${router_cmd[@]}"
        local router_url="http://$router_host:$ROUTER_PORT"
        chord_wait "router $router_url with ${#urls[@]} healthy workers" "$STARTUP_TIMEOUT_S" "$!" \
            chord_router_ready "$router_url" "${#urls[@]}" || return 1
        # rollout.engine, router_url, weight_sync (and sync_ports for nccl): the plan's, as plan.txt shows them
        eval "train_overrides=($TRAIN_OVERRIDES)"
    fi

    # ---- 6. training ---------------------------------------------------------------------
    # The job's own overrides come last: a key=value given to sbatch wins over the plan's.
    chord_step "trainer on ${train_hosts[*]}" chord-trainer \
        --overlap --nodes="${#train_hosts[@]}" --ntasks-per-node=1 --cpus-per-task="$cpus" \
        --nodelist="$(chord_join , "${train_hosts[@]}")" --kill-on-bad-exit=1 \
        --output="$LOG_DIR/trainer-%N.log" \
        bash "$CHORD_ROOT/launch/train_node.sh" "$CONFIG" "${train_overrides[@]}" "${OVERRIDES[@]}"
    local train_pid=$! rc
    wait "$train_pid"
    rc=$?
    chord_log "training finished with status $rc"
    return "$rc"
}
