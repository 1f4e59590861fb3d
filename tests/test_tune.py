"""Training studies under Ray Tune, end to end: per-epoch reports with run-folder checkpoints,
ASHA stopping a trial early, a killed trial retried from where it was, and a study whose
driver is killed resumed without running a finished trial twice."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from processes import descendants, end

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# tests/test_run.py's TINY schedule, as study overrides
TINY = {"data.synthetic.identities": 10, "data.synthetic.families": 4, "data.synthetic.min_images": 4,
        "data.synthetic.max_images": 8, "data.synthetic.image_size": 48, "model.image_size": [64, 64],
        "cluster.k1": 10, "cluster.k2": 3, "al.budget_fraction": 0.01, "al.cycles": 2, "al.every": 1,
        "train.iters": 2, "train.batch_size": 16, "train.eval_every": 1,
        "tracking.log_model": False}  # the MLflow model: tests/test_after_run.py
# A driver of its own: a local Ray started (and ended) by it, never a cluster found on the machine.
ENV = dict(os.environ, PYTHONPATH=str(REPO), RAY_ADDRESS="local", TQDM_DISABLE="1")


def train_study(tmp_path, name: str, strategies: list[str], epochs: int, **extra) -> Path:
    body = {"study": name, "kind": "train", "base": str(REPO / "tune_configs" / "demo.yaml"),
            "overrides": {**TINY, "train.epochs": epochs, "data.cache_dir": str(tmp_path / "cache"),
                          "output_dir": str(tmp_path / "runs")},
            "datasets": ["synthetic"], "search": {"al.strategy": {"grid": strategies}}, "max_concurrent_trials": 1,
            "metric": "mAP", **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def tune_cmd(path: Path, uri: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "aas_ray.cli", "tune", str(path), "--tracking-uri", uri, *extra]


def trials_of(client: MlflowClient, study: str) -> tuple[object, list]:
    """The study's one parent run and its child runs."""
    exp = client.get_experiment_by_name("aas-ray")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    parents = [r for r in runs if r.info.run_name == f"study-{study}"]
    assert len(parents) <= 1, [p.info.run_id for p in parents]
    parent = parents[0] if parents else None
    return parent, [r for r in runs if parent and r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


@contextmanager
def driver_of(cmd: list[str], log: Path):
    """``aas-ray tune`` in a child process; whatever of it is left when the block ends (a
    failed assertion) is killed: it, its Ray and its trials."""
    with open(log, "w") as out:
        driver = subprocess.Popen(cmd, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield driver
    finally:
        if driver.poll() is None:
            left = descendants(driver.pid)
            driver.kill()
            driver.wait()
            end(left, 0)


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_asha_stops_a_hopeless_trial_and_a_killed_trial_goes_on_where_it_was(tmp_path):
    """Two trials one after the other, ranked by the utilised budget so that ASHA's decision
    is known in advance: ``random`` asks pairs from the first cycle on, ``none`` never does,
    so at the first rung (epoch 1) ``none`` falls below ``random`` and is stopped. ``random``
    has its process killed once, after its second epoch: Tune retries it (max_failures: 1)
    and it goes on in its run folder, in the same MLflow run."""
    shared = tmp_path / "shared"
    path = train_study(tmp_path, "asha", ["random", "none"], epochs=4, metric="utilised_budget", storage=str(shared),
                       scheduler={"asha": {"grace_period": 1, "reduction_factor": 2}})
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    with driver_of(tune_cmd(path, uri), tmp_path / "driver.log") as driver:
        killed = None
        deadline = time.time() + 900
        while killed is None and time.time() < deadline and driver.poll() is None:
            _, children = trials_of(client, "asha")
            random = [c for c in children if c.data.tags["strategy"] == "random"]
            state = shared / random[0].info.run_id / "state.json" if random else None
            if state is not None and state.is_file() and json.loads(state.read_text())["epoch_done"] >= 1:
                killed = json.loads((state.parent / ".lock").read_text())["pid"]  # the trial's own process
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.1)
        assert killed is not None, (tmp_path / "driver.log").read_text()[-3000:]
        assert driver.wait(900) == 0, (tmp_path / "driver.log").read_text()[-5000:]
    out = (tmp_path / "driver.log").read_text()
    assert "study asha: 1 trials completed, 1 stopped early, 0 failed, 0 unfinished" in out

    parent, children = trials_of(client, "asha")
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert parent.data.metrics["trials_stopped_early"] == 1 and parent.data.metrics["trials_completed"] == 1
    by = {c.data.tags["strategy"]: c for c in children}
    random, none = by["random"], by["none"]
    # the killed trial: one MLflow run, every epoch trained and logged once, in the shared folder
    assert random.info.status == "FINISHED"
    assert steps(client, random.info.run_id, "train/loss") == [1, 2, 3, 4]
    assert steps(client, random.info.run_id, "eval/mAP") == [0, 1, 2, 3, 4]
    assert json.loads((shared / random.info.run_id / "state.json").read_text())["finished"]
    # stopped at the first rung: KILLED (not FAILED), marked, after one epoch
    assert none.info.status == "KILLED" and none.data.tags["stopped_early"] == "true"
    assert steps(client, none.info.run_id, "eval/mAP") == [0, 1]
    assert json.loads((shared / none.info.run_id / "state.json").read_text())["epoch_done"] == 0
    assert all(len(c.data.tags["ray_node"]) == 56 for c in children)  # the Ray node id each trial ran on

    # Tune's record of the killed trial: a report per evaluated epoch, each with a checkpoint
    # of the run folder, the second attempt counting on from the checkpoint Tune restored
    # (result.json may hold the first attempt's reports or start again); the last two
    # checkpoints kept, in the shared storage.
    trial_dir = next((shared / "tune").glob(f"asha-*/*{random.data.tags['tune_trial']}*"))
    reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    epochs = [r["epoch"] for r in reports]
    assert epochs[-2:] == [3, 4] and epochs == sorted(set(epochs)) and set(epochs) <= {1, 2, 3, 4}, epochs
    assert reports[-1]["training_iteration"] > reports[-1]["iterations_since_restore"]
    assert all({"mAP", "utilised_budget", "pairs", "epochs"} <= set(r) and r["checkpoint_dir_name"] for r in reports)
    kept = sorted(trial_dir.glob("checkpoint_*"))
    assert len(kept) == 2 and {p.name for p in kept[-1].iterdir()} == {"checkpoint.pt", "state.json",
                                                                        "annotations.jsonl", "pairs.csv"}
    summary = pd.read_csv(next(shared.glob("tune/asha-*/summary/summary.csv"))).set_index("al.strategy")
    assert summary.loc["random", "status"] == "finished" and summary.loc["random", "epoch"] == 4
    assert summary.loc["none", "status"] == "stopped early" and summary.loc["none", "epoch"] == 1


def test_a_study_whose_driver_is_killed_resumes_without_running_a_finished_trial_twice(tmp_path):
    """Four trials one after the other; the driver (and with it its local Ray) is killed with
    SIGKILL once two have finished and the third has trained an epoch. ``--resume`` keeps the
    parent run, leaves the finished trials alone and runs the rest, the trial cut short going
    on in its run folder; stopped by Ctrl-C after the third, it counts what finished and says
    how to go on; a second ``--resume`` ends the study. Tune's state lives under a ``file://``
    URI: the same pyarrow path as ``s3://``."""
    strategies = ["none", "random", "aas", "supervised"]
    path = train_study(tmp_path, "resumed", strategies, epochs=3, storage=(tmp_path / "shared").as_uri())
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    with driver_of(tune_cmd(path, uri), tmp_path / "first.log") as driver:
        deadline = time.time() + 900
        while time.time() < deadline and driver.poll() is None:
            _, children = trials_of(client, "resumed")
            running = [tmp_path / "runs" / c.info.run_id / "state.json" for c in children
                       if c.info.status == "RUNNING"]
            if sum(c.info.status == "FINISHED" for c in children) >= 2 and any(
                    f.is_file() and json.loads(f.read_text())["epoch_done"] >= 0 for f in running):
                break
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        started = descendants(driver.pid)  # its Ray: GCS, raylet, agents, trial workers
        driver.kill()
        driver.wait()
        end(started)  # the trial workers end with their raylet; Ray's agents may linger: ended here
    parent_before, before = trials_of(client, "resumed")
    done_before = {c.info.run_id: c.info.end_time for c in before if c.info.status == "FINISHED"}
    cut_short = [c.info.run_id for c in before if c.info.status == "RUNNING"]
    assert len(done_before) >= 2 and len(cut_short) == 1 and parent_before.info.status == "RUNNING"

    # Resumed, then Ctrl-C once the third trial has finished: the trials are counted as they ended.
    with driver_of(tune_cmd(path, uri, "--resume"), tmp_path / "second.log") as driver:
        deadline = time.time() + 900
        while time.time() < deadline and driver.poll() is None:
            if sum(c.info.status == "FINISHED" for c in trials_of(client, "resumed")[1]) >= 3:
                driver.send_signal(signal.SIGINT)
                break
            time.sleep(0.2)
        assert driver.wait(300) == 1
    second = (tmp_path / "second.log").read_text()
    run_id = parent_before.info.run_id
    assert f"resuming study resumed (MLflow run {run_id})" in second
    assert "study resumed: 3 trials completed, 0 stopped early, 0 failed, 1 unfinished" in second
    assert f"continue it with: aas-ray tune {path} --resume {run_id}" in second
    assert trials_of(client, "resumed")[0].info.status == "KILLED"

    proc = subprocess.run(tune_cmd(path, uri, "--resume", run_id), env=ENV, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "study resumed: 4 trials completed, 0 stopped early, 0 failed, 0 unfinished" in proc.stderr

    parent, children = trials_of(client, "resumed")
    assert parent.info.run_id == parent_before.info.run_id and parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_completed"] == 4 and parent.data.metrics["trials_unfinished"] == 0
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.data.tags["strategy"] for c in finished) == sorted(strategies)  # each once, none missing
    assert len({c.data.tags["tune_trial"] for c in finished}) == 4
    for c in finished:
        if c.info.run_id in done_before:  # not run again
            assert c.info.end_time == done_before[c.info.run_id]
        assert steps(client, c.info.run_id, "train/loss") == [1, 2, 3]
    # a trial the kill cut short went on in the same run, not in a new one
    for run_id in cut_short:
        assert client.get_run(run_id).info.status == "FINISHED"
    assert len(children) in (4, 5)  # the fourth trial's run, if Ctrl-C came after it was made, went on too
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)


