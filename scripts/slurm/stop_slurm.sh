#!/usr/bin/env bash
# Stop what start_slurm.sh started (by pid file) and remove its folders.
# KEEP_LOGS=1 keeps $FATEBIAS_SLURM_DIR/log. Safe to run when nothing is running.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
BASE=${FATEBIAS_SLURM_DIR:-${TMPDIR:-/tmp}/fatebias-slurm}

# Cancel jobs first so that no slurmstepd or job process outlives slurmd.
if [ -s "$BASE/run/slurmctld.pid" ] && kill -0 "$(cat "$BASE/run/slurmctld.pid")" 2>/dev/null \
   && command -v squeue >/dev/null; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 75); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

stop_pid() {  # stop_pid NAME PIDFILE
  local pid
  [ -s "$2" ] || return 0
  pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then echo "$1 ($pid) ignored SIGTERM, killing" >&2; kill -KILL "$pid"; fi
  fi
  rm -f "$2"
}
stop_pid slurmd "$BASE/run/slurmd.pid"
stop_pid slurmctld "$BASE/run/slurmctld.pid"
if [ -e "$BASE/run/munged.started" ]; then
  stop_pid munged /run/munge/munged.pid
  rm -f "$BASE/run/munged.started"
fi

rm -rf "$BASE/spool" "$BASE/run"
[ "${KEEP_LOGS:-0}" = 1 ] || rm -rf "$BASE/log"
echo "Slurm stopped"
