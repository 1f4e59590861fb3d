"""Against real components: a Ray cluster started with `ray start --head` on loopback, an
MLflow tracking server (sqlite backend) on a free loopback port, a tiny Tune study
submitted through the Ray Jobs API, and its results read back from the server."""

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    from urllib.error import HTTPError
    from urllib.request import urlopen

    end = time.time() + timeout
    while time.time() < end:
        try:
            with urlopen(url, timeout=2):
                return
        except HTTPError:  # answering at all (401 under token auth) means it is up
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
                             "--default-artifact-root", str(tmp_path / "art"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 90)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def ray_env(tmp_path):
    """Token auth as a fresh machine has it: no ~/.ray/auth_token, a token made for this cluster
    and handed to the head, the job client and `ray stop` alike."""
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    return dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))


@pytest.fixture
def ray_cluster(tmp_path, ray_env):
    env = ray_env
    gcs, dash = free_port(), free_port()
    subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
                    "--disable-usage-stats"], check=True, env=env, capture_output=True)
    try:
        wait_http(f"http://127.0.0.1:{dash}/api/version", 90)
        yield f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True)


def test_study_through_ray_jobs_logged_to_mlflow_server(tmp_path, ray_env, ray_cluster, mlflow_server):
    from mlflow.tracking import MlflowClient

    study = {
        "study": "cluster-test", "kind": "simulate", "base": str(REPO / "tune_configs" / "demo.yaml"),
        "overrides": {"al.cycles": 2, "data.synthetic.identities": 10, "data.synthetic.image_size": 48,
                      "model.image_size": [64, 64], "cluster.k1": 10, "cluster.k2": 3, "al.budget_fraction": 0.01,
                      "data.cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs")},
        "datasets": ["synthetic"],
        "search": {"al.strategy": {"grid": ["aas", "random"]}, "al.epsilon": {"grid": [0.2, 1.0]}},
        "max_concurrent_trials": 2,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    env = dict(ray_env, AAS_RAY_JOB_PYTHON="self")
    # The CLI a user runs: submit, stream the logs until the job ends.
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "submit.py"), "submit", str(path), "--address",
                           ray_cluster, "--tracking-uri", mlflow_server, "--follow"], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith("SUCCEEDED"), proc.stdout[-3000:]
    assert "4 trials completed, 0 failed" in proc.stdout
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("aas-ray")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "study-cluster-test"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    assert {c.data.tags["strategy"] for c in children} == {"aas", "random"}
    assert all(c.data.tags["study"] == "cluster-test" and c.data.tags["dataset"] == "synthetic" for c in children)
    assert all("pair_f1" in c.data.metrics and "utilised_budget" in c.data.metrics for c in children)
    assert parent.data.metrics["trials_completed"] == 4
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.html", "sweep-al_epsilon.png"} <= arts
