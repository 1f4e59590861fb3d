"""Run folders and inputs that must not hurt: a checkpoint that would run code, a journal that
lost answers, a second writer, bad values found before any work (docs/method.md §8, §10)."""

import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from aas_ray.checks import InputError
from aas_ray.cli import main
from aas_ray.experiment.checkpoint import RunState, load_checkpoint, save_checkpoint
from aas_ray.orchestration.runlock import RunLock, RunLocked


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
    for bad in ("f.txt", "obj.npy"):
        assert main(["simulate", "--features", str(tmp_path / bad), "--labels", str(tmp_path / "y.npy"),
                     "--out", str(tmp_path / "o")]) == 2
        assert f"{tmp_path / bad} is not a numeric .npy array" in caplog.text
