# Shared by the growclip_ds batch scripts: rendezvous from the allocation, launch, preemption.
cd "${GROWCLIP_HOME:-${SLURM_SUBMIT_DIR:-.}}"
PY=${GROWCLIP_PYTHON:-.venv/bin/python}
MODE=${GROWCLIP_LAUNCH_MODE:-srun}
# the venv's bin first, as if activated: its ninja is the one that built DeepSpeed's JIT ops at set-up
PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"; export PATH
# rendezvous variables and the run folder (by the launcher's own argument parser), as quoted export
# lines in a private file: nothing of the paths or arguments is ever evaluated as shell code
GROWCLIP_ENV_FILE=$(mktemp "${TMPDIR:-/tmp}/growclip_env.XXXXXX") || exit 2
"$PY" -m growclip_train.slurm env --out "$GROWCLIP_ENV_FILE" -- "$@" || { rm -f "$GROWCLIP_ENV_FILE"; exit 2; }
# shellcheck disable=SC1090
source "$GROWCLIP_ENV_FILE"; rm -f "$GROWCLIP_ENV_FILE"
RUN_DIR=$GROWCLIP_RUN_DIR
mkdir -p "$RUN_DIR" && rm -f "$RUN_DIR/STOP"
trap 'echo "[growclip_ds] preemption notice: asking ranks to checkpoint"; touch "$RUN_DIR/STOP"' USR1 TERM

growclip_launch() {
  if [ "$MODE" = hostfile ]; then
    "$PY" -m deepspeed.launcher.runner --hostfile "$GROWCLIP_HOSTFILE" --master_addr "$MASTER_ADDR" \
      --master_port "$MASTER_PORT" "$@" &
  else
    srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '"$0" -m growclip_train.torchrun --nnodes "$GROWCLIP_NNODES" \
      --node_rank "$SLURM_NODEID" --nproc_per_node "$GROWCLIP_GPUS_PER_NODE" --master_addr "$MASTER_ADDR" \
      --master_port "$MASTER_PORT" "$@"' "$PY" "$@" &
  fi
  local child=$!
  while true; do      # `wait` returns early when the trap fires; wait again for the real exit
    wait "$child"; rc=$?
    kill -0 "$child" 2>/dev/null || break
  done
  if [ "$rc" -eq 3 ] || [ -e "$RUN_DIR/STOP" ]; then
    echo "[growclip_ds] checkpointed after preemption notice; requeueing job $SLURM_JOB_ID"
    rm -f "$RUN_DIR/STOP"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  return "$rc"
}
