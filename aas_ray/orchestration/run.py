"""``aas-ray run``: train each requested strategy, tracked in MLflow, resumable, and read
against the bounds (plain SpCL and the supervised skyline on the same schedule).

Order of work, so that bad input costs nothing: every strategy's config is validated, the
tracking store checked and the dataset prepared (images checked, features, split) before
any MLflow run or run folder exists. A run folder then gets its ``state.json`` before its
trainer starts, so a run killed at any point can be resumed, and one process at a time
may write to it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.checks import InputError
from aas_ray.config import Config, build_config, dump_config, load_config
from aas_ray.experiment.checkpoint import RunState
from aas_ray.experiment.individuals import INDIVIDUALS, OPEN_SET, read_run_outputs
from aas_ray.experiment.prepare import Experiment, prepare_experiment
from aas_ray.experiment.pending import awaiting_message
from aas_ray.experiment.trainer import RunOutcome, SpCLTrainer
from aas_ray.orchestration.compare import bounds_in_store, config_key, gap_closed
from aas_ray.orchestration.embedder import log_embedder
from aas_ray.orchestration.plots import map_vs_budget
from aas_ray.orchestration.runlock import RunLock
from aas_ray.orchestration.tracking import MlflowTracker, check_tracking_uri, resolve_tracking_uri

log = logging.getLogger(__name__)

ARTIFACTS = ("config.yaml", "split.csv", "pairs.csv", "annotations.jsonl", "cycles.csv", "evals.csv",
             "map_vs_budget.png", "weights.safetensors", INDIVIDUALS, OPEN_SET)
TABLE = ("mAP", "mINP", "top1", "top5", "BAKS", "auc_roc", "utilised_budget", "pairs")


def find_run_dir(ref: str, output_dir: str, what: str = "resumable run") -> Path:
    """A run folder given its path or its MLflow run id (the folder name)."""
    for p in (Path(ref), Path(output_dir) / ref):
        if (p / "state.json").is_file():
            return p
    where = Path(ref) if Path(ref).parent != Path(".") else Path(output_dir) / ref
    raise InputError(f"no {what} {ref!r}: {where} holds no state.json (give a run folder or an MLflow "
                     f"run id under {output_dir}/)")


def strategy_config(cfg: Config, strategy: str) -> Config:
    """``cfg`` with another strategy, validated like any config."""
    raw = cfg.model_dump(mode="json")
    raw["al"]["strategy"] = strategy
    return build_config(raw, source=f"--strategies {strategy}")


def start_run(cfg: Config, uri: str, parent_run_id: str | None = None, extra_tags: dict | None = None,
              ) -> tuple[MlflowTracker, Path]:
    """A new MLflow run and its folder, with a state.json from the first moment."""
    strategy = cfg.al.strategy
    name = cfg.tracking.run_name or f"{cfg.data.name}-{strategy}-seed{cfg.seed}"
    tags = {"dataset": cfg.data.name, "strategy": strategy, "seed": cfg.seed, "config_key": config_key(cfg),
            **(extra_tags or {})}
    tracker = MlflowTracker.create(uri, cfg.tracking.experiment, name, tags, parent_run_id)
    tracker.log_params(cfg.flat())
    run_dir = Path(cfg.output_dir) / tracker.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    RunState(tracking_run_id=tracker.run_id).save(run_dir / "state.json")
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    return tracker, run_dir


def train_until_pause(cfg: Config, run_dir: Path, tracker, uri: str, progress: bool, workers: int,
                      experiment: Experiment | None) -> RunOutcome:
    """Train from the run folder's state to the end or to the next cycle waiting for a person."""
    if workers > 0:
        from aas_ray.orchestration.ddp import train_distributed

        result = train_distributed(cfg, run_dir, workers, uri, tracker.run_id)
        if result.error is not None:
            raise result.error
        state = RunState.load(run_dir / "state.json")
        pending = run_dir / f"pending-cycle-{state.pending['cycle']}.csv" if state.pending else None
        return RunOutcome(state.finished, state.evals[-1] if state.evals else {}, pending)
    return SpCLTrainer(cfg, run_dir, tracker, progress, experiment).run()


