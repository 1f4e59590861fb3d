"""aas-ray on a GPU, measured: run it from the repository root on a machine with an NVIDIA GPU
(sized for under 8 minutes on one H100/H200; ``--smoke`` runs the same code paths at tiny
sizes on a CPU in a few minutes).

1. the environment: GPUs, driver, torch and its CUDA, the FAISS build and the GPUs it sees
   (what ``aas-ray doctor`` prints);
2. kNN, k = 30, the paths aas-ray takes: at 100k x 512 random unit features, FAISS exact on
   all CPU threads (the reference), the CPU's automatic search (IVF with a measured recall),
   and on the GPU float32 flat search and the automatic search (float16 flat with a measured
   recall), with FAISS's GPU index when FAISS has GPU support and with torch; at 1M x 2048
   re-ID-like features (bench_scale.py's), the GPU searches, their recall against CPU exact
   search of 500 sampled queries, and one whole clustering + AAS cycle (bench_scale.py's) on
   them;
3. SpCL with AMP on the GPU, for the synthetic default (tune_configs/demo.yaml) and for
   ResNet-50 at 256 x 128: images/s per epoch, peak GPU memory, seconds per phase (feature
   extraction, clustering, AL cycle and labels, training, evaluation);
4. ``--workers 2`` (Ray Train DDP, NCCL) when two GPUs are visible.

    .venv/bin/python benchmarks/bench_gpu.py            # results: benchmarks/results/gpu-<stamp>.txt/.json
    .venv/bin/python benchmarks/bench_gpu.py --smoke    # the same on a CPU, tiny sizes, results in /tmp

A section that cannot run says why; one that fails records its error and the others go on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from saving import save_results  # noqa: E402

REPO = HERE.parent
K = 30
log = logging.getLogger("bench_gpu")


def cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


class Clock:
    """Seconds of a block, with the GPU's queued work included."""

    def __enter__(self):
        sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync()
        self.s = time.perf_counter() - self.t0
        return False


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if cuda() else None


def reset_peak() -> None:
    if cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ---- 1. environment ----------------------------------------------------------------------

def environment() -> dict:
    from aas_ray.orchestration.doctor import report

    r = report()
    return {"rows": dict(r.rows), "problems": r.problems, "cpu_threads": len(os.sched_getaffinity(0))}


# ---- 2. kNN ------------------------------------------------------------------------------

def random_unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def gpu_backends() -> list[str]:
    from aas_ray.cluster.knn import faiss_gpu_count

    return (["faiss"] if faiss_gpu_count() > 0 else []) + ["torch"]


def gpu_search(x, backend: str, method: str):
    from aas_ray.cluster.knn import gpu_device, gpu_flat_search

    dev = gpu_device()
    return gpu_flat_search(x, None, K, dev if backend == "faiss" else torch.device("cuda", dev), backend, method)


def knn_small(n: int, d: int) -> dict:
    """n x d: CPU exact (reference), CPU auto, and each GPU path, with recall over all queries."""
    import faiss

    from aas_ray.cluster.knn import knn_search, recall_at_k

    x = random_unit(n, d)
    rows = {}
    with Clock() as c:
        truth = knn_search(x, K, use_gpu=False)
    rows["cpu exact (FAISS flat)"] = {"s": c.s, "recall": 1.0, "threads": faiss.omp_get_max_threads()}
    with Clock() as c:
        nb = knn_search(x, K, use_gpu=False, method="auto")
    rows["cpu auto"] = {"s": c.s, "recall": recall_at_k(nb.idx, truth.idx), "method": nb.method}
    if not cuda():
        rows["gpu"] = {"na": "torch cannot use a GPU here"}
        return {"n": n, "d": d, "rows": rows}
    for backend in gpu_backends():
        for method in ("exact", "auto"):
            reset_peak()
            gpu_search(x[:2000], backend, method)  # warm-up: CUDA context, cuBLAS, FAISS resources
            with Clock() as c:
                nb = gpu_search(x, backend, method)
            rows[f"gpu {method} ({backend})"] = {"s": c.s, "recall": recall_at_k(nb.idx, truth.idx),
                                                  "method": nb.method, "peak_gpu_gib": peak_gib()}
    return {"n": n, "d": d, "rows": rows}


