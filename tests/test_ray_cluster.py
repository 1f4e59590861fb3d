"""Against real components: a Ray cluster of two nodes on this machine (`ray start --head` and
a second `ray start --address`, each with one CPU, its own temp dir, its own home and so its
own caches), an MLflow tracking server on a free loopback port, and on them: a Tune study
submitted through the Ray Jobs API, a training study whose trials run on both nodes, and DDP
with one worker on each node.

The cluster is this module's: each node is a `ray start --block` process in a process group
of its own, stopped by signalling those groups (never `ray stop`, which ends every Ray
instance of the user on the machine, other people's work included)."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient
from processes import descendants, end

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow
AAS_STORAGE = "AAS_RAY_STORAGE"  # unset on the nodes: a test gives the storage itself

# tests/test_run.py's TINY schedule
TINY = {"data.synthetic.identities": 10, "data.synthetic.families": 4, "data.synthetic.min_images": 4,
        "data.synthetic.max_images": 8, "data.synthetic.image_size": 48, "model.image_size": [64, 64],
        "cluster.k1": 10, "cluster.k2": 3, "al.budget_fraction": 0.01, "al.cycles": 2, "al.every": 1,
        "train.iters": 2, "train.batch_size": 16, "train.eval_every": 1, "train.epochs": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    from urllib.error import HTTPError
    from urllib.request import urlopen

    end_at = time.time() + timeout
    while time.time() < end_at:
        try:
            with urlopen(url, timeout=2):
                return
        except HTTPError:  # answering at all (401 under token auth) means it is up
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One tracking server for every node; artifacts go through it (--artifacts-destination),
    so a node never needs the server's disk."""
    where = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{where / 'srv.db'}",
                             "--artifacts-destination", str(where / "art"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 90)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers
        proc.wait(30)


NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.time() + 180
while sum(n["Alive"] for n in ray.nodes()) < 2 and time.time() < deadline:
    time.sleep(0.5)
print(json.dumps({n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}))
"""


def start_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
                                 "--num-cpus", "1", "--disable-usage-stats", "--dashboard-agent-listen-port",
                                 str(free_port()), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_node(node: subprocess.Popen) -> None:
    """The node's processes, and only they: its process group (`ray start`, GCS, raylet) and
    the workers and agents its raylet started in sessions of their own. SIGKILL, as a
    machine that fails (SIGTERM would drain the node for up to 30 s first)."""
    left = descendants(node.pid)
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
    end(left, 5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two Ray nodes on loopback with token auth as a fresh machine has it (no ~/.ray/auth_token;
    a token made for this cluster, handed to both nodes and every client): the head with the
    custom resource ``head``, the second node with ``node2``; each its own temp dir (Ray
    allows one per node), and its own HOME, so each has its own caches under ~/.cache."""
    where = tmp_path_factory.mktemp("cluster")
    token = where / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", AAS_STORAGE)}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    homes = {n: where / f"home-{n}" for n in ("head", "node2")}
    for h in homes.values():
        h.mkdir()
    # Unix socket paths hold at most 107 bytes: the temp dirs must be short.
    temps = {n: tempfile.mkdtemp(prefix="aas-ray-", dir="/tmp") for n in homes}
    gcs, dash = free_port(), free_port()
    nodes = []
    try:
        nodes.append(start_node(["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                                 str(dash), "--ray-client-server-port", str(free_port()), "--temp-dir",
                                 temps["head"], "--resources", '{"head": 1}'],
                                dict(env, HOME=str(homes["head"])), where / "head.log"))
        wait_http(f"http://127.0.0.1:{dash}/api/version", 120)
        address = f"127.0.0.1:{gcs}"
        nodes.append(start_node(["--address", address, "--temp-dir", temps["node2"], "--resources", '{"node2": 1}'],
                                dict(env, HOME=str(homes["node2"])), where / "node2.log"))
        info = subprocess.run([sys.executable, "-c", NODES, address], env=dict(env, HOME=str(homes["head"])),
                              capture_output=True, text=True, timeout=300)
        assert info.returncode == 0, info.stderr[-3000:]
        resources = json.loads(info.stdout.strip().splitlines()[-1])
        assert len(resources) == 2, resources
        ids = {("head" if "head" in r else "node2"): node_id for node_id, r in resources.items()}
        yield SimpleNamespace(address=address, dashboard=f"http://127.0.0.1:{dash}", env=env, homes=homes, ids=ids,
                              where=where)
    finally:
        for node in reversed(nodes):  # the second node first: it drains while the head still answers
            stop_node(node)
        for t in temps.values():
            subprocess.run(["rm", "-rf", t])


def driver_env(cluster) -> dict:
    """A command run on the head's machine, connecting to the cluster."""
    return dict(cluster.env, HOME=str(cluster.homes["head"]), RAY_ADDRESS=cluster.address)


def aas_ray(cluster, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aas_ray.cli", *args], env=driver_env(cluster), capture_output=True,
                          text=True, timeout=timeout)


def study_runs(client: MlflowClient, study: str) -> list:
    exp = client.get_experiment_by_name("aas-ray")
    return client.search_runs([exp.experiment_id], f"tags.study = '{study}'") if exp else []


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if " ERROR " in line]