def train_one(cfg: Config, uri: str, run_dir: Path | None = None, progress: bool = True,
              parent_run_id: str | None = None, extra_tags: dict | None = None, workers: int = 0,
              experiment: Experiment | None = None, serve: dict | None = None) -> tuple[str, RunOutcome]:
    """One strategy, start to finish (or resume, or up to a pause for a person's answers).
    With ``serve`` ({"host", "port"}), a pause serves the annotation page and training goes
    on by itself once the cycle's pairs are answered."""
    if run_dir is None:
        tracker, run_dir = start_run(cfg, uri, parent_run_id, extra_tags)
    else:
        tracker = MlflowTracker(uri, RunState.load(run_dir / "state.json").tracking_run_id)
    page = None
    with RunLock(run_dir):
        tracker.reopen()
        try:
            outcome = train_until_pause(cfg, run_dir, tracker, uri, progress, workers, experiment)
            while not outcome.finished and serve is not None:
                from aas_ray.orchestration.annotate.page import Page

                page = page or Page(run_dir, **serve)
                tracker.set_tag("waiting_for", page.url)
                page.wait_until_answered()
                tracker.set_tag("waiting_for", "")
                outcome = train_until_pause(cfg, run_dir, tracker, uri, progress, workers, experiment)
        except InputError:
            # Bad input found on the way (answers not filled in, a damaged file): the run is
            # not broken, it still waits for that input.
            state = RunState.load(run_dir / "state.json")
            tracker.finish("SCHEDULED" if state.pending else "FAILED")
            raise
        except BaseException:
            tracker.finish("FAILED")
            raise
        finally:
            if page is not None:
                page.stop()
        if not outcome.finished:
            log.warning("%s", awaiting_message(outcome.pending_file, run_dir))
            tracker.set_tag("waiting_for", str(outcome.pending_file))
            tracker.finish("SCHEDULED")
            return tracker.run_id, outcome
        tracker.set_tag("waiting_for", "")
        evals = pd.DataFrame(RunState.load(run_dir / "state.json").evals)
        map_vs_budget({cfg.al.strategy: evals}, run_dir / "map_vs_budget.png", f"{cfg.data.name} / {cfg.al.strategy}")
        for name in ARTIFACTS:
            tracker.log_artifact(run_dir / name)
        tracker.log_metrics_once(outputs_metrics(run_dir), step=int(evals["step"].max()))
        if cfg.tracking.log_model:
            log_embedder(uri, tracker.run_id, cfg, run_dir)
        tracker.finish()
    return tracker.run_id, outcome


def outputs_metrics(run_dir: Path) -> dict:
    """The run's individuals and its new-individual threshold as metrics (docs/method.md §15)."""
    out = read_run_outputs(run_dir, with_embeddings=False)
    sizes = out.individuals.groupby("individual").size()
    o = out.open_set
    return {"eval/new_individual_threshold": o["threshold"], "eval/new_individual_known_accepted": o["known_accepted"],
            "eval/new_individual_unknown_flagged": o["unknown_flagged"], "labels/individuals": int((sizes > 1).sum()),
            "labels/singletons": int((sizes == 1).sum())}


def log_gap_closed(uri: str, cfg: Config, run_id: str, final: dict, known: dict[str, float]) -> float:
    """The run's share of the none -> supervised gap, from bounds run now or found in the store."""
    tracker = MlflowTracker(uri, run_id)
    bounds = dict(known)
    if len(bounds) < 2:
        exp = tracker.client.get_experiment_by_name(cfg.tracking.experiment)
        bounds = {**bounds_in_store(tracker.client, exp.experiment_id, config_key(cfg)), **bounds}
    value = gap_closed(final.get("mAP", float("nan")), bounds.get("none"), bounds.get("supervised"))
    if value == value:  # not NaN
        step = max((e["step"] for e in RunState.load(Path(cfg.output_dir) / run_id / "state.json").evals), default=0)
        tracker.log_metrics({"eval/gap_closed": value}, step=step)
    return value


def mark_interrupted(output_dir: Path, uri: str) -> None:
    """Runs killed before they finished (no process holds them): KILLED in MLflow, with the way back."""
    root = Path(output_dir)
    if not root.is_dir():
        return
    for state_file in root.glob("*/state.json"):
        run_dir = state_file.parent
        try:
            state = RunState.load(state_file)
        except InputError:
            continue
        if state.finished or state.pending or not state.tracking_run_id or RunLock.is_held(run_dir):
            continue
        tracker = MlflowTracker(uri, state.tracking_run_id)
        try:
            status = tracker.client.get_run(state.tracking_run_id).info.status
        except Exception:  # a run of another tracking store: not ours to mark
            continue
        if status == "RUNNING":
            tracker.finish("KILLED")
            log.warning("run %s was interrupted after epoch %d; continue it with: aas-ray run --resume %s",
                        run_dir.name, state.epoch_done, run_dir)


def serve_options(args) -> dict | None:
    return {"host": args.host, "port": args.port} if getattr(args, "serve", False) else None


def check_parallel(args, cfg: Config, n_strategies: int) -> int:
    n = args.parallel
    if n < 1:
        raise InputError(f"--parallel must be at least 1, got {n}")
    if n > 1 and (args.workers or args.serve or cfg.al.oracle == "human"):
        raise InputError("--parallel trains strategies side by side with the simulated oracle in this machine's "
                         "processes; it cannot be combined with --workers, --serve or al.oracle: human")
    return min(n, n_strategies)


