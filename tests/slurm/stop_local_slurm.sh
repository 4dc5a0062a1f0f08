#!/usr/bin/env bash
# Stop the local Slurm daemons (and munged with --all). Harmless if not running.
set -euo pipefail

stop() {  # stop <name> <pidfile>
  local name=$1 pf=$2 pid
  [[ -f $pf ]] || return 0
  pid="$(cat "$pf")"
  if kill -0 "$pid" 2>/dev/null; then
    echo "[stop_local_slurm] stopping $name ($pid)" >&2
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pf"
}
stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
if [[ ${1:-} == --all ]]; then stop munged /run/munge/munged.pid; fi