def knn_big(n: int, d: int, with_cycle: bool) -> dict:
    """n x d re-ID-like features: GPU searches with recall against CPU exact of sampled
    queries; then one whole clustering + AAS cycle (bench_scale.py) on them."""
    from bench_scale import cycle, structured_embeddings
    from memwatch import StageTimer

    from aas_ray.cluster.knn import RECALL_QUERIES, _exact, recall_at_k

    with Clock() as c:
        x, y = structured_embeddings(n, d)
    out = {"n": n, "d": d, "make_s": c.s, "rows": {}}
    probe = np.sort(np.random.default_rng(1).choice(n, size=min(RECALL_QUERIES, n), replace=False))
    with Clock() as c:
        truth = _exact(x, x[probe], K)[1]
    out["truth_s (CPU exact, sampled queries)"] = c.s
    if not cuda():
        out["rows"]["gpu"] = {"na": "torch cannot use a GPU here"}
    for backend in gpu_backends() if cuda() else []:
        reset_peak()
        with Clock() as c:
            nb = gpu_search(x, backend, "auto")
        out["rows"][f"gpu auto ({backend})"] = {"s": c.s, "recall_sampled": recall_at_k(nb.idx[probe], truth),
                                                "method": nb.method, "peak_gpu_gib": peak_gib()}
    if with_cycle:
        reset_peak()
        st = StageTimer()
        res = cycle(x, y, "auto", st, 0.999)
        out["cycle"] = {"stages": {r["stage"]: r["seconds"] for r in st.rows},
                        "total_s": sum(r["seconds"] for r in st.rows), "knn_method": res["knn_method"],
                        "regions": res["regions"], "drawn": res["drawn"], "peak_gpu_gib": peak_gib(),
                        "peak_rss_gib": max(r["peak_rss_gib"] for r in st.rows)}
    return out


# ---- 3. SpCL ------------------------------------------------------------------------------

# the timed trainer methods; clustering runs inside the labels, extraction inside evaluation
LABELS, EXTRACT, EVALUATE = "labels", "extraction", "evaluation"

def spcl(name: str, cfg, out_dir: Path) -> dict:
    """One training run with per-phase seconds (the GPU's queued work included)."""
    from aas_ray.experiment.label_stage import build_views_local
    from aas_ray.experiment.prepare import Experiment, dataset_features, make_split, prepare_data
    from aas_ray.experiment.run_folder import RunFolder
    from aas_ray.experiment.trainer import SpCLTrainer

    phases: list[dict] = []

    def timed(phase, fn, *args, **extra):
        with Clock() as c:
            got = fn(*args)
        phases.append({"phase": phase, "s": c.s, **extra})
        return got

    def clusterer(x, cfg_, need_b):
        views = timed("clustering", build_views_local, x, cfg_, need_b)
        phases[-1]["knn"] = views.knn_method
        return views

    reset_peak()
    data = timed("data (images, cache)", prepare_data, cfg, False)
    feats = timed("extraction, all images (zero-shot)", dataset_features, cfg, data, False)
    exp = Experiment(data, feats, make_split(cfg, data, feats))
    trainer = SpCLTrainer(cfg, RunFolder(out_dir / name), progress=False, experiment=exp)
    learner, stage = trainer.learner, trainer.labels
    extract, for_epoch, train_epoch, evaluate = learner.extract, stage.for_epoch, learner.train_epoch, trainer.evaluate

    def training(labels, epoch):
        m = timed("training", train_epoch, labels, epoch, epoch=epoch)
        phases[-1].update(images_per_s=m["train/images_per_s"], loss=m["train/loss"])
        return m

    learner.extract = lambda cat: timed(EXTRACT, extract, cat)
    stage.for_epoch = lambda epoch, x, state: timed(LABELS, for_epoch, epoch, x, state, epoch=epoch)
    learner.train_epoch = training
    trainer.evaluate = lambda step: timed(EVALUATE, evaluate, step, step=step)
    stage.clusterer = clusterer
    with Clock() as c:
        outcome = trainer.run()
    total = {ph: sum(p["s"] for p in phases if p["phase"] == ph) for ph in dict.fromkeys(p["phase"] for p in phases)}
    train = [p for p in phases if p["phase"] == "training"]
    return {
        "arch": cfg.model.arch, "image_size": list(cfg.model.image_size), "device": str(learner.device),
        "train_images": len(learner.train_cat), "batch": cfg.train.batch_size, "epochs": cfg.train.epochs,
        "iters": cfg.train.iters, "loader_workers": cfg.train.workers, "amp": learner.scaler.is_enabled(),
        "fused_adam": bool(learner.optimizer.param_groups[0]["fused"]),
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "run_s": c.s, "finished": outcome.finished,
        "images_per_s_after_first_epoch": float(np.mean([p["images_per_s"] for p in train[1:]])) if len(train) > 1
        else None, "peak_gpu_gib": peak_gib(),
        "final": {k: v for k, v in outcome.final.items() if k in ("mAP", "top1")},
        "phase_s": {
            "data (images, cache)": total.get("data (images, cache)", 0.0),
            "extraction, all images (zero-shot)": total.get("extraction, all images (zero-shot)", 0.0),
            "clustering (kNN, Jaccard, DBSCAN, FINCH)": total.get("clustering", 0.0),
            "AL cycle, NP3, self-paced labels": total.get(LABELS, 0.0) - total.get("clustering", 0.0),
            "training": total.get("training", 0.0),
            "extraction, evaluation images": total.get(EXTRACT, 0.0),
            "evaluation metrics": total.get(EVALUATE, 0.0) - total.get(EXTRACT, 0.0),
        },
        "phases": phases,
    }


