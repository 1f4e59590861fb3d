"""``aas-ray run``: train each requested strategy, tracked in MLflow, resumable."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from aas_ray.config import Config, load_config
from aas_ray.experiment.trainer import AwaitingAnnotations, SpCLTrainer
from aas_ray.orchestration.plots import map_vs_budget
from aas_ray.orchestration.tracking import MlflowTracker, check_tracking_uri, resolve_tracking_uri

log = logging.getLogger(__name__)

ARTIFACTS = ("config.yaml", "split.csv", "pairs.csv", "annotations.jsonl", "cycles.csv", "evals.csv",
             "map_vs_budget.png", "weights.safetensors")


def find_run_dir(ref: str, output_dir: str) -> Path:
    """A run folder given its path or its MLflow run id (the folder name)."""
    p = Path(ref)
    if (p / "state.json").is_file():
        return p
    q = Path(output_dir) / ref
    if (q / "state.json").is_file():
        return q
    raise FileNotFoundError(f"no resumable run {ref!r}: neither {p} nor {q} holds a state.json")


def train_one(cfg: Config, uri: str, run_dir: Path | None = None, progress: bool = True,
              parent_run_id: str | None = None, extra_tags: dict | None = None, workers: int = 0) -> tuple[str, dict]:
    """One strategy, start to finish (or resume). Returns (MLflow run id, final eval row)."""
    strategy = cfg.al.strategies[0]
    if run_dir is None:
        name = cfg.tracking.run_name or f"{cfg.data.name}-{strategy}-seed{cfg.seed}"
        tags = {"dataset": cfg.data.name, "strategy": strategy, "seed": cfg.seed, **(extra_tags or {})}
        tracker = MlflowTracker.create(uri, cfg.tracking.experiment, name, tags, parent_run_id)
        tracker.log_params(cfg.flat())
        run_dir = Path(cfg.output_dir) / tracker.run_id
    else:
        from aas_ray.experiment.trainer import RunState

        state = RunState.load(run_dir / "state.json")
        tracker = MlflowTracker(uri, state.tracking_run_id)
        tracker.reopen()
    trainer = SpCLTrainer(cfg, run_dir, tracker, progress)
    trainer.state.tracking_run_id = tracker.run_id
    try:
        if workers > 0:
            from aas_ray.experiment.trainer import RunState
            from aas_ray.orchestration.ddp import train_distributed

            result = train_distributed(cfg, run_dir, workers, uri, tracker.run_id)
            if result.error is not None:
                raise result.error
            trainer.state = RunState.load(run_dir / "state.json")
            final = trainer.state.evals[-1] if trainer.state.evals else {}
        else:
            final = trainer.run()
    except AwaitingAnnotations as wait:
        log.warning("%s", wait)
        log.warning("resume with: aas-ray run --resume %s", run_dir)
        return tracker.run_id, {}
    except BaseException:
        tracker.finish("FAILED")
        raise
    map_vs_budget({strategy: pd.DataFrame(trainer.state.evals)}, run_dir / "map_vs_budget.png",
                  f"{cfg.data.name} / {strategy}")
    for name in ARTIFACTS:
        tracker.log_artifact(run_dir / name)
    tracker.finish()
    return tracker.run_id, final


def run_cli(args, cfg: Config) -> int:
    uri = resolve_tracking_uri(args.tracking_uri, cfg.tracking.tracking_uri)
    check_tracking_uri(uri)
    if args.resume:
        run_dir = find_run_dir(args.resume, cfg.output_dir)
        cfg = load_config(run_dir / "config.yaml")
        run_id, final = train_one(cfg, uri, run_dir, workers=args.workers)
        log.info("run %s finished: %s", run_id, {k: round(v, 4) for k, v in final.items() if isinstance(v, float)})
        return 0
    strategies = args.strategies.split(",") if args.strategies else cfg.al.strategies
    rows = []
    for s in strategies:
        one = cfg.model_copy(deep=True)
        one.al.strategy = s.strip()
        run_id, final = train_one(one, uri, workers=args.workers)
        rows.append({"strategy": s, "run_id": run_id, **{k: final.get(k) for k in
                     ("mAP", "mINP", "top1", "top5", "BAKS", "auc_roc", "utilised_budget", "pairs")}})
    table = pd.DataFrame(rows)
    evals = {}
    for r in rows:
        f = Path(cfg.output_dir) / r["run_id"] / "evals.csv"
        if f.is_file():
            evals[r["strategy"]] = pd.read_csv(f)
    if len(evals) > 1:
        path = map_vs_budget(evals, Path(cfg.output_dir) / f"compare-{cfg.data.name}.png", cfg.data.name)
        log.info("mAP against utilised budget, all strategies: %s", path)
    with pd.option_context("display.width", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    log.info("results are in MLflow (%s), experiment %r: run `mlflow ui --backend-store-uri %s`", uri,
             cfg.tracking.experiment, uri)
    return 0
