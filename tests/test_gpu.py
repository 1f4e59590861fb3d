"""The GPU paths, tested on the CPU: the torch kNN against FAISS exact, the float16 scan's
measured recall, the hybrid memory's vectorised update against SpCL's loop, resuming across
devices, model.device, which GPU each process takes, Ray's GPU checks, the FAISS report."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
import torch

from aas_ray.checks import InputError
from aas_ray.cluster import knn
from conftest import mixture

REPO = Path(__file__).resolve().parents[1]


def unit_rows(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---- kNN ----------------------------------------------------------------------------------

@pytest.mark.parametrize("separate_queries", [False, True])
def test_torch_knn_finds_the_neighbours_faiss_exact_finds(monkeypatch, separate_queries):
    x, _ = mixture(1500, 48, 60, spread=0.5, seed=3)
    q = unit_rows(np.random.default_rng(4).normal(size=(333, 48))) if separate_queries else None
    want_sims, want_idx = knn._exact(x, x if q is None else q, 12)
    # scores of a few queries at a time: chunk edges inside the query set
    monkeypatch.setattr(knn, "SCORE_BYTES", 7 * 4 * 1500)
    sims, idx = knn.torch_knn(x, q, 12, "cpu")
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    if q is None:
        assert (idx[:, 0] == np.arange(len(x))).all()


def test_float16_scan_is_kept_only_at_the_target_recall():
    x, _ = mixture(3000, 64, 100, spread=0.6, seed=5)
    exact = knn.knn_search(x, 10)
    fast = knn.gpu_flat_search(x, None, 10, "cpu", "torch", "auto", exact_up_to=1000, target_recall=0.99)
    assert fast.method == "fp16(cpu, torch)" and fast.recall >= 0.99
    assert knn.recall_at_k(fast.idx, exact.idx) >= 0.99
    np.testing.assert_allclose(fast.sims, np.einsum("nd,nkd->nk", x, x[fast.idx]), atol=1e-3)
    # groups of 15 near copies: float16 cannot order a copy's 10 nearest, so float32 it is
    base = unit_rows(np.random.default_rng(6).normal(size=(200, 64)))
    copies = unit_rows(np.repeat(base, 15, axis=0) + 3e-3 * np.random.default_rng(7).normal(size=(3000, 64)))
    strict = knn.gpu_flat_search(copies, None, 10, "cpu", "torch", "auto", exact_up_to=1000, target_recall=0.999)
    assert strict.method == "exact(cpu, torch)" and strict.recall == 1.0
    exact = knn.knn_search(copies, 10)  # copies tie exactly at times: the same scores, the same sets
    np.testing.assert_allclose(strict.sims, exact.sims, atol=1e-6)
    assert knn.recall_at_k(strict.idx, exact.idx) > 0.999
    # at or below the size, and with separate queries, the scan is exact from the start
    assert knn.gpu_flat_search(x, None, 10, "cpu", "torch", "auto", exact_up_to=5000).method == "exact(cpu, torch)"


def test_knn_on_a_machine_without_gpu_stays_on_the_cpu():
    x, _ = mixture(500, 16, 20, seed=1)
    assert knn.gpu_device() is None
    assert knn.knn_search(x, 5).method == "exact"
    with pytest.raises(ValueError, match="use_gpu=True"):
        knn.knn_search(x, 5, use_gpu=True)


# ---- hybrid memory --------------------------------------------------------------------------

def spcl_loop_update(mem, inputs, indexes):
    """SpCL's update, sample by sample (the reference the vectorised update must equal)."""
    for x, y in zip(inputs.float(), indexes.tolist()):
        f = mem.features[y]
        f.mul_(mem.momentum).add_((1.0 - mem.momentum) * x)
        f.div_(f.norm().clamp_min(1e-12))


