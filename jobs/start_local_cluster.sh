#!/usr/bin/env bash
# A one-machine Ray cluster and MLflow server, as the README's "Run on a Ray cluster" section
# describes. Stop with jobs/stop_local_cluster.sh.
#
# Ray 2.60 runs with token authentication: the head, every worker node and every client
# (`ray job submit`, jobs/submit.py) must hold the same token. It is read from RAY_AUTH_TOKEN,
# else the file named by RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; on a fresh machine none
# exists, so one is generated into ~/.ray/auth_token here.
#
# RAY_HEAD_IP (default 127.0.0.1) is the address the head binds to. Loopback accepts no worker
# from another machine: set it to this machine's address on the network the workers share.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
HEAD_IP=${RAY_HEAD_IP:-127.0.0.1}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  "$BIN/ray" get-auth-token --generate > /dev/null
  echo "Ray token: $HOME/.ray/auth_token (copy it to every worker node and client machine)"
fi
"$BIN/ray" start --head --node-ip-address "$HEAD_IP" --port "${RAY_PORT:-6379}" --dashboard-host "$HEAD_IP" \
  --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" --num-cpus "${RAY_NUM_CPUS:-$(nproc)}" --disable-usage-stats
nohup "$BIN/mlflow" server --backend-store-uri "sqlite:///$PWD/mlflow-server.db" --default-artifact-root "$PWD/mlartifacts" \
  --host "$HEAD_IP" --port "${MLFLOW_PORT:-5000}" > mlflow-server.log 2>&1 &
echo $! > mlflow-server.pid
echo "Ray dashboard: http://$HEAD_IP:${RAY_DASHBOARD_PORT:-8265}   MLflow UI: http://$HEAD_IP:${MLFLOW_PORT:-5000}"
echo "Workers: RAY_AUTH_MODE=token ray start --address $HEAD_IP:${RAY_PORT:-6379}   (with the same token)"
