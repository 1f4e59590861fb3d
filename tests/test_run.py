"""The main job against real components: a real sqlite MLflow store, real images, real training."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from aas_ray.cli import main

TINY = [
    "data.synthetic.identities=10", "data.synthetic.families=4", "data.synthetic.min_images=4",
    "data.synthetic.max_images=8", "data.synthetic.image_size=48", "model.image_size=[64,64]",
    "cluster.k1=10", "cluster.k2=3", "al.budget_fraction=0.01", "al.cycles=2", "al.every=1",
    "train.iters=2", "train.batch_size=16", "train.eval_every=1",
]


def cli_args(tmp_path, *extra, epochs=2):
    sets = TINY + [f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}", f"train.epochs={epochs}"]
    out = ["run", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    for s in sets:
        out += ["--set", s]
    return out + list(extra)


@pytest.mark.slow
def test_tiny_run_is_logged_to_mlflow(tmp_path):
    assert main(cli_args(tmp_path, "--strategies", "none,aas")) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("aas-ray")
    runs = {r.data.tags["strategy"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"none", "aas"}
    aas = runs["aas"]
    assert aas.info.status == "FINISHED"
    assert aas.data.params["al.strategy"] == "aas" and aas.data.params["cluster.k1"] == "10"
    for key in ("train/loss", "cluster/clusters", "cluster/nmi", "eval/mAP", "eval/auc_roc", "al/pairs_asked",
                "al/U_us", "al/utilised_budget"):
        assert key in aas.data.metrics, key
    steps = [m.step for m in client.get_metric_history(aas.info.run_id, "eval/mAP")]
    assert steps == [0, 1, 2]
    arts = {a.path for a in client.list_artifacts(aas.info.run_id)}
    assert {"config.yaml", "pairs.csv", "annotations.jsonl", "split.csv", "map_vs_budget.png",
            "weights.safetensors", "cycles.csv"} <= arts
    pairs = pd.read_csv(tmp_path / "runs" / aas.info.run_id / "pairs.csv")
    assert len(pairs) == aas.data.metrics["al/asked_total"] and pairs[["u", "v"]].duplicated().sum() == 0
    assert runs["none"].data.metrics["eval/utilised_budget"] == 0.0


def test_bad_config_and_missing_dataset_fail_before_training(tmp_path, caplog):
    assert main(cli_args(tmp_path, "--set", "train.epochz=3")) == 2
    assert "unknown key 'train.epochz'" in caplog.text
    assert main(cli_args(tmp_path, "--set", "data.name=folder", "--set", f"data.root={tmp_path / 'nope'}")) == 2
    assert "does not exist" in caplog.text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("checkpoint.pt"))


def test_unreachable_tracking_server_fails_fast(tmp_path, caplog):
    t = time.time()
    args = cli_args(tmp_path)
    args[args.index("--tracking-uri") + 1] = "http://127.0.0.1:9"
    assert main(args) == 2
    assert "unreachable" in caplog.text
    assert time.time() - t < 30
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    """Kill a run mid-training; resume; same constraints, continuous history, no pair twice."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "aas_ray.cli"] + cli_args(tmp_path, "--strategies", "aas", epochs=4)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = tmp_path / "runs"
    deadline = time.time() + 600
    state = None
    while time.time() < deadline:
        states = list(runs.glob("*/state.json")) if runs.exists() else []
        if states and '"epoch_done": 1' in states[0].read_text():
            state = states[0]
            break
        if proc.poll() is not None:
            pytest.fail("run ended before it could be killed:\n" + proc.stdout.read())
        time.sleep(0.2)
    assert state is not None, "run never reached epoch 1"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = state.parent
    before = [ln for ln in (run_dir / "annotations.jsonl").read_text().splitlines() if ln]
    assert main(["run", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--resume", str(run_dir)]) == 0
    after = [ln for ln in (run_dir / "annotations.jsonl").read_text().splitlines() if ln]
    assert after[: len(before)] == before  # nothing collected was lost or rewritten
    pairs = [tuple(sorted((json.loads(ln)["u"], json.loads(ln)["v"]))) for ln in after]
    assert len(pairs) == len(set(pairs))  # no pair asked twice
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_dir.name)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps[-1] == 4 and set(range(1, 5)) <= set(steps)
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the same MLflow run continued


@pytest.mark.slow
def test_human_oracle_round_trip(tmp_path, caplog):
    args = cli_args(tmp_path, "--strategies", "aas", "--set", "al.oracle=human", epochs=1)
    assert main(args) == 0
    pending = list((tmp_path / "runs").glob("*/pending-cycle-1.csv"))
    assert len(pending) == 1
    run_dir = pending[0].parent
    resume = ["run", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--resume", str(run_dir)]
    assert main(resume) == 2 and "no answer yet" in caplog.text
    df = pd.read_csv(pending[0])
    cat = pd.read_csv(run_dir / "split.csv")
    ids = cat[cat["role"] == "train"]["identity"].to_numpy()
    df["answer"] = np.where(ids[df["u"]] == ids[df["v"]], "same", "different")
    df.to_csv(pending[0], index=False)
    assert main(resume) == 0
    lines = (run_dir / "annotations.jsonl").read_text().splitlines()
    assert len(lines) == len(df) and '"source": "human"' in lines[0]