def test_study_through_ray_jobs_logged_to_mlflow_server(tmp_path, cluster, mlflow_server):
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
    env = dict(cluster.env, HOME=str(cluster.homes["head"]), AAS_RAY_JOB_PYTHON="self")
    # The CLI a user runs: submit, stream the logs until the job ends. Two nodes: the study
    # names its shared storage (here through --set; `storage:` in the file does the same).
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "submit.py"), "submit", str(path), "--address",
                           cluster.dashboard, "--tracking-uri", mlflow_server, "--set",
                           f"storage={tmp_path / 'shared'}", "--follow"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith("SUCCEEDED"), proc.stdout[-3000:]
    assert "4 trials completed, 0 stopped early, 0 failed, 0 unfinished" in proc.stdout
    client = MlflowClient(mlflow_server)
    runs = study_runs(client, "cluster-test")
    parents = [r for r in runs if r.info.run_name == "study-cluster-test"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    assert {c.data.tags["strategy"] for c in children} == {"aas", "random"}
    assert all(c.data.tags["study"] == "cluster-test" and c.data.tags["dataset"] == "synthetic" for c in children)
    assert all("pair_f1" in c.data.metrics and "utilised_budget" in c.data.metrics for c in children)
    assert {c.data.tags["ray_node"] for c in children} <= set(cluster.ids.values())
    assert parent.data.metrics["trials_completed"] == 4
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.html", "sweep-al_epsilon.png"} <= arts
    assert (tmp_path / "shared" / "tune").is_dir()  # the study's Tune state in its storage


def test_a_training_study_runs_on_both_nodes_with_shared_storage(tmp_path, cluster, mlflow_server):
    """Two trials of one CPU each on two nodes of one CPU: one trial per node. The second
    node's caches are empty: its trial makes the dataset and the features there itself."""
    study = {"study": "two-nodes", "kind": "train", "base": str(REPO / "tune_configs" / "demo.yaml"),
             "overrides": {**TINY, "output_dir": str(tmp_path / "runs")},  # caches: ~/.cache/aas-ray of each node
             "datasets": ["synthetic"], "search": {"al.strategy": {"grid": ["none", "aas"]}},
             "max_concurrent_trials": 2, "resources_per_trial": {"cpu": 1}, "metric": "mAP",
             "register_model": "two-nodes-embedder"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    node2_cache = cluster.homes["node2"] / ".cache" / "aas-ray"
    assert not node2_cache.exists()
    client = MlflowClient(mlflow_server)

    # Without shared storage: one line naming the setting, before any MLflow run or run folder.
    proc = aas_ray(cluster, "tune", str(path), "--tracking-uri", mlflow_server)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert error_lines(proc)[-1].endswith(
        "study two-nodes runs on a Ray cluster of 2 nodes but no storage is set: give --storage, a study's "
        "`storage:` or AAS_RAY_STORAGE a folder every node shares or an s3:// / gs:// URI (run folders, "
        "checkpoints and study state go there)")
    assert not study_runs(client, "two-nodes")
    assert not (tmp_path / "runs").exists()

    shared = tmp_path / "shared"
    proc = aas_ray(cluster, "tune", str(path), "--tracking-uri", mlflow_server, "--storage", str(shared))
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "study two-nodes: 2 trials completed, 0 stopped early, 0 failed, 0 unfinished" in proc.stderr
    runs = study_runs(client, "two-nodes")
    parent = next(r for r in runs if r.info.run_name == "study-two-nodes")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(c.info.status == "FINISHED" and "eval/mAP" in c.data.metrics for c in children)
    assert {c.data.tags["ray_node"] for c in children} == set(cluster.ids.values())  # one trial on each node
    for c in children:  # run folders in the shared storage, artifacts on the tracking server
        assert json.loads((shared / c.info.run_id / "state.json").read_text())["finished"]
        assert "evals.csv" in {a.path for a in client.list_artifacts(c.info.run_id)}
    assert list((shared / "tune").glob("two-nodes-*/tuner.pkl"))
    # each trial's model logged through the server, the better one registered by the driver
    top = max(c.data.metrics["eval/mAP"] for c in children)
    best = {c.info.run_id for c in children if c.data.metrics["eval/mAP"] == top}
    registered = client.get_model_version("two-nodes-embedder", "1").run_id
    assert registered in best
    assert parent.data.tags["registered_model"] == f"two-nodes-embedder version 1 (run {registered})"
    assert list((node2_cache / "features").glob("*.npy")) and list(node2_cache.glob("synthetic-*/catalogue.csv"))


def test_ddp_places_one_worker_on_each_node(tmp_path, cluster, mlflow_server):
    sets = [f"{k}={json.dumps(v)}" for k, v in TINY.items()] + [f"output_dir={tmp_path / 'runs'}"]
    args = ["run", "--workers", "2", "--strategies", "aas", "--tracking-uri", mlflow_server]
    for s in sets:
        args += ["--set", s]
    proc = aas_ray(cluster, *args)
    assert proc.returncode == 2
    assert error_lines(proc)[-1].endswith("aas-ray run --workers 2 runs on a Ray cluster of 2 nodes but no storage "
                                          "is set: give --storage, a study's `storage:` or AAS_RAY_STORAGE a folder "
                                          "every node shares or an s3:// / gs:// URI (run folders, checkpoints and "
                                          "study state go there)")
    assert not (tmp_path / "runs").exists()

    shared = tmp_path / "shared"
    proc = aas_ray(cluster, *args, "--storage", str(shared))
    assert proc.returncode == 0, proc.stderr[-5000:]
    run_dir = next(shared.glob("*/state.json")).parent
    run = MlflowClient(mlflow_server).get_run(run_dir.name)
    assert run.info.status == "FINISHED" and "eval/mAP" in run.data.metrics
    ranks = run.data.tags["ray_nodes"].split(",")  # the node of rank 0, rank 1
    assert len(ranks) == 2 and set(ranks) == set(cluster.ids.values())
    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"] and state["epoch_done"] == 1
    kept = [p for p in (shared / "ray_train" / f"train-{run_dir.name}").glob("checkpoint_*") if p.is_dir()]
    assert len(kept) == 2  # Ray Train's checkpoints, in the shared storage
