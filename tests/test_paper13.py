"""The paper's benchmark study, tune_configs/study_paper13.yaml, as written, on a small fake
WildlifeReID-10k folder: every trial config builds, a trial's resources fit a GPU cluster
(and not one whose nodes are too small), and the whole study — 13 datasets x 4 strategies —
runs to its end on a Ray instance that declares the GPUs the study asks for."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aas_ray.data.sources import PAPER_DATASETS

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "tune_configs" / "study_paper13.yaml"
STRATEGIES = ["none", "random", "aas", "supervised"]


@pytest.fixture(scope="module")
def wr10k(tmp_path_factory) -> Path:
    """WildlifeReID-10k's layout: ``metadata.csv`` (image_id, identity, path, dataset, species,
    split) over ``images/<dataset>/...``; per dataset 6 individuals of 4 photos (3 train, 1
    test), each individual a colour of its own with noise."""
    root = tmp_path_factory.mktemp("WildlifeReID-10k")
    rng = np.random.default_rng(0)
    rows = []
    for d, dataset in enumerate(PAPER_DATASETS):
        for i in range(6):
            colour = rng.integers(0, 256, 3)
            for k in range(4):
                path = f"images/{dataset}/{dataset}_{i}/{k}.jpg"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                pixels = np.clip(colour + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / path)
                rows.append({"image_id": f"{dataset}-{i}-{k}", "identity": f"{dataset}_{i}", "path": path,
                             "dataset": dataset, "species": "animal", "split": "test" if k == 3 else "train"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_every_trial_config_builds_and_a_trial_fits_a_gpu_node(wr10k):
    from aas_ray.checks import InputError
    from aas_ray.orchestration.resources import study_resources
    from aas_ray.orchestration.study import load_study, trial_config

    study, base = load_study(STUDY, [f"overrides.data.root={wr10k}"])
    assert study.datasets == list(PAPER_DATASETS) and study.kind == "train" and study.metric == "mAP"
    assert next(iter(study.search["al.strategy"].values())) == STRATEGIES
    configs = [trial_config(base, {"data.name": ds, "al.strategy": s}, study) for ds in study.datasets
               for s in STRATEGIES]
    assert len(configs) == 52 and len({(c.data.name, c.al.strategy) for c in configs}) == 52
    for cfg in configs:  # the paper's setting (docs/method.md §10-12), unchanged by the dataset or strategy
        assert (cfg.model.arch, cfg.model.device, cfg.train.epochs, cfg.train.iters) == ("resnet50", "cuda", 50, 400)
        assert (cfg.al.epsilon, cfg.al.k_max, cfg.al.s_min, cfg.al.cycles, cfg.al.every) == (0.6, 5, 0.3, 5, 10)
        assert cfg.data.root == str(wr10k)
    # A trial asks for 8 CPUs and a GPU on one node, with 8 loader workers for its 8 CPUs.
    assert configs[0].train.workers <= study.resources_per_trial.cpu
    assert configs[0].model.workers <= study.resources_per_trial.cpu
    gpu_node = {"CPU": 32.0, "GPU": 4.0}
    assert study_resources(study, [{"CPU": 4.0}, gpu_node]) == ({"cpu": 8.0, "gpu": 1.0}, 0.0)
    at_once = study.max_concurrent_trials * study.resources_per_trial.gpu
    assert at_once == gpu_node["GPU"]  # its 4 trials at a time fill one 4-GPU node
    with pytest.raises(InputError, match="no node of the Ray cluster has them"):
        study_resources(study, [{"CPU": 4.0, "GPU": 1.0}] * 8)  # 8 GPUs, but 4 CPUs beside each


SCRIPT = """
import sys
import ray
from aas_ray.cli import main

# The GPU cluster the study asks for, declared: Ray hands the trials GPU ids; torch finds no
# GPU behind them and model.device auto trains on the CPU.
ray.init(address="local", num_cpus=32, num_gpus=4, include_dashboard=False, log_to_driver=False)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_the_thirteen_dataset_study_runs_to_its_end_on_fake_data(tmp_path, wr10k):
    small = {  # a schedule for 24 photos a dataset; the offline backbone; the device picked by torch
        "model.arch": "tf_efficientnet_lite0", "model.pretrained": False, "model.weights": "builtin:efficientnet_lite0",
        "model.device": "auto", "model.image_size": [32, 32], "model.batch_size": 32, "model.workers": 0,
        "train.workers": 0, "train.epochs": 1, "train.iters": 1, "train.batch_size": 8, "train.eval_every": 1,
        "train.amp": False, "al.every": 1, "al.cycles": 1, "al.budget_fraction": 0.05, "cluster.k1": 5,
        "cluster.k2": 2, "cluster.min_samples": 2, "eval.gallery_size": 2,
        "tracking.log_model": False,  # the MLflow model: tests/test_after_run.py
        "data.root": str(wr10k), "data.cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs"),
    }
    args = ["tune", str(STUDY), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    for key, value in small.items():
        args += ["--set", f"overrides.{key}={json.dumps(value)}"]
    # The declared 32 CPUs are this machine's few cores: one thread per trial (Ray would give
    # each trial OMP_NUM_THREADS=8, four trials at a time).
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "study paper13: 52 trials completed, 0 stopped early, 0 failed, 0 unfinished" in proc.stderr
    summary = pd.read_csv(next((tmp_path / "runs" / "tune").glob("paper13-*/summary/summary.csv")))
    assert len(summary) == 52 and set(summary["status"]) == {"finished"}
    assert set(summary["data.name"]) == set(PAPER_DATASETS) and set(summary["al.strategy"]) == set(STRATEGIES)
    assert summary["mAP"].between(0, 1).all()
    # gap closed from each dataset's own bounds: none at 0, supervised at 1 where they differ
    bounded = summary[summary["al.strategy"] == "supervised"]["gap_closed"].dropna()
    assert (bounded == 1.0).all()
    report = next((tmp_path / "runs" / "tune").glob("paper13-*/report/table1.csv"))
    assert set(pd.read_csv(report)["dataset"]) >= set(PAPER_DATASETS)
