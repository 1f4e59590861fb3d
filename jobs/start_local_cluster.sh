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
# The head and the MLflow server each run in a process group of their own (setsid), which
# jobs/stop_local_cluster.sh stops: no other Ray instance on this machine is touched.
setsid nohup "$BIN/ray" start --head --block --node-ip-address "$HEAD_IP" --port "${RAY_PORT:-6379}" \
  --dashboard-host "$HEAD_IP" --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" --num-cpus "${RAY_NUM_CPUS:-$(nproc)}" \
  --disable-usage-stats > ray-head.log 2>&1 &
echo $! > ray-head.pid
# Artifacts go through the server (--artifacts-destination): no node writes to this disk.
setsid nohup "$BIN/mlflow" server --backend-store-uri "sqlite:///$PWD/mlflow-server.db" \
  --artifacts-destination "$PWD/mlartifacts" --host "$HEAD_IP" --port "${MLFLOW_PORT:-5000}" > mlflow-server.log 2>&1 &
echo $! > mlflow-server.pid
"$BIN/python" - "http://$HEAD_IP:${RAY_DASHBOARD_PORT:-8265}/api/version" <<'PY'
import sys, time
from urllib.error import HTTPError
from urllib.request import urlopen
for _ in range(240):
    try:
        urlopen(sys.argv[1], timeout=2)
        sys.exit(0)
    except HTTPError:  # answering at all (401 under token auth) means it is up
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(f"the Ray head did not answer at {sys.argv[1]} within 2 minutes; see ray-head.log")
PY
echo "Ray dashboard: http://$HEAD_IP:${RAY_DASHBOARD_PORT:-8265}   MLflow UI: http://$HEAD_IP:${MLFLOW_PORT:-5000}"
echo "Workers: RAY_AUTH_MODE=token ray start --address $HEAD_IP:${RAY_PORT:-6379}   (with the same token)"