def spcl_configs(smoke: bool, workers: int, out_dir: Path) -> dict:
    from aas_ray.cli import DEMO_CONFIG
    from aas_ray.config import load_config

    common = [f"data.cache_dir={out_dir / 'cache'}", f"output_dir={out_dir / 'runs'}", f"model.workers={workers}",
              f"train.workers={workers}", "train.amp=true"]
    if smoke:
        common += ["data.synthetic.identities=12", "data.synthetic.image_size=48", "model.image_size=[64,64]",
                   "cluster.k1=10", "cluster.k2=3", "al.budget_fraction=0.01", "train.iters=3", "train.epochs=2",
                   "train.batch_size=16", "al.every=1", "al.cycles=1"]
    resnet = ["model.arch=resnet50", "model.weights=null", "model.pretrained=false",
              f"model.image_size=[{64 if smoke else 256},{32 if smoke else 128}]", "model.batch_size=256",
              "train.batch_size=" + ("16" if smoke else "64"), "train.num_instances=4",
              "train.iters=" + ("3" if smoke else "100"), "train.epochs=" + ("2" if smoke else "3"),
              "train.eval_every=3", "al.every=1", "al.cycles=2"]
    return {"synthetic default (demo.yaml)": load_config(DEMO_CONFIG, common),
            "ResNet-50 256x128": load_config(DEMO_CONFIG, common + resnet)}


# ---- 4. DDP -------------------------------------------------------------------------------

