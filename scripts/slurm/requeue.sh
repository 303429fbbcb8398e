# Sourced by scripts/slurm/train.sbatch and by the array scripts that `python -m train.sweep
# --slurm` writes; not run by itself.
#
#   run_status PYTHON WORKDIR             # prints results.json's status ('' when none)
#   run_and_requeue PYTHON WORKDIR COMMAND...
#
# runs COMMAND through srun (one process per task of the job) and, when the run stopped before
# its end (results.json in WORKDIR says `preempted`: the time limit's early SIGTERM from
# `#SBATCH --signal=TERM@N`, a preemption, or `scancel --signal=TERM`), requeues this job or array
# task so that it resumes from its checkpoint. SLURM does not requeue a job that ends at its time
# limit by itself (`#SBATCH --requeue` covers node failures and preemption only). A job is
# requeued at most $STACKED_LSTM_MAX_REQUEUES times (default 20), so a run that cannot progress
# ends. The exit status is COMMAND's.

run_status() {
  "$1" -c 'import json, sys
try:
  print(json.load(open(sys.argv[1])).get("status", ""))
except (OSError, ValueError, AttributeError):
  print("")' "$2/results.json"
}

run_and_requeue() {
  local python="$1" workdir="$2"
  shift 2
  local rc=0
  srun "$@" || rc=$?
  local status
  status="$(run_status "$python" "$workdir")"
  local restarts="${SLURM_RESTART_COUNT:-0}" most="${STACKED_LSTM_MAX_REQUEUES:-20}"
  local job="$SLURM_JOB_ID"
  [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  if [ "$rc" = 0 ] && [ "$status" = preempted ]; then
    if [ "$restarts" -lt "$most" ]; then
      echo "requeue: the run stopped early (status preempted); requeueing job $job" \
           "(restart $((restarts + 1)) of at most $most)"
      scontrol requeue "$job"
    else
      echo "requeue: the run stopped early but job $job was already requeued $restarts times" \
           "(STACKED_LSTM_MAX_REQUEUES=$most); submit it again to go on" >&2
      rc=1
    fi
  fi
  return "$rc"
}
