"""The main job against real components: a real sqlite MLflow store, real images, real
training, real processes killed with SIGKILL at named points."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from aas_ray.cli import main
from aas_ray.experiment.checkpoint import mount_point
from aas_ray.orchestration.run import mark_interrupted

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


def client_of(tmp_path):
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def resume_args(tmp_path, run_dir):
    return ["run", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--resume", str(run_dir)]


def patched(tmp_path, patch: str, *extra, epochs=4) -> list[str]:
    """The command line of a child `aas-ray run` whose ``patch`` (Python run before the CLI)
    does something at a chosen point (a kill, a full disk, a wait for Ctrl-C)."""
    script = textwrap.dedent(patch) + textwrap.dedent(f"""
        import sys
        from aas_ray.cli import main
        sys.exit(main({cli_args(tmp_path, '--strategies', 'aas', *extra, epochs=epochs)!r}))
    """)
    return [sys.executable, "-c", script]


def the_run_folder(tmp_path):
    runs = list((tmp_path / "runs").glob("*/state.json"))
    assert len(runs) == 1
    return runs[0].parent


def killed_at(tmp_path, patch: str, *extra, epochs=4):
    """Run `aas-ray run` in a child process whose ``patch`` SIGKILLs it at a chosen point;
    returns the run folder it left."""
    proc = subprocess.run(patched(tmp_path, patch, *extra, epochs=epochs), capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-3000:]
    return the_run_folder(tmp_path)


def steps_of(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_tiny_run_is_logged_to_mlflow_with_its_bounds(tmp_path, capsys):
    assert main(cli_args(tmp_path, "--strategies", "none,aas,supervised")) == 0
    client = client_of(tmp_path)
    exp = client.get_experiment_by_name("aas-ray")
    # MLflow 3 opens experiments without this tag on its GenAI pages instead of the runs
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.data.tags["strategy"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"none", "aas", "supervised"}
    aas = runs["aas"]
    assert aas.info.status == "FINISHED"
    assert aas.data.params["al.strategy"] == "aas" and aas.data.params["cluster.k1"] == "10"
    for key in ("train/loss", "views/clusters", "views/nmi", "eval/mAP", "eval/auc_roc", "oracle/pairs_asked",
                "oracle/U_us", "oracle/utilised_budget", "labels/ml_closure_recall", "labels/refined_precision",
                "labels/train_f1"):
        assert key in aas.data.metrics, key
    assert aas.data.metrics["views/knn_recall"] == 1.0  # a small set: exact kNN
    assert steps_of(client, aas.info.run_id, "eval/mAP") == [0, 1, 2]
    arts = {a.path for a in client.list_artifacts(aas.info.run_id)}
    assert {"config.yaml", "pairs.csv", "annotations.jsonl", "split.csv", "map_vs_budget.png",
            "weights.safetensors", "cycles.csv"} <= arts
    pairs = pd.read_csv(tmp_path / "runs" / aas.info.run_id / "pairs.csv")
    assert len(pairs) == aas.data.metrics["oracle/asked_total"] and pairs[["u", "v"]].duplicated().sum() == 0
    assert runs["none"].data.metrics["eval/utilised_budget"] == 0.0
    # gap closed against the bounds trained in the same command, on the same split and seed (two
    # epochs of a tiny set may leave the skyline below plain SpCL: then there is no gap to close)
    m = {s: r.data.metrics["eval/mAP"] for s, r in runs.items()}
    assert all(r.data.tags["config_key"] == aas.data.tags["config_key"] for r in runs.values())
    out = capsys.readouterr().out
    assert "gap_closed" in out
    if m["supervised"] > m["none"]:
        want = (m["aas"] - m["none"]) / (m["supervised"] - m["none"])
        assert aas.data.metrics["eval/gap_closed"] == pytest.approx(want) and f"{want:.4f}" in out
    else:
        assert "eval/gap_closed" not in aas.data.metrics


@pytest.mark.slow
def test_several_seeds_give_paired_verdicts(tmp_path, capsys, caplog):
    assert main(cli_args(tmp_path, "--strategies", "none,random", "--seeds", "3,5", epochs=1)) == 0
    client = client_of(tmp_path)
    exp = client.get_experiment_by_name("aas-ray")
    runs = client.search_runs([exp.experiment_id])
    assert sorted((r.data.tags["strategy"], r.data.params["seed"]) for r in runs) == [
        ("none", "3"), ("none", "5"), ("random", "3"), ("random", "5")]
    final = {(r.data.tags["strategy"], int(r.data.params["seed"])): r.data.metrics["eval/mAP"] for r in runs}
    diffs = [final[("random", s)] - final[("none", s)] for s in (3, 5)]
    out = capsys.readouterr().out
    assert "Paired differences in mAP over 2 seeds" in out
    # the row of the contrast: both per-seed differences in points, then the verdict
    row = next(line for line in out.splitlines() if line.startswith("| random − none |"))
    assert " ".join(f"{100 * d:+.1f}" for d in diffs) in row
    assert row.rstrip(" |").endswith(("not separable", "random > none", "random < none"))
    assert "use --seeds 0,1,2,3,4 for a verdict" in out
    for bad in ("1,1", "1,x"):
        with pytest.raises(SystemExit) as exit_:
            main(cli_args(tmp_path, "--seeds", bad))
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--seeds needs distinct integers, got '1,1'" in err and "--seeds needs comma-separated integers" in err


@pytest.mark.slow
def test_strategies_side_by_side_in_processes(tmp_path, capsys):
    assert main(cli_args(tmp_path, "--strategies", "none,aas,supervised", "--parallel", "2")) == 0
    client = client_of(tmp_path)
    exp = client.get_experiment_by_name("aas-ray")
    runs = {r.data.tags["strategy"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"none", "aas", "supervised"}
    for strategy, r in runs.items():
        assert r.info.status == "FINISHED", strategy
        assert steps_of(client, r.info.run_id, "eval/mAP") == [0, 1, 2], strategy
    # the same data, split and zero-shot model in every process
    zero = {m.value for r in runs.values() for m in client.get_metric_history(r.info.run_id, "eval/mAP")
            if m.step == 0}
    assert len(zero) == 1
    pairs = pd.read_csv(tmp_path / "runs" / runs["aas"].info.run_id / "pairs.csv")
    assert len(pairs) > 0 and not pairs[["u", "v"]].duplicated().any()
    out = capsys.readouterr().out
    assert "gap_closed" in out and all(r.info.run_id in out for r in runs.values())


def test_side_by_side_refuses_a_person_in_the_loop(tmp_path, caplog):
    assert main(cli_args(tmp_path, "--strategies", "none,aas", "--parallel", "2", "--set", "al.oracle=human")) != 0
    assert "--parallel" in caplog.text
    caplog.clear()
    assert main(cli_args(tmp_path, "--strategies", "none,aas", "--parallel", "0")) != 0
    assert "--parallel must be at least 1, got 0" in caplog.text
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_resume_after_sigkill_mid_training(tmp_path):
    """Killed at the start of epoch 2's training: resume gives the same constraints, a
    continuous history (every step once) and no pair asked twice."""
    run_dir = killed_at(tmp_path, """
        import os, signal
        from aas_ray.experiment import learner
        _orig = learner.Learner.train_epoch
        def train_epoch(self, labels, epoch):
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return _orig(self, labels, epoch)
        learner.Learner.train_epoch = train_epoch
    """)
    before = [ln for ln in (run_dir / "annotations.jsonl").read_text().splitlines() if ln]
    assert main(resume_args(tmp_path, run_dir)) == 0
    after = [ln for ln in (run_dir / "annotations.jsonl").read_text().splitlines() if ln]
    assert after[: len(before)] == before  # nothing collected was lost or rewritten
    pairs = [tuple(sorted((json.loads(ln)["u"], json.loads(ln)["v"]))) for ln in after]
    assert len(pairs) == len(set(pairs))  # no pair asked twice
    client = client_of(tmp_path)
    run = client.get_run(run_dir.name)
    assert run.info.status == "FINISHED"
    assert steps_of(client, run.info.run_id, "train/loss") == [1, 2, 3, 4]
    assert steps_of(client, run.info.run_id, "eval/mAP") == [0, 1, 2, 3, 4]
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the same MLflow run continued


@pytest.mark.slow
def test_kill_between_checkpoint_and_metrics_loses_no_metric(tmp_path):
    """Killed after epoch 1's checkpoint and before its metrics reach MLflow: the state says
    the epoch is done, and the resumed run logs its metrics exactly once."""
    run_dir = killed_at(tmp_path, """
        import os, signal
        from aas_ray.orchestration import mlflow_tracking as tracking
        _orig = tracking.MlflowTracker.log_metrics_once
        def log_metrics_once(self, metrics, step):
            if step == 2 and "train/loss" in metrics:
                os.kill(os.getpid(), signal.SIGKILL)
            return _orig(self, metrics, step)
        tracking.MlflowTracker.log_metrics_once = log_metrics_once
    """)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epoch_done"] == 1 and [u["step"] for u in state["unlogged"]] == [2]
    client = client_of(tmp_path)
    assert steps_of(client, run_dir.name, "train/loss") == [1]
    assert main(resume_args(tmp_path, run_dir)) == 0
    assert steps_of(client, run_dir.name, "train/loss") == [1, 2, 3, 4]
    assert steps_of(client, run_dir.name, "views/clusters") == [1, 2, 3, 4]
    assert client.get_run(run_dir.name).info.status == "FINISHED"


@pytest.mark.slow
def test_kill_during_setup_is_resumable_and_never_left_running(tmp_path, caplog):
    run_dir = killed_at(tmp_path, """
        import os, signal
        from aas_ray.experiment import trainer
        def build_model(cfg):
            os.kill(os.getpid(), signal.SIGKILL)
        trainer.build_model = build_model
    """)
    client = client_of(tmp_path)
    assert client.get_run(run_dir.name).info.status == "RUNNING"
    assert json.loads((run_dir / "state.json").read_text())["epoch_done"] == -1
    # The next command on this output folder marks it KILLED and says how to continue it ...
    assert main(cli_args(tmp_path, "--strategies", "none", epochs=1)) == 0
    assert client.get_run(run_dir.name).info.status == "KILLED"
    assert f"continue it with: aas-ray run --resume {run_dir}" in caplog.text
    # ... and --resume runs it to the end in the same MLflow run.
    assert main(resume_args(tmp_path, run_dir)) == 0
    assert client.get_run(run_dir.name).info.status == "FINISHED"
    assert steps_of(client, run_dir.name, "train/loss") == [1, 2, 3, 4]


@pytest.mark.slow
def test_kill_between_the_mlflow_run_and_its_folder_leaves_no_orphan(tmp_path, caplog):
    """Killed the moment the MLflow run exists: its folder is there, under the name it was
    started with, and the MLflow run names it; the next command gives the folder the run's
    id, marks the run KILLED and says how to continue it."""
    started = killed_at(tmp_path, """
        import os, signal
        from aas_ray.orchestration import mlflow_tracking as tracking
        _create = tracking.MlflowTracker.create.__func__
        def create(cls, *args, **kwargs):
            _create(cls, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        tracking.MlflowTracker.create = classmethod(create)
    """)
    client = client_of(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("aas-ray").experiment_id])
    assert run.info.status == "RUNNING" and started.name == ".starting-" + run.data.tags["aas_ray.started"]
    assert main(cli_args(tmp_path, "--strategies", "none", epochs=1)) == 0
    run_dir = tmp_path / "runs" / run.info.run_id
    assert not started.exists() and json.loads((run_dir / "state.json").read_text())["tracking_run_id"] == run_dir.name
    assert client.get_run(run_dir.name).info.status == "KILLED"
    assert f"continue it with: aas-ray run --resume {run_dir}" in caplog.text
    # ... and it resumes by its MLflow run id, to the end, in the same MLflow run
    assert main(resume_args(tmp_path, run_dir.name) + ["--set", f"output_dir={tmp_path / 'runs'}"]) == 0
    assert client.get_run(run_dir.name).info.status == "FINISHED"
    assert steps_of(client, run_dir.name, "train/loss") == [1, 2, 3, 4]
    assert client.get_run(run_dir.name).data.params["al.strategy"] == "aas"


@pytest.mark.slow
def test_kill_before_the_mlflow_run_leaves_nothing_behind(tmp_path, caplog):
    started = killed_at(tmp_path, """
        import os, signal
        from aas_ray.orchestration import mlflow_tracking as tracking
        def create(cls, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        tracking.MlflowTracker.create = classmethod(create)
    """)
    assert started.name.startswith(".starting-")
    caplog.set_level(logging.INFO)
    mark_interrupted(tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not started.exists() and f"removed {started}" in caplog.text


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_the_run_resumes(tmp_path):
    """The disk fills up 200 kB into epoch 1's checkpoint (the writer fails as write(2) does)."""
    proc = subprocess.run(patched(tmp_path, """
        import errno, io
        from aas_ray.experiment import checkpoint
        class Full(io.FileIO):
            def write(self, data):
                if self.tell() + len(data) > 200_000:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().write(data)
        opened = []
        def fake_open(path, mode="r", *args, **kwargs):
            if str(path).endswith("checkpoint.pt.tmp"):
                opened.append(path)
                if len(opened) == 2:
                    return Full(path, "wb")
            return open(path, mode, *args, **kwargs)
        checkpoint.open = fake_open
    """), capture_output=True, text=True, timeout=600)
    run_dir = the_run_folder(tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert line.endswith(f"no space left on {mount_point(run_dir)} while writing {run_dir / 'checkpoint.pt'}; "
                         "the previous checkpoint.pt is kept: free some space, then resume")
    assert f"continue it with: aas-ray run --resume {run_dir}" in proc.stderr
    assert sorted(p.name for p in run_dir.glob("checkpoint*")) == ["checkpoint.pt"]
    assert json.loads((run_dir / "state.json").read_text())["epoch_done"] == 0
    client = client_of(tmp_path)
    assert client.get_run(run_dir.name).info.status == "KILLED"
    assert main(resume_args(tmp_path, run_dir)) == 0
    assert client.get_run(run_dir.name).info.status == "FINISHED"
    assert steps_of(client, run_dir.name, "train/loss") == [1, 2, 3, 4]


@pytest.mark.slow
def test_ctrl_c_leaves_the_run_killed_with_the_way_back(tmp_path):
    """SIGINT from outside (Ctrl-C) during epoch 2: KILLED in MLflow, the resume command
    printed, and the resumed run has every step once."""
    ready = tmp_path / "in-epoch-2"
    proc = subprocess.Popen(patched(tmp_path, f"""
        import time
        from pathlib import Path
        from aas_ray.experiment import learner
        _orig = learner.Learner.train_epoch
        def train_epoch(self, labels, epoch):
            if epoch == 2:
                Path({str(ready)!r}).touch()
                time.sleep(600)
            return _orig(self, labels, epoch)
        learner.Learner.train_epoch = train_epoch
    """), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert ready.exists(), proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = the_run_folder(tmp_path)
    assert proc.returncode == 130, err[-3000:]
    assert f"was interrupted after epoch 1; continue it with: aas-ray run --resume {run_dir}" in err
    client = client_of(tmp_path)
    assert client.get_run(run_dir.name).info.status == "KILLED"
    assert main(resume_args(tmp_path, run_dir)) == 0
    assert client.get_run(run_dir.name).info.status == "FINISHED"
    assert steps_of(client, run_dir.name, "train/loss") == [1, 2, 3, 4]
    assert steps_of(client, run_dir.name, "eval/mAP") == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_second_process_on_a_run_is_refused(tmp_path, caplog):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "aas_ray.cli"] + cli_args(tmp_path, "--strategies", "aas", epochs=30),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            states = list((tmp_path / "runs").glob("*/state.json")) if (tmp_path / "runs").exists() else []
            if states and json.loads(states[0].read_text())["epoch_done"] >= 0:
                break
            time.sleep(0.2)
        run_dir = states[0].parent
        assert main(resume_args(tmp_path, run_dir)) == 2
        assert f"run {run_dir} is in use by process {proc.pid}" in caplog.text
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_journal_cut_in_the_middle_is_an_error_naming_both_counts(tmp_path, caplog):
    assert main(cli_args(tmp_path, "--strategies", "aas", epochs=1)) == 0
    run_dir = next((tmp_path / "runs").glob("*/state.json")).parent
    journal = run_dir / "annotations.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    held = json.loads((run_dir / "state.json").read_text())["answers"]
    assert held == len(lines) >= 5
    # A torn last line written after the last checkpoint is skipped ...
    journal.write_text("".join(lines) + '{"u": 1, "v"')
    assert main(resume_args(tmp_path, run_dir)) == 0
    # ... but a journal cut inside line 3 lost answers: an error, and nothing is rewritten.
    cut = "".join(lines[:2]) + lines[2][:7]
    journal.write_text(cut)
    assert main(resume_args(tmp_path, run_dir)) == 2
    assert f"holds 2 answers but the run's last checkpoint recorded {held}" in caplog.text
    assert journal.read_text() == cut


@pytest.mark.slow
def test_human_oracle_round_trip(tmp_path, caplog, capsys):
    args = cli_args(tmp_path, "--strategies", "aas", "--set", "al.oracle=human", epochs=1)
    assert main(args) == 0
    pending = list((tmp_path / "runs").glob("*/pending-cycle-1.csv"))
    assert len(pending) == 1
    path, run_dir = pending[0], pending[0].parent
    assert f"the run waits for a person: answer the pairs in {path}" in caplog.text
    client = client_of(tmp_path)
    assert client.get_run(run_dir.name).info.status == "SCHEDULED"
    original = pd.read_csv(path, keep_default_na=False)
    resume = resume_args(tmp_path, run_dir)
    # unanswered rows
    assert main(resume) == 2 and "no answer yet" in caplog.text
    # a deleted file is written again with the same pairs
    path.unlink()
    assert main(resume) == 0 and path.is_file()
    assert pd.read_csv(path, keep_default_na=False).equals(original)
    cat = pd.read_csv(run_dir / "split.csv")
    ids = cat[cat["role"] == "train"]["identity"].to_numpy()
    truth = np.where(ids[original["u"]] == ids[original["v"]], "same", "different")
    # a row edited to other image numbers, and an answer that is not one, name file and line
    edited = original.assign(answer=truth)
    edited.loc[0, "u"] = int(edited.loc[1, "v"])
    edited.to_csv(path, index=False)
    assert main(resume) == 2 and f"{path} line 2: the row was changed" in caplog.text
    original.assign(answer=np.where(np.arange(len(original)) == 1, "maybe", truth)).to_csv(path, index=False)
    assert main(resume) == 2 and f"{path} line 3: unknown answer 'maybe'" in caplog.text
    assert not (run_dir / "annotations.jsonl").exists() or not (run_dir / "annotations.jsonl").read_text()
    original.assign(answer=truth).to_csv(path, index=False)
    assert main(resume) == 0
    lines = (run_dir / "annotations.jsonl").read_text().splitlines()
    assert len(lines) == len(original) and all('"source": "human"' in ln for ln in lines)
    asked = pd.read_csv(run_dir / "pairs.csv")
    assert asked[["u", "v"]].values.tolist() == original[["u", "v"]].values.tolist()
    cycles = pd.read_csv(run_dir / "cycles.csv")
    assert cycles.loc[0, "regions"] > 0 and cycles.loc[0, "pairs_asked"] == len(original)
    assert client.get_run(run_dir.name).info.status == "FINISHED"


def test_bad_config_and_missing_dataset_fail_before_training(tmp_path, caplog):
    assert main(cli_args(tmp_path, "--set", "train.epochz=3")) == 2
    assert "unknown key 'train.epochz'" in caplog.text
    assert main(cli_args(tmp_path, "--set", "data.name=folder", "--set", f"data.root={tmp_path / 'nope'}")) == 2
    assert "does not exist" in caplog.text
    # nothing collected, nothing left behind: no run folder, no MLflow run
    assert not (tmp_path / "runs").exists()
    exp = client_of(tmp_path).get_experiment_by_name("aas-ray")
    assert exp is None or not client_of(tmp_path).search_runs([exp.experiment_id])


def test_unreachable_tracking_server_fails_fast(tmp_path, caplog):
    t = time.time()
    args = cli_args(tmp_path)
    args[args.index("--tracking-uri") + 1] = "http://127.0.0.1:9"
    assert main(args) == 2
    assert "unreachable" in caplog.text
    assert time.time() - t < 30
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_fresh_cache_and_a_warm_one_train_alike(tmp_path):
    """A first run fills the feature cache (building a backbone, which draws from torch's
    generator); a second run of the same seed finds it full. Both must train the same."""
    import torch

    from aas_ray.config import load_config
    from aas_ray.experiment.run_folder import RunFolder
    from aas_ray.experiment.trainer import SpCLTrainer

    sets = TINY + [f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=2", "train.eval_every=2",
                   "tracking.log_model=false", "al.strategy=random"]
    cfg = load_config(None, sets)
    finals = []
    for name in ("cold", "warm"):
        trainer = SpCLTrainer(cfg, RunFolder(tmp_path / name), progress=False)
        trainer.run()
        finals.append((trainer.state.evals[-1]["mAP"], trainer.learner.memory.features.clone()))
    assert finals[0][0] == finals[1][0]
    assert torch.equal(finals[0][1], finals[1][1])


def _pool_children(pid: int) -> list[int]:
    """The worker processes (multiprocessing spawn) whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmd:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_driver_stops_the_strategies_it_trains_side_by_side(tmp_path):
    """SIGTERM to `aas-ray run --parallel 2` (a scheduler's time limit, `kill`): both children
    stop too, both runs are KILLED with their resume command; none goes on training alone,
    and the third strategy, already queued to a child, does not start."""
    proc = subprocess.Popen([sys.executable, "-m", "aas_ray.cli",
                             *cli_args(tmp_path, "--strategies", "none,random,aas", "--parallel", "2", epochs=60)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            states = list((tmp_path / "runs").glob("*/state.json"))
            if sum(json.loads(p.read_text())["epoch_done"] >= 0 for p in states) == 2:  # the first two train
                break
            time.sleep(0.5)
        children = _pool_children(proc.pid)
        assert len(children) == 2, (children, proc.poll())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    time.sleep(1)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "children went on after the driver"
    client = client_of(tmp_path)
    runs = [p.parent.name for p in (tmp_path / "runs").glob("*/state.json")
            if json.loads(p.read_text())["epoch_done"] >= 0]
    assert sorted(client.get_run(r).info.status for r in runs) == ["KILLED", "KILLED"]
    for r in runs:
        assert f"continue it with: aas-ray run --resume {tmp_path / 'runs' / r}" in err
    assert "[aas]" not in err, "a strategy started after the driver was told to stop"
