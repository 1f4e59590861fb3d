"""Run folders and inputs that must not hurt: a checkpoint that would run code, a journal that
lost answers, a second writer, bad values found before any work, a full disk, damaged or
read-only run folders, copies of run folders (docs/method.md §8, §10)."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from aas_ray.checks import InputError
from aas_ray.cli import main
from aas_ray.config import load_config
from aas_ray.experiment.checkpoint import RunState, load_checkpoint, save_checkpoint
from aas_ray.orchestration.run import RUN_DIR_TAG, mark_interrupted, resumed_tracker, start_run
from aas_ray.orchestration.runlock import RunLock, RunLocked


def namespaces() -> bool:
    """Whether this machine lets a process mount file systems of its own (unshare -rm)."""
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


NAMESPACES = pytest.mark.skipif(not namespaces(), reason="needs `unshare -rm` (user and mount namespaces) to mount "
                                "a small or read-only file system without root")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_a_pickled_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload(marker)}, f)
    with pytest.raises(InputError, match="could run code"):
        load_checkpoint(path, "cpu")
    torch.save({"model": {"w": torch.ones(2)}, "rng": {"state": {"state": 2**100, "inc": 3}}, "extra": _Payload(marker)},
               path)
    with pytest.raises(InputError, match="could run code"):
        load_checkpoint(path, "cpu")
    assert not marker.exists()


def test_checkpoint_round_trip_holds_tensors_and_rng_states(tmp_path):
    rng = np.random.default_rng(7)
    rng.random(3)
    obj = {"w": torch.arange(3.0), "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
    save_checkpoint(obj, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt", "cpu")
    again = np.random.default_rng()
    again.bit_generator.state = back["rng"]
    assert again.random() == rng.random()
    assert torch.equal(back["w"], obj["w"])


def test_state_file_that_is_not_json_is_named(tmp_path):
    (tmp_path / "state.json").write_text("{oops")
    with pytest.raises(InputError, match="state.json"):
        RunState.load(tmp_path / "state.json")


def test_second_holder_of_a_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from aas_ray.orchestration.runlock import RunLock\n"
        f"with RunLock({str(run)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert RunLock.is_held(run)
        with pytest.raises(RunLocked, match=f"in use by process {holder.pid}"):
            with RunLock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its process: a killed holder leaves the run free.
    assert not RunLock.is_held(run)
    with RunLock(run):
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()


def test_bad_values_fail_before_any_work(tmp_path, caplog):
    base = ["run", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--set", f"output_dir={tmp_path / 'runs'}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    t = time.time()
    assert main(base + ["--strategies", "aas,bogus"]) == 2
    assert "unknown strategy 'bogus'" in caplog.text
    assert main(base + ["--set", "al.epsilon=[0.5"]) == 2
    assert "override 'al.epsilon=[0.5'" in caplog.text and "not valid YAML" in caplog.text
    assert main(base + ["--set", "model.image_size=[0,0]"]) == 2
    assert "--set model.image_size=[0,0]" in caplog.text and "greater than or equal to 16" in caplog.text
    assert main(["run", "--tracking-uri", "foo://bar"]) == 2
    assert "'foo://bar' is not one MLflow can use" in caplog.text
    assert main(base + ["--resume", "nope"]) == 2
    assert f"no resumable run 'nope': {tmp_path / 'runs' / 'nope'} holds no state.json" in caplog.text
    assert time.time() - t < 60
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_simulate_rejects_features_that_are_not_numbers(tmp_path, caplog):
    (tmp_path / "f.txt").write_text("not an array")
    np.save(tmp_path / "y.npy", np.arange(4))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    for bad, why in (("f.txt", "is not a .npy file (it starts with b'not an'); save the features (n, d) with "
                                "numpy.save"),
                     ("obj.npy", "is not a plain .npy array of features (n, d): Object arrays cannot be loaded")):
        assert main(["simulate", "--features", str(tmp_path / bad), "--labels", str(tmp_path / "y.npy"),
                     "--out", str(tmp_path / "o")]) == 2
        assert f"{tmp_path / bad} {why}" in caplog.text
    assert "pickled" not in caplog.text  # a text file is not called pickled data
    assert not (tmp_path / "o").exists()  # a failed command leaves no empty output folder


@NAMESPACES
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """A real full disk: a 1 MiB tmpfs holds one 600 kB checkpoint, not a second beside it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"""
import json, os, torch
from pathlib import Path
from aas_ray.experiment.checkpoint import NoSpaceLeft, load_checkpoint, save_checkpoint
path = Path({str(disk / "checkpoint.pt")!r})
save_checkpoint({{"w": torch.zeros(150_000)}}, path)
try:
    save_checkpoint({{"w": torch.ones(150_000)}}, path)
    error = None
except NoSpaceLeft as err:
    error = str(err)
print(json.dumps({{"error": error, "files": sorted(os.listdir(path.parent)),
                  "kept": bool((load_checkpoint(path, "cpu")["w"] == 0).all())}}))
"""
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" -c "$3"',
                           "sh", str(disk), sys.executable, script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"] == (f"no space left on {disk} while writing {disk / 'checkpoint.pt'}; the previous "
                            "checkpoint.pt is kept: free some space, then resume")
    assert out["files"] == ["checkpoint.pt"] and out["kept"]  # the partial file is gone, the last one intact


