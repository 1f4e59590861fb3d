"""``aas-ray run``: train each requested strategy, tracked in MLflow, resumable, and read
against the bounds (plain SpCL and the supervised skyline on the same schedule).

Order of work, so that bad input costs nothing: every strategy's config is validated, the
tracking store checked and the dataset prepared (images checked, features, split) before
any MLflow run or run folder exists. A run folder exists, with its config and state, before
its MLflow run does (see :func:`start_run`), so a run killed at any point can be resumed,
and one process at a time may write to it. A folder resumed must be its MLflow run's own:
a copy of another run's folder is refused, so that it never changes that run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.checks import InputError
from aas_ray.config import Config, ConfigError, build_config, dump_config, load_config
from aas_ray.experiment.checkpoint import NoSpaceLeft, RunState
from aas_ray.experiment.individuals import read_run_outputs
from aas_ray.experiment.prepare import Experiment, prepare_data, prepare_experiment
from aas_ray.experiment.pending import awaiting_message
from aas_ray.experiment.run_folder import ARTIFACTS, CONFIG, EVALS, MAP_VS_BUDGET, STATE, RunFolder
from aas_ray.experiment.trainer import EpochListener, RunOutcome, SpCLTrainer
from aas_ray.eval.paired import mean_interval
from aas_ray.orchestration.compare import BOUNDS, bounds_in_store, config_key, format_paired, gap_closed, paired_table
from aas_ray.orchestration.embedder import log_embedder
from aas_ray.orchestration.plots import map_vs_budget
from aas_ray.orchestration.resources import child_gpus, use_threads, visible_gpus
from aas_ray.orchestration.runlock import RunLock, RunLocked
from aas_ray.orchestration.mlflow_tracking import MlflowTracker, check_tracking_uri, resolve_tracking_uri
from aas_ray.orchestration.storage import Storage

log = logging.getLogger(__name__)

# A run's MLflow tags: the folder it was started in (a hex id, until the folder takes the
# run id as its name) and the folder that is its own (where it was made or last resumed).
STARTED_TAG = "aas_ray.started"
RUN_DIR_TAG = "aas_ray.run_dir"
STARTING = ".starting-"
STARTED_IN = ".tracking_uri"
TABLE = ("mAP", "mINP", "top1", "top5", "BAKS", "auc_roc", "utilised_budget", "pairs")


def find_run_dir(ref: str, output_dir: str, what: str = "resumable run") -> Path:
    """A run folder given its path or its MLflow run id (the folder name)."""
    for p in (Path(ref), Path(output_dir) / ref):
        if RunFolder(p).is_run():
            return p
    where = Path(ref) if Path(ref).parent != Path(".") else Path(output_dir) / ref
    raise InputError(f"no {what} {ref!r}: {where} holds no {STATE} (give a run folder or an MLflow "
                     f"run id under {output_dir}/)")


def strategy_config(cfg: Config, strategy: str) -> Config:
    """``cfg`` with another strategy, validated like any config."""
    raw = cfg.model_dump(mode="json")
    raw["al"]["strategy"] = strategy
    return build_config(raw, source=f"--strategies {strategy}")


def start_run(cfg: Config, uri: str, parent_run_id: str | None = None, extra_tags: dict | None = None,
              ) -> tuple[MlflowTracker, Path, RunLock]:
    """A new MLflow run and its folder, returned with the folder's lock held.

    The folder comes first, under a temporary name (``.starting-<hex>``), with its config and
    state; then the MLflow run, tagged with that hex id; then the folder records the run and
    takes its id as its name. Killed at any moment, this leaves no MLflow run without a
    folder: :func:`recover_started` names a started folder after its run, or removes it when
    its run was never created (it holds nothing but its config)."""
    key = uuid.uuid4().hex
    staging = Path(cfg.output_dir) / f"{STARTING}{key}"
    lock = RunLock(staging).acquire()
    try:
        (staging / STARTED_IN).write_text(uri)
        folder = RunFolder(staging)
        folder.file(CONFIG).write_text(dump_config(cfg))
        folder.save_state(RunState())
        strategy = cfg.al.strategy
        name = cfg.tracking.run_name or f"{cfg.data.name}-{strategy}-seed{cfg.seed}"
        tags = {"dataset": cfg.data.name, "strategy": strategy, "seed": cfg.seed, "config_key": config_key(cfg),
                STARTED_TAG: key, **(extra_tags or {})}
        tracker = MlflowTracker.create(uri, cfg.tracking.experiment, name, tags, parent_run_id)
        run_dir = name_folder(staging, tracker)
        tracker.log_params(cfg.flat())
    except BaseException:
        lock.release()
        raise
    lock.path = run_dir / ".lock"
    return tracker, run_dir, lock


def name_folder(staging: Path, tracker: MlflowTracker) -> Path:
    """A started folder records its MLflow run and takes the run id as its name."""
    folder = RunFolder(staging)
    state = folder.load_state()
    state.tracking_run_id = tracker.run_id
    folder.save_state(state)
    run_dir = staging.parent / tracker.run_id
    staging.rename(run_dir)
    (run_dir / STARTED_IN).unlink(missing_ok=True)
    tracker.set_tag(RUN_DIR_TAG, str(run_dir.resolve()))
    return run_dir


def recover_started(output_dir: Path, uri: str) -> None:
    """Folders of runs killed while :func:`start_run` made them: named after their MLflow run
    (found by its tag), or removed when the run was never created in this store."""
    for staging in sorted(Path(output_dir).glob(f"{STARTING}*")):
        started_in = staging / STARTED_IN
        if not staging.is_dir() or (started_in.is_file() and started_in.read_text() != uri):
            continue  # another tracking store's
        try:
            with RunLock(staging):
                _recover(staging, uri)
        except RunLocked:
            continue  # being made right now


def _recover(staging: Path, uri: str) -> None:
    key = staging.name.removeprefix(STARTING)
    try:
        cfg = load_config(RunFolder(staging).file(CONFIG))
    except ConfigError:
        cfg = None  # killed while writing it: before any MLflow run
    tracker = MlflowTracker.find(uri, cfg.tracking.experiment, STARTED_TAG, key) if cfg is not None else None
    if tracker is None:
        shutil.rmtree(staging)
        log.info("removed %s: a run killed before its MLflow run was created (it held only its config)", staging)
        return
    run_dir = name_folder(staging, tracker)
    tracker.log_params(cfg.flat())
    log.info("run %s was killed while it was being started; its folder is %s", tracker.run_id, run_dir)


def copied_from(client, run, run_dir: Path, state: RunState) -> str | None:
    """Why ``run_dir`` is not the folder of its MLflow run ``run`` but a copy (resuming it would
    change the original's run), or None: the run's own folder is elsewhere and still there, or
    the run went on past this folder's last epoch (it finished, or logged later epochs)."""
    run_id = run.info.run_id
    recorded = run.data.tags.get(RUN_DIR_TAG)
    original = Path(recorded) if recorded else run_dir.parent / run_id
    if original.resolve() != run_dir.resolve() and RunFolder(original).is_run():
        return (f"{run_dir} is a copy of the folder of MLflow run {run_id}, {original}: resuming the copy would "
                f"change that run; resume {original} instead (or move that folder away to go on from this copy)")
    here = state.epoch_done + 1  # epochs this folder trained (its last train/loss step)
    there = max((m.step for m in client.get_metric_history(run_id, "train/loss")), default=0)
    if there > here or (run.info.status == "FINISHED" and not state.finished):
        went = "has finished" if run.info.status == "FINISHED" else f"has logged {there}"
        return (f"{run_dir} holds {here} trained epoch(s) but its MLflow run {run_id} {went}: the run went on in "
                "another copy of this folder, and resuming this one would change it; resume that folder instead")
    return None


def resumed_tracker(uri: str, run_dir: Path) -> tuple[MlflowTracker, str]:
    """The tracker of the run ``run_dir`` holds and the run's MLflow status before this
    command; refused for a copy of another run's folder. A folder moved since (its recorded
    place is gone) becomes the run's own."""
    folder = RunFolder(run_dir)
    state = folder.load_state()
    if not state.tracking_run_id:
        raise InputError(f"{folder.state_file} names no MLflow run")
    tracker = MlflowTracker(uri, state.tracking_run_id)
    run = tracker.run()
    if run is None:
        raise InputError(f"{folder.state_file} names MLflow run {state.tracking_run_id}, which {uri} does not "
                         "hold: give the --tracking-uri the run was logged to")
    why = copied_from(tracker.client, run, run_dir, state)
    if why:
        raise InputError(why)
    if run.data.tags.get(RUN_DIR_TAG) != str(run_dir.resolve()):
        tracker.set_tag(RUN_DIR_TAG, str(run_dir.resolve()))
    return tracker, run.info.status


def waits_for_answers(run_dir: Path) -> bool:
    try:
        return bool(RunFolder(run_dir).load_state().pending)
    except InputError:
        return False


def stopped_status(run_dir: Path, before: str | None, err: InputError) -> str:
    """The MLflow status of a run that bad input (a damaged file, a full disk) stopped: it
    waits for answers (SCHEDULED), or can be resumed once the input is mended (KILLED), or
    keeps the status it had before this command; a new run stopped by bad input FAILED."""
    if waits_for_answers(run_dir):
        return "SCHEDULED"
    if before is None:
        return "KILLED" if isinstance(err, NoSpaceLeft) else "FAILED"
    return "KILLED" if before in ("RUNNING", "SCHEDULED") else before


def interrupted(run_dir: Path) -> str:
    try:
        after = f" after epoch {RunFolder(run_dir).load_state().epoch_done}"
    except InputError:
        after = ""
    return f"run {run_dir.name} was interrupted{after}; continue it with: aas-ray run --resume {run_dir}"


def train_until_pause(cfg: Config, folder: RunFolder, tracker, uri: str, progress: bool, workers: int,
                      experiment: Experiment | None, on_epoch: EpochListener | None = None,
                      storage: Storage = Storage()) -> RunOutcome:
    """Train from the run folder's state to the end or to the next cycle waiting for a person."""
    if workers > 0:
        from aas_ray.orchestration.ddp import train_distributed

        result = train_distributed(cfg, folder.dir, workers, uri, tracker.run_id,
                                   storage_path=storage.ray_train(cfg.output_dir))
        if result.error is not None:
            raise result.error
        state = folder.load_state()
        pending = folder.pending_file(state.pending["cycle"]) if state.pending else None
        return RunOutcome(state.finished, state.evals[-1] if state.evals else {}, pending)
    return SpCLTrainer(cfg, folder, tracker, progress, experiment, on_epoch=on_epoch).run()


def train_one(cfg: Config, uri: str, run_dir: Path | None = None, progress: bool = True,
              parent_run_id: str | None = None, extra_tags: dict | None = None, workers: int = 0,
              experiment: Experiment | None = None, serve: dict | None = None,
              on_epoch: EpochListener | None = None, storage: Storage = Storage()) -> tuple[str, RunOutcome]:
    """One strategy, start to finish (or resume, or up to a pause for a person's answers).
    With ``serve`` ({"host", "port"}), a pause serves the annotation page and training goes
    on by itself once the cycle's pairs are answered. ``on_epoch`` hears of every finished
    epoch (in this process); ``storage`` holds DDP's checkpoints."""
    fresh = run_dir is None
    if fresh:
        tracker, run_dir, lock = start_run(cfg, uri, parent_run_id, extra_tags)
    else:
        lock = RunLock(run_dir).acquire()
    page = None
    folder = RunFolder(run_dir)
    with lock:
        before = None
        if not fresh:
            tracker, before = resumed_tracker(uri, run_dir)
        tracker.reopen()
        try:
            outcome = train_until_pause(cfg, folder, tracker, uri, progress, workers, experiment, on_epoch, storage)
            while not outcome.finished and serve is not None:
                from aas_ray.orchestration.annotate.page import Page

                page = page or Page(folder, **serve)
                tracker.set_tag("waiting_for", page.url)
                page.wait_until_answered()
                tracker.set_tag("waiting_for", "")
                outcome = train_until_pause(cfg, folder, tracker, uri, progress, workers, experiment, on_epoch,
                                            storage)
        except InputError as err:
            # Bad input found on the way (answers not filled in, a damaged file, a full disk):
            # the run is not broken, it waits for that input.
            status = stopped_status(run_dir, before, err)
            tracker.finish(status)
            if status == "KILLED":
                log.warning("%s", interrupted(run_dir))
            raise
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C, or the process told to stop (Ray Tune stopping a trial early): as after a
            # kill, the run goes on with --resume (or still waits for answers)
            tracker.finish("SCHEDULED" if waits_for_answers(run_dir) else "KILLED")
            log.warning("%s", interrupted(run_dir))
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
        evals = pd.DataFrame(folder.load_state().evals)
        map_vs_budget({cfg.al.strategy: evals}, folder.file(MAP_VS_BUDGET), f"{cfg.data.name} / {cfg.al.strategy}")
        for name in ARTIFACTS:
            tracker.log_artifact(folder.file(name))
        tracker.log_metrics_once(outputs_metrics(run_dir), step=int(evals["step"].max()))
        if cfg.tracking.log_model:
            log_embedder(uri, tracker.run_id, cfg, run_dir)
        tracker.finish()
    return tracker.run_id, outcome


def outputs_metrics(run_dir: Path) -> dict:
    """The run's individuals and its new-individual threshold as metrics (docs/method.md §16)."""
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
        step = max((e["step"] for e in RunFolder(Path(cfg.output_dir) / run_id).load_state().evals), default=0)
        tracker.log_metrics({"eval/gap_closed": value}, step=step)
    return value


def mark_interrupted(output_dir: Path, uri: str) -> None:
    """Runs killed before they finished (no process holds them): KILLED in MLflow, with the
    way back. A copy of another run's folder is left alone (its run is not this folder's)."""
    root = Path(output_dir)
    if not root.is_dir():
        return
    recover_started(root, uri)
    for folder in RunFolder.under(root):
        run_dir = folder.dir
        if run_dir.name.startswith(STARTING):
            continue
        try:
            state = folder.load_state()
        except InputError:
            continue
        if state.finished or state.pending or not state.tracking_run_id or RunLock.is_held(run_dir):
            continue
        tracker = MlflowTracker(uri, state.tracking_run_id)
        run = tracker.run()
        if run is None or run.info.status != "RUNNING":  # None: a run of another tracking store
            continue
        if copied_from(tracker.client, run, run_dir, state) is None:
            tracker.finish("KILLED")
            log.warning("%s", interrupted(run_dir))


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


def _child_setup(threads: int, gpus) -> None:
    # Each process gets its share of the cores: two strategies at one thread each go faster
    # than one after the other at two threads, and neither steals the other's cores. It takes
    # its GPU (if any) before anything touches CUDA: device auto is then that GPU alone.
    _child_signals()
    gpu = gpus.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    logging.basicConfig(level=logging.INFO)  # its format is set per strategy in _train_prepared
    use_threads(threads)


# Set in a child told to stop: its pool may already hold the next strategy (the executor
# queues one call ahead), which must then not start.
_stopping = False


def _interrupt_once(signum, frame):
    # Ctrl-C reaches the children from the terminal and again from the driver that stops
    # them: the second must not cut short the first's clean-up (marking the run KILLED).
    global _stopping
    _stopping = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _interrupt(signum, frame):
    global _stopping
    _stopping = True
    raise KeyboardInterrupt


def _child_signals() -> None:
    """A child ends as after Ctrl-C on SIGINT and SIGTERM, and (Linux) the kernel sends it
    SIGTERM when the driver that started it dies, even by SIGKILL: no child goes on training
    for a driver that is gone."""
    signal.signal(signal.SIGINT, _interrupt_once)
    signal.signal(signal.SIGTERM, _interrupt)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_children(grace_s: float = 60.0) -> None:
    """Ctrl-C to every child process still training: each marks its run KILLED with its resume
    command; one that has not ended after ``grace_s`` is terminated (the next command marks
    its run KILLED)."""
    import multiprocessing

    children = multiprocessing.active_children()
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.terminate()


def _train_prepared(cfg: Config, uri: str, run_dir: str) -> tuple[str, RunOutcome]:
    if _stopping:  # left untouched, as the strategies the driver cancelled: --resume starts it
        raise KeyboardInterrupt(f"{cfg.al.strategy} not started: the run was stopped")
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s [{cfg.al.strategy}] %(name)s: %(message)s", "%H:%M:%S")
    for handler in logging.getLogger().handlers:  # two strategies write to one terminal
        handler.setFormatter(fmt)
    return train_one(cfg, uri, Path(run_dir), progress=False)


def train_side_by_side(configs: list[Config], uri: str, parallel: int) -> list[tuple[str, RunOutcome]]:
    """The strategies in ``parallel`` processes at a time; results in the order of ``configs``.
    The MLflow runs and folders are made here first, so every run exists (and can be resumed
    with ``--resume``) even before its process starts. The processes share the visible GPUs
    round-robin, each seeing one."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    run_dirs = []
    for one in configs:
        _, run_dir, lock = start_run(one, uri)
        lock.release()  # the process that trains it takes it
        run_dirs.append(str(run_dir))
    threads = max(1, (os.cpu_count() or 1) // parallel)
    gpus = child_gpus(visible_gpus(), parallel)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()  # one GPU for each process the pool starts
    for gpu in gpus:
        queue.put(gpu)
    log.info("training %d strategies, %d at a time, %d thread(s) each%s", len(configs), parallel, threads,
             f", on GPUs {gpus}" if gpus[0] is not None else "")
    pool = ProcessPoolExecutor(parallel, mp_context=ctx, initializer=_child_setup, initargs=(threads, queue))
    try:
        futures = [pool.submit(_train_prepared, one, uri, d) for one, d in zip(configs, run_dirs)]
        return [f.result() for f in futures]
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or one strategy failed: nothing more starts, and the
        # strategies still training stop as after Ctrl-C (resumable) instead of going on alone.
        pool.shutdown(wait=False, cancel_futures=True)
        _stop_children()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_cli(args, cfg: Config, strategies: list[str]) -> int:
    uri = resolve_tracking_uri(args.tracking_uri, cfg.tracking.tracking_uri)
    check_tracking_uri(uri)
    storage = Storage.resolve(args.storage)
    cfg.output_dir = storage.output_dir(cfg.output_dir)
    if args.workers:
        from aas_ray.orchestration.ddp import check_workers

        check_workers(args.workers)  # more workers than the Ray cluster holds: an error before any run exists
        storage.require_for_cluster(f"aas-ray run --workers {args.workers}")
    if args.resume:
        recover_started(Path(cfg.output_dir), uri)  # a run killed while being started has its folder
        run_dir = find_run_dir(args.resume, cfg.output_dir)
        cfg = load_config(RunFolder(run_dir).file(CONFIG))
        run_id, outcome = train_one(cfg, uri, run_dir, workers=args.workers, serve=serve_options(args),
                                    storage=storage)
        if outcome.finished:
            log.info("run %s finished: %s", run_id,
                     {k: round(v, 4) for k, v in outcome.final.items() if isinstance(v, float)})
        return 0
    seeds = args.seeds if args.seeds else [cfg.seed]
    configs = [strategy_config(seeded(cfg, seed), s) for seed in seeds for s in strategies]  # all checked first
    parallel = check_parallel(args, cfg, len(configs))
    mark_interrupted(Path(cfg.output_dir), uri)
    experiments = {}
    for seed in seeds:  # every seed's data and split before any training (fails fast, fills the caches)
        one = seeded(cfg, seed)
        if args.workers:
            # Fail fast on the data before any run starts; the workers compute the features on their
            # own devices (this machine may have no GPU: a CPU-only head of a GPU cluster).
            prepare_data(one)
            experiments[seed] = None
        else:
            prepared = prepare_experiment(one)  # every process reuses the feature cache
            experiments[seed] = prepared if parallel == 1 else None
    if parallel > 1:
        results = train_side_by_side(configs, uri, parallel)
    else:
        results = [train_one(one, uri, workers=args.workers, experiment=experiments[one.seed],
                             serve=serve_options(args), storage=storage) for one in configs]
    rows = []
    for one, (run_id, outcome) in zip(configs, results):
        rows.append({"seed": one.seed, "strategy": one.al.strategy, "run_id": run_id, "finished": outcome.finished,
                     **({k: outcome.final.get(k) for k in TABLE} if outcome.finished else {})})
    for seed in seeds:
        mine = [r for r in rows if r["seed"] == seed]
        known = {r["strategy"]: r["mAP"] for r in mine if r["strategy"] in BOUNDS and r["finished"]}
        for r in mine:
            r["gap_closed"] = (log_gap_closed(uri, strategy_config(seeded(cfg, seed), r["strategy"]), r["run_id"], r,
                                              known) if r["finished"] else float("nan"))
    table = pd.DataFrame(rows)
    for seed in seeds:
        mine = [r for r in rows if r["seed"] == seed]
        evals = {r["strategy"]: pd.read_csv(f) for r in mine
                 if (f := RunFolder(Path(cfg.output_dir) / r["run_id"]).file(EVALS)).is_file()}
        if len(evals) > 1:
            path = map_vs_budget(evals, Path(cfg.output_dir) / f"compare-{cfg.data.name}-seed{seed}.png",
                                 f"{cfg.data.name}, seed {seed}")
            log.info("mAP against utilised budget, all strategies of seed %d: %s", seed, path)
    print_results(table, cfg.data.name, seeds)
    log.info("results are in MLflow (%s), experiment %r: run `mlflow ui --backend-store-uri %s` and open "
             "http://127.0.0.1:5000/#/experiments/%s/runs?workflowType=machine_learning", uri, cfg.tracking.experiment,
             uri, MlflowTracker(uri, rows[0]["run_id"]).client.get_run(rows[0]["run_id"]).info.experiment_id)
    return 0


def seeded(cfg: Config, seed: int) -> Config:
    """``cfg`` with another seed (split, initialisation, sampling), validated like any config."""
    raw = cfg.model_dump(mode="json")
    raw["seed"] = seed
    return build_config(raw, source=f"--seeds {seed}")


def print_results(table: pd.DataFrame, dataset: str, seeds: list[int]) -> None:
    """Every run's row, then what the seeds support: the paired differences between the
    strategies with their 95 % intervals and verdicts, and gap closed over the seeds."""
    with pd.option_context("display.width", 200):
        print(f"{dataset}, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}: "
              "gap_closed = (mAP - mAP_none) / (mAP_supervised - mAP_none) on the same seed")
        shown = table.assign(status=np.where(table["finished"], "finished", "waits for answers"))
        print(shown.drop(columns=["finished"]).to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    done = table[table["finished"]]
    if done.empty or done["strategy"].nunique() < 2:
        return
    paired = paired_table(done, "mAP", "strategy", ("seed",), ())
    print(f"\nPaired differences in mAP over {len(seeds)} seed{'s' if len(seeds) > 1 else ''} (A − B on the same "
          "seed; a verdict only when the 95 % interval excludes 0):")
    print(format_paired(paired))
    gaps = []
    for strategy, sub in done.groupby("strategy"):
        if strategy in BOUNDS or sub["gap_closed"].isna().all():
            continue
        mean, low, high = mean_interval(sub["gap_closed"])
        gaps.append(f"  {strategy}: {100 * mean:.0f} %" + ("" if np.isnan(low) else
                                                          f" [95 % interval {100 * low:.0f} %, {100 * high:.0f} %]"))
    if gaps:
        print("Gap closed, mean over seeds:\n" + "\n".join(gaps))
    if len(seeds) < 3:
        print(f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} cannot separate strategies whose runs differ by "
              "less than the seed-to-seed spread; use --seeds 0,1,2,3,4 for a verdict.")