def ddp(cfg, out_dir: Path) -> dict:
    import ray

    from aas_ray.orchestration.ddp import train_distributed

    if torch.cuda.device_count() < 2:
        return {"na": f"{torch.cuda.device_count()} GPU(s) visible; --workers 2 needs 2"}
    ray.init(num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with Clock() as c:
            res = train_distributed(cfg, out_dir / "runs-ddp" / "ddp", 2, max_failures=0)
    finally:
        ray.shutdown()
    m = res.metrics or {}
    return {"error": str(res.error) if res.error else None, "wall_s": c.s,
            "images_per_s_rank0_last_epoch": m.get("train/images_per_s"),
            "images_per_s_both_ranks_last_epoch": 2 * m["train/images_per_s"] if "train/images_per_s" in m else None,
            "mAP": m.get("eval/mAP")}


# ---- the table ----------------------------------------------------------------------------

def fmt(v, spec=".2f") -> str:
    return "n/a" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def table(res: dict) -> str:
    lines = [f"aas-ray GPU benchmark{' (--smoke: tiny sizes)' if res['smoke'] else ''}, {res['stamp_local']}"]
    env = res.get("environment", {})
    for k, v in env.get("rows", {}).items():
        lines.append(f"  {k:<20} {v}")
    lines += [f"  PROBLEM: {p}" for p in env.get("problems", [])]
    for key in ("knn_small", "knn_big"):
        sec = res.get(key, {})
        if "error" in sec:
            lines.append(f"{key}: FAILED: {sec['error']}")
            continue
        if not sec:
            continue
        lines.append(f"kNN {sec['n']} x {sec['d']}, k={K}: seconds | recall (method; peak GPU GiB)")
        for name, r in sec["rows"].items():
            if "na" in r:
                lines.append(f"  {name:<28} n/a: {r['na']}")
                continue
            rec = r.get("recall", r.get("recall_sampled"))
            sampled = " (sampled)" if "recall_sampled" in r else ""
            lines.append(f"  {name:<28} {fmt(r['s'])} s | {fmt(rec, '.5f')}{sampled} ({r.get('method', '-')}; "
                         f"{fmt(r.get('peak_gpu_gib'))})")
        if "cycle" in sec:
            cy = sec["cycle"]
            lines.append(f"  clustering + AAS cycle: {fmt(cy['total_s'], '.1f')} s (kNN {cy['knn_method']}; "
                         + ", ".join(f"{k} {v:.1f} s" for k, v in cy["stages"].items())
                         + f"; peak GPU {fmt(cy['peak_gpu_gib'])} GiB, RSS {fmt(cy['peak_rss_gib'])} GiB)")
    for name, s in res.get("spcl", {}).items():
        if "error" in s:
            lines.append(f"SpCL {name}: FAILED: {s['error']}")
            continue
        lines.append(f"SpCL {name}: {s['arch']} {s['image_size'][0]}x{s['image_size'][1]}, {s['train_images']} train "
                     f"images, batch {s['batch']}, {s['epochs']} x {s['iters']} it, {s['loader_workers']} loader "
                     f"workers, on {s['device']} (AMP {s['amp']}, fused Adam {s['fused_adam']}, cudnn.benchmark "
                     f"{s['cudnn_benchmark']}); {fmt(s['run_s'], '.1f')} s, finished {s['finished']}")
        lines.append(f"  training images/s after the first epoch: {fmt(s['images_per_s_after_first_epoch'], '.0f')}; "
                     f"peak GPU memory {fmt(s['peak_gpu_gib'])} GiB; final {s['final']}")
        knn = sorted({p["knn"] for p in s["phases"] if "knn" in p})
        for ph, t in s["phase_s"].items():
            lines.append(f"  {ph + (f' (kNN {knn})' if ph.startswith('clustering') else ''):<60} {t:8.2f} s")
    d = res.get("ddp", {})
    if "na" in d:
        lines.append(f"DDP --workers 2: n/a: {d['na']}")
    elif d.get("error"):
        lines.append(f"DDP --workers 2: FAILED: {d['error']}")
    elif d:
        lines.append(f"DDP --workers 2: {fmt(d['wall_s'], '.0f')} s, images/s (both ranks, last epoch) "
                     f"{fmt(d['images_per_s_both_ranks_last_epoch'], '.0f')}, mAP {fmt(d['mAP'], '.4f')}")
    lines.append(f"total {res['total_s']:.0f} s")
    return "\n".join(lines)


def section(res: dict, key: str, fn, *args) -> None:
    """Run one section; a failure is recorded (and printed) and the next section goes on."""
    t = time.perf_counter()
    try:
        res[key] = fn(*args)
    except Exception as err:
        log.error("%s failed: %s", key, err)
        res[key] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    log.info("%s: %.0f s", key, time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, runs on a CPU (checks the script end to end)")
    p.add_argument("--no-cycle", action="store_true", help="skip the clustering + AAS cycle at the big size")
    p.add_argument("--out", help="results folder (default: benchmarks/results; --smoke: a new /tmp folder)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("aas_ray", "ray", "faiss.loader", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="aas-bench-gpu-")) if args.smoke else \
        HERE / "results"
    work = Path(tempfile.mkdtemp(prefix="aas-bench-gpu-work-"))
    if not args.smoke and not cuda():
        log.warning("torch cannot use a GPU here: the GPU rows will read n/a (--smoke for a quick CPU check)")
    t0 = time.perf_counter()
    res: dict = {"smoke": args.smoke, "stamp_local": time.strftime("%Y-%m-%d %H:%M:%S"), "work_dir": str(work)}
    section(res, "environment", environment)
    small, big = ((5_000, 64), (20_000, 128)) if args.smoke else ((100_000, 512), (1_000_000, 2048))
    section(res, "knn_small", knn_small, *small)
    section(res, "knn_big", knn_big, *big, not args.no_cycle)
    workers = min(8, len(os.sched_getaffinity(0))) if not args.smoke else 0
    res["spcl"] = {}
    cfgs = spcl_configs(args.smoke, workers, work)
    for name, cfg in cfgs.items():
        section(res["spcl"], name, spcl, name.split(" ")[0], cfg, work)
    section(res, "ddp", ddp, cfgs["ResNet-50 256x128"], work)
    res["total_s"] = time.perf_counter() - t0
    res = json.loads(json.dumps(res, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    text = table(res)
    print(text)
    stamp = save_results("gpu", text, res, out)
    print(f"results: {out}/gpu-{stamp}.txt and .json")


if __name__ == "__main__":
    main()
