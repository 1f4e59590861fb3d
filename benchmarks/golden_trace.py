"""The golden trace: everything a short simulation and a short training run decide, in one JSON,
so that a refactor can be shown to change no behaviour.

    python benchmarks/golden_trace.py --out benchmarks/results/golden/before.json
    python benchmarks/golden_trace.py --compare before.json after.json

Traced: a ``simulate`` of every strategy on Gaussian-mixture features (every pair asked
with its pool and probability, every answer, each cycle's row), and a 3-epoch ``aas-ray run``
of none / random / aas on a tiny synthetic dataset with the offline backbone (every pair,
answer and journal record, each epoch's training labels, the final individuals, every
MLflow metric as (key, step, value), the cycle and evaluation tables). Left out, because they
differ from run to run by nature: timings (``*/images_per_s``), run ids, paths and dates.
One thread (set before torch loads) makes the floating point reproducible.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

STRATEGIES = ("none", "random", "aas")
# The simulation is cheap: every strategy that asks an oracle, NIS's count estimate included.
SIMULATED = (*STRATEGIES, "nis", "farthest-nearest", "uncertainty", "nearest", "lbas", "gbas")
# Metrics that measure the machine, not the method.
UNTRACED = ("train/images_per_s",)
TINY = [
    "data.synthetic.identities=10", "data.synthetic.families=4", "data.synthetic.min_images=4",
    "data.synthetic.max_images=8", "data.synthetic.image_size=48",
    "model.arch=tf_efficientnet_lite0", "model.weights=builtin:efficientnet_lite0", "model.image_size=[64,64]",
    "model.workers=0", "model.batch_size=32", "cluster.k1=10", "cluster.k2=3", "al.budget_fraction=0.01",
    "al.cycles=2", "al.every=1", "train.iters=2", "train.batch_size=16", "train.eval_every=1", "train.workers=0",
    "train.epochs=3", "tracking.log_model=false",
]


def _plain(v):
    """JSON-safe value: floats as their repr (exact), NaN and inf named."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return repr(v) if not math.isfinite(v) else v
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _table(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return _plain(pd.read_csv(path, keep_default_na=False).to_dict(orient="records"))


def _journal(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def trace_simulate(tmp: Path) -> dict:
    from aas_ray.config import load_config
    from aas_ray.experiment.simulate import simulate

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 32))
    truth = rng.integers(0, 30, 300)
    x = centres[truth] + 0.6 * rng.normal(size=(300, 32))
    cfg = load_config(None, ["cluster.k1=10", "cluster.k2=3", "al.budget_pairs=40", "al.cycles=3"])
    out = tmp / "simulate"
    table = simulate(x.astype(np.float32), truth, cfg, SIMULATED, out_dir=out)
    return {"table": _plain(table.to_dict(orient="records")),
            **{s: {"pairs": _table(out / f"pairs-{s}.csv"), "journal": _journal(out / f"annotations-{s}.jsonl")}
               for s in SIMULATED if s != "none"}}


def trace_run(tmp: Path) -> dict:
    import torch
    from mlflow.tracking import MlflowClient

    from aas_ray.cli import main
    from aas_ray.experiment.learner import Learner

    torch.set_num_threads(1)
    labels: list[np.ndarray] = []
    train_epoch = Learner.train_epoch

    def recording(self, epoch_labels, epoch):
        labels.append(np.asarray(epoch_labels).copy())
        return train_epoch(self, epoch_labels, epoch)

    Learner.train_epoch = recording
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    args = ["run", "--tracking-uri", uri, "--strategies", ",".join(STRATEGIES)]
    for s in TINY + [f"data.cache_dir={tmp / 'cache'}", f"output_dir={tmp / 'runs'}"]:
        args += ["--set", s]
    try:
        if main(args) != 0:
            raise SystemExit("aas-ray run failed")
    finally:
        Learner.train_epoch = train_epoch
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("aas-ray")
    runs = client.search_runs([exp.experiment_id])
    out = {}
    per_run = len(labels) // len(STRATEGIES)
    for i, s in enumerate(STRATEGIES):  # the runs train one after the other, in this order
        run = next(r for r in runs if r.data.params.get("al.strategy") == s)
        d = tmp / "runs" / run.info.run_id
        metrics = sorted((m.key, m.step, _plain(m.value)) for key in run.data.metrics if key not in UNTRACED
                         for m in client.get_metric_history(run.info.run_id, key))
        out[s] = {
            "status": run.info.status,
            "params": {k: v for k, v in run.data.params.items() if k not in ("output_dir", "data.cache_dir")},
            "metrics": [list(m) for m in metrics],
            "labels": [{"sha256": hashlib.sha256(a.astype(np.int64).tobytes()).hexdigest(), "list": a.tolist()}
                       for a in labels[i * per_run:(i + 1) * per_run]],
            "pairs": _table(d / "pairs.csv"), "journal": _journal(d / "annotations.jsonl"),
            "cycles": _table(d / "cycles.csv"), "evals": _table(d / "evals.csv"),
            "individuals": [{k: v for k, v in row.items() if k != "path"} for row in _table(d / "individuals.csv")],
        }
    return out


def compare(a, b, where: str = "") -> list[str]:
    """Every difference between two traces, one line each, as path: a != b."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}/{k}: only in {'the first' if k in a else 'the second'}")
            else:
                out += compare(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = [f"{where}: {len(a)} != {len(b)} entries"] if len(a) != len(b) else []
        for i, (x, y) in enumerate(zip(a, b)):
            out += compare(x, y, f"{where}[{i}]")
        return out
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="where to write the trace (JSON)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="print the differences of two traces")
    args = p.parse_args(argv)
    if args.compare:
        a, b = (json.loads(f.read_text()) for f in args.compare)
        diffs = compare(a, b)
        for line in diffs[:200]:
            print(line)
        print(f"{len(diffs)} difference(s) between {args.compare[0]} and {args.compare[1]}")
        return 1 if diffs else 0
    if args.out is None:
        p.error("give --out (to trace) or --compare A B")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trace = {"simulate": trace_simulate(Path(tmp)), "run": trace_run(Path(tmp))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(trace, indent=1, sort_keys=True))
    print(f"trace written to {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
