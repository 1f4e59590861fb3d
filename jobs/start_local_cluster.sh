#!/usr/bin/env bash
# A one-machine Ray cluster and MLflow server on loopback, as the README's
# "Run on a Ray cluster" section describes. Stop with jobs/stop_local_cluster.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
"$BIN/ray" start --head --node-ip-address 127.0.0.1 --port 6379 --dashboard-host 127.0.0.1 --dashboard-port 8265 \
  --num-cpus "${RAY_NUM_CPUS:-2}" --disable-usage-stats
nohup "$BIN/mlflow" server --backend-store-uri "sqlite:///$PWD/mlflow-server.db" --default-artifact-root "$PWD/mlartifacts" \
  --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}" > mlflow-server.log 2>&1 &
echo $! > mlflow-server.pid
echo "Ray dashboard: http://127.0.0.1:8265   MLflow UI: http://127.0.0.1:${MLFLOW_PORT:-5000}"