def _child_setup(threads: int) -> None:
    # Each process gets its share of the cores: two strategies at one thread each go faster
    # than one after the other at two threads, and neither steals the other's cores.
    import faiss
    import numba
    import torch

    logging.basicConfig(level=logging.INFO)  # its format is set per strategy in _train_prepared
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def _train_prepared(cfg: Config, uri: str, run_dir: str) -> tuple[str, RunOutcome]:
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s [{cfg.al.strategy}] %(name)s: %(message)s", "%H:%M:%S")
    for handler in logging.getLogger().handlers:  # two strategies write to one terminal
        handler.setFormatter(fmt)
    return train_one(cfg, uri, Path(run_dir), progress=False)


def train_side_by_side(configs: list[Config], uri: str, parallel: int) -> list[tuple[str, RunOutcome]]:
    """The strategies in ``parallel`` processes at a time; results in the order of ``configs``.
    The MLflow runs and folders are made here first, so every run exists (and can be resumed
    with ``--resume``) even before its process starts."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    run_dirs = [str(start_run(one, uri)[1]) for one in configs]
    threads = max(1, (os.cpu_count() or 1) // parallel)
    log.info("training %d strategies, %d at a time, %d thread(s) each", len(configs), parallel, threads)
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_child_setup, initargs=(threads,)) as pool:
        futures = [pool.submit(_train_prepared, one, uri, d) for one, d in zip(configs, run_dirs)]
        return [f.result() for f in futures]


def run_cli(args, cfg: Config, strategies: list[str]) -> int:
    uri = resolve_tracking_uri(args.tracking_uri, cfg.tracking.tracking_uri)
    check_tracking_uri(uri)
    if args.resume:
        run_dir = find_run_dir(args.resume, cfg.output_dir)
        cfg = load_config(run_dir / "config.yaml")
        run_id, outcome = train_one(cfg, uri, run_dir, workers=args.workers, serve=serve_options(args))
        if outcome.finished:
            log.info("run %s finished: %s", run_id,
                     {k: round(v, 4) for k, v in outcome.final.items() if isinstance(v, float)})
        return 0
    configs = [strategy_config(cfg, s) for s in strategies]  # every value checked before any work
    parallel = check_parallel(args, cfg, len(configs))
    mark_interrupted(Path(cfg.output_dir), uri)
    experiment = prepare_experiment(cfg) if args.workers == 0 and parallel == 1 else None
    if experiment is None:
        prepare_experiment(cfg)  # fail fast on the data before Ray starts; workers reuse the feature cache
    if parallel > 1:
        results = train_side_by_side(configs, uri, parallel)
    else:
        results = [train_one(one, uri, workers=args.workers, experiment=experiment, serve=serve_options(args))
                   for one in configs]
    rows = []
    for one, (run_id, outcome) in zip(configs, results):
        rows.append({"strategy": one.al.strategy, "run_id": run_id, "finished": outcome.finished,
                     **({k: outcome.final.get(k) for k in TABLE} if outcome.finished else {})})
    known = {r["strategy"]: r["mAP"] for r in rows if r["strategy"] in ("none", "supervised") and r["finished"]}
    for r in rows:
        r["gap_closed"] = (log_gap_closed(uri, strategy_config(cfg, r["strategy"]), r["run_id"], r, known)
                           if r["finished"] else float("nan"))
    table = pd.DataFrame(rows)
    evals = {r["strategy"]: pd.read_csv(f) for r in rows if (f := Path(cfg.output_dir) / r["run_id"] / "evals.csv").is_file()}
    if len(evals) > 1:
        path = map_vs_budget(evals, Path(cfg.output_dir) / f"compare-{cfg.data.name}.png", cfg.data.name)
        log.info("mAP against utilised budget, all strategies: %s", path)
    with pd.option_context("display.width", 200):
        print(f"{cfg.data.name}, seed {cfg.seed}: gap_closed = (mAP - mAP_none) / (mAP_supervised - mAP_none)")
        table["status"] = np.where(table["finished"], "finished", "waits for answers")
        print(table.drop(columns=["finished"]).to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    log.info("results are in MLflow (%s), experiment %r: run `mlflow ui --backend-store-uri %s` and open "
             "http://127.0.0.1:5000/#/experiments/%s/runs?workflowType=machine_learning", uri, cfg.tracking.experiment,
             uri, MlflowTracker(uri, rows[0]["run_id"]).client.get_run(rows[0]["run_id"]).info.experiment_id)
    return 0
