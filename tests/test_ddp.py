"""Ray Train DDP on 2 CPU workers (gloo) against the single-process trainer, and recovery
from a worker killed mid-training."""

import json
import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SETS = ["data.synthetic.identities=12", "data.synthetic.image_size=48", "model.arch=tf_efficientnet_lite0",
        "model.weights=builtin:efficientnet_lite0", "model.image_size=[64,64]", "model.workers=0",
        "cluster.k1=10", "cluster.k2=3", "al.budget_fraction=0.01", "al.cycles=2", "al.every=1",
        "train.iters=3", "train.batch_size=16", "train.eval_every=1", "al.strategy=aas",
        # A fixed radius: the automatic one is a discrete choice that turns the small feature
        # differences DDP is allowed (per-worker BatchNorm) into a different cluster count.
        "cluster.eps=0.5"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def config(tmp_path, epochs):
    from aas_ray.config import load_config

    return load_config(None, SETS + [f"data.cache_dir={tmp_path / 'cache'}", f"train.epochs={epochs}"])


def history(run_dir):
    return pd.read_csv(run_dir / "pairs.csv"), json.loads((run_dir / "state.json").read_text())


def test_ddp_matches_single_process(tmp_path, ray_local):
    from mlflow.tracking import MlflowClient

    from aas_ray.experiment.run_folder import RunFolder
    from aas_ray.experiment.trainer import SpCLTrainer
    from aas_ray.orchestration.ddp import train_distributed
    from aas_ray.orchestration.mlflow_tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = config(tmp_path, 3)
    t_single = MlflowTracker.create(uri, "ddp-test", "single")
    single = SpCLTrainer(cfg, RunFolder(tmp_path / "single"), t_single, progress=False)
    assert single.run().finished
    t_ddp = MlflowTracker.create(uri, "ddp-test", "ddp")
    res = train_distributed(cfg, tmp_path / "ddp", num_workers=2, uri=uri, run_id=t_ddp.run_id, max_failures=0)
    assert res.error is None
    p1, s1 = history(tmp_path / "single")
    p2, s2 = history(tmp_path / "ddp")
    # Cycle 1 runs on the untrained backbone's features: identical pairs and answers.
    c1, c2 = p1[p1.cycle == 1], p2[p2.cycle == 1]
    assert c1[["u", "v", "answer"]].reset_index(drop=True).equals(c2[["u", "v", "answer"]].reset_index(drop=True))
    assert s1["epoch_done"] == s2["epoch_done"] == 2
    # Ray Train keeps the last two of the three epochs' checkpoints
    kept = sorted(p.name for p in (tmp_path / "ray_train" / "train-ddp").glob("checkpoint_*") if p.is_dir())
    assert len(kept) == 2, kept
    l1 = {m["step"]: m for m in s1["evals"]}
    l2 = {m["step"]: m for m in s2["evals"]}
    assert l1[0]["mAP"] == pytest.approx(l2[0]["mAP"], abs=1e-6)  # zero-shot evaluation
    client = MlflowClient(uri)

    def series(run_id, key):
        return {m.step: m.value for m in client.get_metric_history(run_id, key)}

    # Step 1 clusters features of the untrained backbone, gathered from both workers: the same
    # views exactly (a wrong gather order would show here). After that the processes may differ:
    # each worker normalises its half batch (8 images, 2 identities) with its own BatchNorm
    # statistics, and on 40 images one DBSCAN merge more or less moves the pseudo-labels' NMI by
    # up to 0.3. So the test asks: identical step-1 views; DDP's pseudo-labels never worse by more
    # than 0.15 NMI; mAP within 0.15 at every evaluation; and the loss of the first epoch (trained
    # on the same pseudo-labels by both) within 10%. Later losses are not compared: the hybrid
    # memory's loss depends on how many clusters and un-clustered instances the epoch's views
    # have (measured: 4 clusters + 5 outliers gave 3.31, 6 + 10 gave 4.45 on equally good labels).
    nmi1, nmi2 = series(t_single.run_id, "views/nmi"), series(t_ddp.run_id, "views/nmi")
    assert sorted(nmi1) == sorted(nmi2) and len(nmi1) >= 3
    assert nmi1[1] == pytest.approx(nmi2[1], abs=1e-9)
    for step in nmi1:
        assert nmi2[step] >= nmi1[step] - 0.15, ("views/nmi", step, nmi1[step], nmi2[step])
    one, dist = series(t_single.run_id, "eval/mAP"), series(t_ddp.run_id, "eval/mAP")
    assert sorted(one) == sorted(dist) and len(one) >= 3
    for step in one:
        assert abs(one[step] - dist[step]) < 0.15, ("eval/mAP", step, one[step], dist[step])
    loss1, loss2 = series(t_single.run_id, "train/loss"), series(t_ddp.run_id, "train/loss")
    assert sorted(loss1) == sorted(loss2) and len(loss1) >= 3
    assert abs(loss1[1] - loss2[1]) <= 0.10 * max(loss1[1], loss2[1]), (loss1[1], loss2[1])


def test_human_oracle_under_ddp_pauses_every_worker_and_resumes(tmp_path, ray_local):
    from aas_ray.experiment.checkpoint import RunState
    from aas_ray.orchestration.ddp import train_distributed

    cfg = config(tmp_path, 2)
    cfg.al.oracle = "human"
    run_dir = tmp_path / "ddp-human"
    res = train_distributed(cfg, run_dir, num_workers=2, max_failures=0)
    assert res.error is None
    state = RunState.load(run_dir / "state.json")
    assert state.pending["cycle"] == 1 and state.epoch_done == -1
    pending = pd.read_csv(run_dir / "pending-cycle-1.csv", keep_default_na=False)
    split = pd.read_csv(run_dir / "split.csv")
    ids = split[split["role"] == "train"]["identity"].to_numpy()
    pending["answer"] = np.where(ids[pending["u"]] == ids[pending["v"]], "same", "different")
    pending.to_csv(run_dir / "pending-cycle-1.csv", index=False)
    res = train_distributed(cfg, run_dir, num_workers=2, max_failures=0)  # resumes: cycle 1 answered, pauses at 2
    assert res.error is None
    state = RunState.load(run_dir / "state.json")
    assert state.pending["cycle"] == 2 and state.epoch_done == 0
    lines = [json.loads(x) for x in (run_dir / "annotations.jsonl").read_text().splitlines()]
    assert len(lines) == len(pending) and {x["source"] for x in lines} == {"human"}
    assert [c["cycle"] for c in state.cycles] == [1]


def test_killed_worker_resumes_from_checkpoint(tmp_path, ray_local):
    import psutil

    from aas_ray.orchestration.ddp import train_distributed

    cfg = config(tmp_path, 4)
    run_dir = tmp_path / "ddp"
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("res", train_distributed(cfg, run_dir, 2, max_failures=2)))
    t.start()
    deadline = time.time() + 600
    killed = False
    while time.time() < deadline and not killed:
        state = run_dir / "state.json"
        if state.exists() and json.loads(state.read_text())["epoch_done"] >= 1:
            # Ray names its worker processes after the actor they host.
            workers = [p.pid for p in psutil.process_iter(["cmdline"])
                       if any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))]
            if workers:
                os.kill(max(workers), signal.SIGKILL)
                killed = True
        time.sleep(0.2)
    assert killed, "no worker to kill"
    t.join(900)
    res = out["res"]
    assert res.error is None
    pairs, state = history(run_dir)
    assert state["epoch_done"] == 3 and state["finished"]
    assert not pairs[["u", "v"]].duplicated().any()
    lines = [json.loads(x) for x in (run_dir / "annotations.jsonl").read_text().splitlines()]
    keys = [(a["u"], a["v"]) for a in lines]
    assert len(keys) == len(set(keys)) == len(pairs)
    assert {c["cycle"] for c in state["cycles"]} == {1, 2}