def test_vectorised_memory_update_equals_the_sample_by_sample_loop():
    from aas_ray.data.images import PKSampler
    from aas_ray.experiment.spcl import HybridMemory

    torch.manual_seed(0)
    n, d = 120, 32
    # pseudo-labels with clusters of 1-3 images and instances: the PK sampler repeats an image
    # of a class smaller than K, and an instance K times, within one batch
    labels = np.repeat(np.arange(70), np.random.default_rng(0).integers(1, 4, 70))[:n]
    batches = np.fromiter(PKSampler(labels, 32, 4, 6, seed=1), dtype=np.int64).reshape(-1, 32)
    assert any(np.unique(b).size < b.size for b in batches)
    distinct = torch.randperm(n)[:32].numpy()
    for batch in [distinct, *batches]:
        a, b = HybridMemory(d, n, momentum=0.2), HybridMemory(d, n, momentum=0.2)
        a.features.copy_(torch.nn.functional.normalize(torch.randn(n, d), dim=1))
        b.features.copy_(a.features)
        x = torch.nn.functional.normalize(torch.randn(len(batch), d), dim=1)
        a.update(x, torch.from_numpy(batch))
        spcl_loop_update(b, x, torch.from_numpy(batch))
        torch.testing.assert_close(a.features, b.features, atol=1e-6, rtol=0)


def test_memory_label_sizes_follow_every_change_of_the_labels():
    from aas_ray.experiment.spcl import HybridMemory

    mem = HybridMemory(4, 6)
    mem.labels.copy_(torch.tensor([0, 0, 1, 1, 1, 2]))
    first = mem.label_sizes()
    assert first.tolist() == [2, 3, 1] and mem.label_sizes() is first  # read once, then kept
    mem.labels.copy_(torch.tensor([0, 4, 4, 1, 1, 4]))
    assert mem.label_sizes().tolist() == [1, 2, 0, 0, 3]
    other = HybridMemory(4, 6)
    other.load_state_dict(mem.state_dict())
    assert other.label_sizes().tolist() == [1, 2, 0, 0, 3]


# ---- resuming across devices ------------------------------------------------------------------

def fused_step(opt, param):
    """A step as GradScaler drives a fused optimiser: the scale and the inf flag on the optimiser."""
    param.grad = torch.ones_like(param)
    opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(0.0)
    opt.step()
    del opt.grad_scale, opt.found_inf


@pytest.mark.slow
def test_a_run_resumes_on_the_other_device_both_ways(tiny_cfg, tmp_path):
    from aas_ray.experiment.checkpoint import load_checkpoint, restore_optimizer, restore_scaler, save_checkpoint
    from aas_ray.experiment.run_folder import RunFolder
    from aas_ray.experiment.trainer import SpCLTrainer

    from aas_ray.models import build_model

    cfg = tiny_cfg.model_copy(deep=True)
    cfg.al.strategy = "none"
    cfg.train.epochs, cfg.train.iters, cfg.train.batch_size, cfg.train.eval_every = 1, 2, 16, 5
    run_dir = tmp_path / "run"
    assert SpCLTrainer(cfg, RunFolder(run_dir), progress=False).run().finished
    ck = load_checkpoint(run_dir / "checkpoint.pt", "cpu")
    assert ck["scaler"] == {}  # what a run without AMP writes

    # CPU -> GPU. The CUDA path builds GradScaler("cuda", enabled=True) (on this machine torch
    # disables it); an enabled scaler ("cpu": the same class and loading code) refused the state.
    for scaler in (torch.amp.GradScaler("cuda", enabled=True), torch.amp.GradScaler("cpu", enabled=True)):
        restore_scaler(scaler, ck["scaler"])
        assert scaler.get_scale() == (65536.0 if scaler.is_enabled() else 1.0)
    with pytest.raises(RuntimeError, match="state dict is empty"):
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict(ck["scaler"])
    # ... and its fused Adam (AMP scale on the device) keeps being fused
    model = build_model(cfg.model)
    model.load_state_dict(ck["model"])
    params = [p for p in model.parameters() if p.requires_grad]
    fused = torch.optim.Adam(params, lr=1e-4, fused=True)
    restore_optimizer(fused, ck["optimizer"])
    assert fused.param_groups[0]["fused"] is True
    fused_step(fused, params[0])
    plain = torch.optim.Adam(params, lr=1e-4, fused=True)
    plain.load_state_dict(ck["optimizer"])  # what loading did before: the CPU run's settings win
    with pytest.raises(AssertionError, match="grad_scale"):
        fused_step(plain, params[0])

    # GPU -> CPU: a checkpoint with an AMP scale and a fused optimiser's state resumes on the CPU
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    ck["scaler"], ck["optimizer"] = scaler.state_dict(), fused.state_dict()
    assert ck["scaler"]["scale"] == 1024.0 and ck["optimizer"]["param_groups"][0]["fused"] is True
    save_checkpoint(ck, run_dir / "checkpoint.pt")
    cfg.train.epochs = 2
    resumed = SpCLTrainer(cfg, RunFolder(run_dir), progress=False)
    assert not resumed.learner.scaler.is_enabled() and not resumed.learner.optimizer.param_groups[0]["fused"]
    assert all(s["step"].device.type == "cpu" for s in resumed.learner.optimizer.state.values())
    assert resumed.run().finished and resumed.state.epoch_done == 1


