"""Submit an aas-ray command (a Tune study by default) to a running Ray cluster through
the Ray Jobs API, follow its logs, or stop it.

    python jobs/submit.py submit tune_configs/study_demo.yaml --address http://127.0.0.1:8265 \
        --tracking-uri http://127.0.0.1:5000 [--follow]
    python jobs/submit.py logs  <submission_id> --address ...
    python jobs/submit.py stop  <submission_id> --address ...
    python jobs/submit.py status <submission_id> --address ...

The working directory (this repository, minus what .gitignore lists) is uploaded with the
job; the cluster's Python must have requirements.txt installed (requirements-gpu.txt on GPU nodes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

REPO = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", ".git", "runs", "mlruns", "mlflow.db", "benchmarks/results", ".pytest_cache", ".hypothesis"]


def client(address: str) -> JobSubmissionClient:
    return JobSubmissionClient(address)


def submit(address: str, study: str, tracking_uri: str | None, extra: list[str], env: dict | None = None) -> str:
    cmd = [sys.executable if os.environ.get("AAS_RAY_JOB_PYTHON") == "self" else "python", "-m", "aas_ray.cli",
           "tune", study]
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    for item in extra:
        cmd += ["--set", item]
    runtime_env = {"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": {"TQDM_DISABLE": "1", **(env or {})}}
    c = client(address)
    # A head started moments ago answers before its job agent is up (on a busy machine for
    # over a minute): retry that case only, for up to three minutes.
    deadline = time.monotonic() + 180
    while True:
        try:
            return c.submit_job(entrypoint=" ".join(cmd), runtime_env=runtime_env)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(2)


async def _follow(address: str, job_id: str) -> None:
    async for lines in client(address).tail_job_logs(job_id):
        print(lines, end="", flush=True)


def wait(address: str, job_id: str, timeout: float) -> JobStatus:
    c = client(address)
    end = time.time() + timeout
    while time.time() < end:
        status = c.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still {c.get_job_status(job_id)} after {timeout} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["submit", "logs", "stop", "status"])
    p.add_argument("target", help="study YAML (submit) or submission id")
    p.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"))
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    p.add_argument("--set", action="append", default=[], help="study override key=value")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    args = p.parse_args()
    if args.action == "submit":
        job_id = submit(args.address, args.target, args.tracking_uri, args.set)
        print(f"submitted {job_id}")
        if args.follow:
            asyncio.run(_follow(args.address, job_id))
            print(f"\njob {job_id}: {client(args.address).get_job_status(job_id)}")
    elif args.action == "logs":
        asyncio.run(_follow(args.address, args.target))
    elif args.action == "stop":
        print(client(args.address).stop_job(args.target))
    else:
        print(client(args.address).get_job_status(args.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