def test_each_evaluated_epoch_is_reported_with_its_checkpoint_and_gap_closed(tmp_path, tiny_cfg, monkeypatch):
    """The trainer's ``on_epoch`` collaborator in a training trial, without a cluster: what
    reaches ``ray.tune.report`` after each evaluated epoch but the last."""
    import shutil

    from ray import tune

    from aas_ray.experiment.run_folder import RunFolder
    from aas_ray.experiment.trainer import SpCLTrainer
    from aas_ray.orchestration.compare import config_key
    from aas_ray.orchestration.mlflow_tracking import MlflowTracker
    from aas_ray.orchestration.tune import EpochReporter

    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.epochs, cfg.train.eval_every, cfg.train.iters, cfg.train.batch_size = 3, 2, 2, 16
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    for strategy, m in (("none", 0.1), ("supervised", 0.6)):  # this setting's bounds, already in the store
        t = MlflowTracker.create(uri, "aas-ray", strategy, {"strategy": strategy, "config_key": config_key(cfg)})
        t.log_metrics({"eval/mAP": m}, step=4)
        t.finish()
    reports = []

    def report(metrics, checkpoint=None):
        keep = tmp_path / f"ckpt-{len(reports)}"
        shutil.copytree(checkpoint.path, keep)
        reports.append((metrics, keep))

    monkeypatch.setattr(tune, "report", report)
    experiment_id = MlflowClient(uri).get_experiment_by_name("aas-ray").experiment_id
    reporter = EpochReporter(cfg, uri, experiment_id)
    assert SpCLTrainer(cfg, RunFolder(tmp_path / "run"), progress=False, on_epoch=reporter).run().finished
    # epochs 1 and 2 (0-based) are evaluated; the last one is the trial's final report
    assert [m["epoch"] for m, _ in reports] == [2]
    metrics, ckpt = reports[0]
    assert metrics["epochs"] == 3 and {"mAP", "top1", "utilised_budget", "pairs"} <= set(metrics)
    assert metrics["pairs"] > 0 and 0 < metrics["utilised_budget"] < 1
    assert metrics["gap_closed"] == pytest.approx((metrics["mAP"] - 0.1) / 0.5)
    assert json.loads((ckpt / "state.json").read_text())["epoch_done"] == 1
    assert {p.name for p in ckpt.iterdir()} == {"checkpoint.pt", "state.json", "annotations.jsonl", "pairs.csv"}