# ---- model.device -------------------------------------------------------------------------------

def test_device_auto_warns_when_gpus_are_there_but_torch_cannot_use_them(monkeypatch, tmp_path, caplog):
    from aas_ray.models import ModelError, resolve_device
    from aas_ray.models import devices

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with caplog.at_level(logging.WARNING):
        assert resolve_device("auto").type == "cpu"  # no GPU here: nothing to say
    assert not caplog.records
    # the kernel driver lists a GPU that torch cannot use: the cause is named
    (tmp_path / "0000:17:00.0").mkdir()
    monkeypatch.setattr(devices, "NVIDIA_GPU_ENTRIES", (str(tmp_path / "*"),))
    with caplog.at_level(logging.WARNING):
        assert resolve_device("auto").type == "cpu"
    [rec] = caplog.records
    assert rec.levelname == "WARNING" and "NVIDIA GPUs" in rec.message
    assert devices.cuda_problem() in rec.message and "cannot use the GPU" in rec.message
    caplog.clear()
    # a process given no GPU on purpose (Ray's GPU-less trials) computes on the CPU in silence
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with caplog.at_level(logging.WARNING):
        assert resolve_device("auto").type == "cpu"
    assert not caplog.records
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ModelError, match=f"model.device '{name}' needs CUDA") as err:
            resolve_device(name)
        assert "\n" not in str(err.value)


def test_compute_capability_against_the_architectures_torch_was_built_for():
    from aas_ray.models.devices import arch_supported

    built = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    assert arch_supported((9, 0), built) and arch_supported((8, 9), built)  # H100/H200; sm_86 runs on 8.9
    assert not arch_supported((6, 1), built) and not arch_supported((7, 0), built)  # too old
    assert arch_supported((7, 0), ["compute_70"]) and not arch_supported((6, 1), ["compute_70"])  # PTX: 7.0 on
    assert arch_supported((9, 0), ["sm_90a"]) and not arch_supported((9, 1), ["sm_90a"])


def test_the_paper_config_asks_for_a_gpu():
    from aas_ray.config import load_config

    assert load_config(REPO / "tune_configs" / "paper.yaml").model.device == "cuda"


# ---- which GPUs each process takes ---------------------------------------------------------------

def test_visible_gpus_and_round_robin_over_them(monkeypatch):
    from aas_ray.orchestration.resources import child_gpus, visible_gpus

    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8c1e,GPU-77aa"}) == ["GPU-8c1e", "GPU-77aa"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus({}) == []  # unset on this machine: torch counts no GPU
    assert child_gpus(["2", "3"], 3) == ["2", "3", "2"]
    assert child_gpus(["0"], 2) == ["0", "0"]
    assert child_gpus([], 2) == [None, None]


def child_gpu() -> str | None:
    time.sleep(1.0)  # both processes of the pool take a task
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_parallel_children_each_take_their_gpu(monkeypatch):
    from aas_ray.orchestration.run import _child_setup

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the parent's own setting, overridden per child
    ctx = get_context("spawn")
    queue = ctx.SimpleQueue()
    for gpu in ("5", "7"):
        queue.put(gpu)
    with ProcessPoolExecutor(2, mp_context=ctx, initializer=_child_setup, initargs=(1, queue)) as pool:
        seen = [f.result() for f in [pool.submit(child_gpu) for _ in range(4)]]
    assert sorted(set(seen)) == ["5", "7"]


