#!/usr/bin/env bash
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
"$BIN/ray" stop --force
[ -f mlflow-server.pid ] && kill "$(cat mlflow-server.pid)" 2>/dev/null; rm -f mlflow-server.pid