def human_run(tmp_path):
    """A real run paused at cycle 1 for a person's answers, and its MLflow client."""
    sets = ["data.synthetic.identities=10", "data.synthetic.families=4", "data.synthetic.max_images=8",
            "data.synthetic.image_size=48", "model.image_size=[64,64]", "cluster.k1=10", "cluster.k2=3",
            "al.budget_fraction=null", "al.budget_pairs=8", "al.cycles=1", "train.epochs=1", "train.iters=2",
            "train.batch_size=16", "al.oracle=human", "al.strategy=random", f"data.cache_dir={tmp_path / 'cache'}",
            f"output_dir={tmp_path / 'runs'}"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run", "--tracking-uri", uri]
    for one in sets:
        args += ["--set", one]
    assert main(args) == 0
    (pending,) = (tmp_path / "runs").glob("*/pending-cycle-1.csv")
    return pending.parent, uri


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.slow
def test_damaged_run_folder_files_are_named_and_change_no_status(tmp_path, caplog):
    run_dir, uri = human_run(tmp_path)
    client = MlflowClient(uri)
    assert client.get_run(run_dir.name).info.status == "SCHEDULED"
    resume = ["run", "--tracking-uri", uri, "--resume", str(run_dir)]
    annotate = ["annotate", str(run_dir)]
    state_file = run_dir / "state.json"
    intact = state_file.read_text()
    # a pending pair naming an image the run does not have
    state = json.loads(intact)
    state["pending"]["pairs"][0] = [0, 10**6]
    state_file.write_text(json.dumps(state))
    for command in (resume, annotate):
        caplog.clear()
        assert main(command) == 2
        (line,) = errors(caplog)
        assert line.startswith(f"{state_file}: the pending pairs holds an index outside [0, ")
    assert client.get_run(run_dir.name).info.status == "SCHEDULED"
    state_file.write_text(intact)
    # the pseudo-clusters shown on the page: Python objects, then the wrong length
    clusters = run_dir / "pending-cycle-1-clusters.npy"
    n = np.load(clusters).size
    np.save(clusters, np.array([{"a": 1}] * n, dtype=object), allow_pickle=True)
    caplog.clear()
    assert main(annotate) == 2
    assert errors(caplog)[0].startswith(f"{clusters} is not a numeric .npy array of cluster labels (Object arrays")
    np.save(clusters, np.zeros(3))
    caplog.clear()
    assert main(annotate) == 2
    assert errors(caplog) == [f"{clusters} holds a float64 array of shape (3,), not one integer cluster label per "
                              "image"]
    assert client.get_run(run_dir.name).info.status == "SCHEDULED"


@pytest.mark.slow
@NAMESPACES
def test_a_read_only_run_folder_is_named_and_changes_no_status(tmp_path):
    run_dir, uri = human_run(tmp_path)
    read_only = ["unshare", "-rm", "sh", "-c", 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && '
                 'exec "$@"', "sh", str(run_dir), sys.executable, "-m", "aas_ray.cli"]
    for command in (["run", "--tracking-uri", uri, "--resume", str(run_dir)], ["annotate", str(run_dir)]):
        proc = subprocess.run(read_only + command, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        (line,) = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
        assert line.endswith(f"run folder {run_dir} cannot be written (the folder is read-only); a run writes its "
                             "state there: make it writable, or move it somewhere writable and resume it there")
    assert MlflowClient(uri).get_run(run_dir.name).info.status == "SCHEDULED"


def started(tmp_path, uri):
    """A run as `aas-ray run` starts it (its MLflow run, its folder), not held by anyone."""
    cfg = load_config(None, [f"output_dir={tmp_path / 'runs'}"])
    tracker, run_dir, lock = start_run(cfg, uri)
    lock.release()
    return tracker, run_dir


def test_a_copied_run_folder_never_changes_the_original_run(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker, run_dir = started(tmp_path, uri)
    copy = run_dir.with_name("my-copy")
    shutil.copytree(run_dir, copy)
    # the original goes on and finishes
    state = RunState.load(run_dir / "state.json")
    state.epoch_done, state.finished = 1, True
    state.save(run_dir / "state.json")
    for step in (1, 2):
        tracker.log_metrics({"train/loss": 1.0 / step}, step=step)
    tracker.finish()
    status = lambda: tracker.run().info.status  # noqa: E731
    assert main(["run", "--tracking-uri", uri, "--resume", str(copy)]) == 2
    assert errors(caplog) == [f"{copy} is a copy of the folder of MLflow run {tracker.run_id}, {run_dir.resolve()}: "
                              f"resuming the copy would change that run; resume {run_dir.resolve()} instead (or move "
                              "that folder away to go on from this copy)"]
    assert status() == "FINISHED"
    # a copy on another machine (here: the original folder gone): the run went on without it
    elsewhere = tmp_path / "elsewhere" / run_dir.name
    shutil.copytree(copy, elsewhere)
    shutil.rmtree(run_dir)
    caplog.clear()
    assert main(["run", "--tracking-uri", uri, "--resume", str(elsewhere)]) == 2
    assert errors(caplog) == [f"{elsewhere} holds 0 trained epoch(s) but its MLflow run {tracker.run_id} has "
                              "finished: the run went on in another copy of this folder, and resuming this one "
                              "would change it; resume that folder instead"]
    assert status() == "FINISHED"
    # not finished but logged past the copy's last epoch: the same
    tracker.finish("KILLED")
    caplog.clear()
    assert main(["run", "--tracking-uri", uri, "--resume", str(elsewhere)]) == 2
    assert f"{elsewhere} holds 0 trained epoch(s) but its MLflow run {tracker.run_id} has logged 2:" in caplog.text
    assert status() == "KILLED"


def test_a_moved_run_folder_is_its_runs_own(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker, run_dir = started(tmp_path, uri)
    tracker.finish("KILLED")
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.move(run_dir, moved)
    again, before = resumed_tracker(uri, moved)
    assert again.run_id == tracker.run_id and before == "KILLED"
    assert tracker.run().data.tags[RUN_DIR_TAG] == str(moved.resolve())
    # from now on the old place is the copy: a folder put back there is refused
    shutil.copytree(moved, run_dir)
    with pytest.raises(InputError, match=f"{run_dir} is a copy of the folder of MLflow run"):
        resumed_tracker(uri, run_dir)


def test_the_next_run_leaves_a_copy_of_a_running_run_alone(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker, run_dir = started(tmp_path, uri)
    shutil.copytree(run_dir, run_dir.with_name("copy"))
    with RunLock(run_dir):  # the original is being trained: its copy is not a run killed
        mark_interrupted(run_dir.parent, uri)
        assert tracker.run().info.status == "RUNNING"
    mark_interrupted(run_dir.parent, uri)  # its process is gone: now it was interrupted
    assert tracker.run().info.status == "KILLED"
    assert caplog.text.count("was interrupted") == 1
    assert f"continue it with: aas-ray run --resume {run_dir}" in caplog.text