def test_ddp_workers_are_planned_on_the_cluster_not_the_driver():
    from aas_ray.orchestration.resources import plan_ddp, worker_cpus

    head, gpu_node = {"CPU": 8.0}, {"CPU": 16.0, "GPU": 2.0}
    # a CPU-only head with a GPU worker node: GPUs, each worker half its node's CPUs
    assert plan_ddp(2, [head, gpu_node]) == (True, 8)
    assert plan_ddp(2, [head, gpu_node], use_gpu=False) == (False, 8)  # one a node, or two on the big one
    assert plan_ddp(3, [head, gpu_node], use_gpu=False) == (False, 8)
    assert plan_ddp(2, [{"CPU": 16.0}, {"CPU": 2.0}], use_gpu=False) == (False, 8)
    assert plan_ddp(1, [{"CPU": 16.0, "GPU": 1.0}]) == (True, 16)
    assert worker_cpus([{"CPU": 2.0}], 3, False) == 0
    with pytest.raises(InputError, match=r"^--workers 3 needs 3 GPUs \(one per worker\) but the Ray cluster has 2: "
                                         r"use --workers 2 or fewer$"):
        plan_ddp(3, [head, gpu_node])
    with pytest.raises(InputError, match="cannot hold them"):
        plan_ddp(3, [{"CPU": 2.0}])


# ---- Ray with GPUs it declares (no real ones) ----------------------------------------------------

RAY_GPU_SCRIPT = """
import json, os, sys, time
import ray
from aas_ray.checks import InputError
from aas_ray.orchestration.resources import study_resources, use_ray_gpus
from aas_ray.orchestration.study import StudyConfig

ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
out = {}

@ray.remote
def env_of_task():
    ids = use_ray_gpus()
    return ids, os.environ.get("CUDA_VISIBLE_DEVICES")

out["task_without_gpu"] = ray.get(env_of_task.options(num_gpus=0).remote())
out["task_with_gpu"] = ray.get(env_of_task.options(num_gpus=1).remote())
sim = StudyConfig(study="s", kind="simulate", datasets=["a", "b"], resources_per_trial={"cpu": 1, "gpu": 0.5})
out["simulate_half_gpu"] = study_resources(sim)
try:
    study_resources(StudyConfig(study="s", kind="simulate", datasets=["a", "b"], resources_per_trial={"gpu": 1}))
except InputError as err:
    out["simulate_too_many"] = str(err)
from aas_ray.orchestration.ddp import check_workers
out["plan_one"] = check_workers(1)
from aas_ray.cli import main
t = time.perf_counter()
out["rc"] = main(sys.argv[1:])
out["cli_s"] = time.perf_counter() - t
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_more_workers_than_gpus_is_a_one_line_error_before_any_run(tmp_path):
    args = ["run", "--workers", "2", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--strategies", "aas",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", f"output_dir={tmp_path / 'runs'}"]
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(RAY_GPU_SCRIPT), *args], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert out["task_without_gpu"] == [[], ""]  # Ray leaves it unset; a GPU-less task hides them itself
    assert out["task_with_gpu"] == [["0"], "0"]
    assert out["simulate_half_gpu"] == [{"cpu": 1.0}, 0.5]  # the actors hold the GPU share, trials wait
    assert out["simulate_too_many"] == ("resources_per_trial.gpu 1 for each of 2 dataset actor(s) needs 2 GPU(s) "
                                        "at once but the Ray cluster has 1")
    assert out["plan_one"] == [True, 2]
    assert out["rc"] == 2
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(
        "--workers 2 needs 2 GPUs (one per worker) but the Ray cluster has 1: use --workers 1 or fewer")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()  # nothing started


# ---- the FAISS report ----------------------------------------------------------------------------

def test_doctor_says_which_faiss_is_in_use(capsys):
    import faiss

    from aas_ray.cli import main
    from aas_ray.orchestration.doctor import faiss_distributions, report

    assert faiss_distributions() == [f"faiss-cpu {faiss.__version__}"]
    rows = dict(report().rows)
    assert rows["FAISS"] == f"{faiss.__version__} from faiss-cpu {faiss.__version__}; GPU support: no, GPUs seen: 0"
    assert rows["kNN"].startswith("CPU (FAISS") and rows["model.device auto"] == "cpu"
    assert rows["torch"].startswith(f"{torch.__version__}, built for CUDA {torch.version.cuda}")
    assert rows["CUDA"].startswith("not usable: ")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert rows["FAISS"] in out and out.rstrip().endswith("no problem found")
