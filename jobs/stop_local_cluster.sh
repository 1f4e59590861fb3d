#!/usr/bin/env bash
# Stops what jobs/start_local_cluster.sh started, by process group: the Ray head (which drains
# for up to 30 s) and the MLflow server. Not `ray stop`, which would end every Ray instance
# of this user on the machine. Worker nodes started elsewhere stop with their own signal.
set -uo pipefail
cd "$(dirname "$0")/.."
for name in ray-head mlflow-server; do
  [ -f "$name.pid" ] || continue
  pid=$(cat "$name.pid")
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null
  rm -f "$name.pid"
done
