"""``aas-ray tune``: a Ray Tune study over datasets and config keys, one MLflow parent run
per study and one child run per trial.

A trial's MLflow run carries its Tune trial id (tag ``tune_trial``) and the Ray node it ran
on (``ray_node``). A trial started again — retried after a failure (the study's
``max_failures``) or run again by ``--resume`` — finds its run: a finished one is reported
as it finished, an unfinished one goes on in its run folder. Training trials report every
evaluated epoch with a checkpoint of their run folder, so a scheduler (ASHA) can stop them
early; a stopped trial's run ends KILLED with the tag ``stopped_early``. The parent run
records where the study's Tune state is (tag ``aas_ray.tune_dir``), so ``--resume`` finds it
and keeps the same parent run.
"""

from __future__ import annotations

import logging
import os
import shlex
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from ray import tune

from aas_ray.checks import InputError
from aas_ray.experiment.run_folder import RunFolder
from aas_ray.orchestration.actors import actor_name, create_actor
from aas_ray.orchestration.compare import (
    across_datasets,
    bounds_in_store,
    config_key,
    format_across,
    format_paired,
    gap_closed,
    paired_table,
    with_gap_closed,
)
from aas_ray.orchestration.resources import study_resources, use_ray_gpus
from aas_ray.orchestration.storage import CHECKPOINTS_KEPT, Storage, folder_checkpoint, restore_folder
from aas_ray.orchestration.study import StudyConfig, load_study, trial_config
from aas_ray.orchestration.mlflow_tracking import MlflowTracker, check_tracking_uri, resolve_tracking_uri

log = logging.getLogger(__name__)

TRIAL_TAG = "tune_trial"
NODE_TAG = "ray_node"
STOPPED_TAG = "stopped_early"
TUNE_DIR_TAG = "aas_ray.tune_dir"

SIM_METRICS = ("nmi", "ari", "pair_precision", "pair_recall", "pair_f1", "clusters", "outliers", "regions", "U_os",
               "U_us", "pairs_asked", "must_link", "cannot_link", "ml_cl_ratio", "utilised_budget", "individuals",
               "individuals_ci95", "labels/ml_closure_recall")


def _space(spec: dict):
    """A study's {kind: values} as a Tune search space."""
    kind, values = next(iter(spec.items()))
    if kind == "grid":
        return tune.grid_search(values)
    if kind == "choice":
        return tune.choice(values)
    return (tune.uniform if kind == "uniform" else tune.loguniform)(*values)


def absolute_paths(base_raw: dict, study: StudyConfig) -> None:
    """Trials run in their own working directories: every path must be absolute. A cache
    under ``~`` stays so: each node's own home (the caches are per node)."""
    base_raw["output_dir"] = str(Path(base_raw.get("output_dir", "runs")).expanduser().resolve())
    data = base_raw.setdefault("data", {})
    cache = str(data.get("cache_dir", "~/.cache/aas-ray"))
    data["cache_dir"] = cache if cache.startswith("~") else str(Path(cache).resolve())
    if data.get("root"):
        data["root"] = str(Path(data["root"]).expanduser().resolve())
    study.data_roots = {k: str(Path(v).expanduser().resolve()) for k, v in study.data_roots.items()}


def _numeric(row: dict) -> dict:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, bool) and np.isfinite(v)}


def run_trial(params: dict, ctx: dict) -> None:
    """One trial: a simulation on the dataset's actor, or a full training run. A trial that
    ran before (retried after a failure, or run again by ``--resume``) goes on from where it
    was; one that finished before is reported as it finished, not run again."""
    use_ray_gpus()  # the trial's GPU share, or no GPU at all
    study = StudyConfig.model_validate(ctx["study"])
    cfg = trial_config(ctx["base_raw"], params, study)
    strategy = cfg.al.strategy
    trial_id = tune.get_context().get_trial_id()
    tags = {"study": study.study, "dataset": cfg.data.name, "strategy": strategy, "kind": study.kind,
            TRIAL_TAG: trial_id, NODE_TAG: ray.get_runtime_context().get_node_id()}
    swept = {k: v for k, v in params.items() if k != "data.name"}
    name = f"{cfg.data.name}-{strategy}-" + "-".join(f"{k.split('.')[-1]}={v}" for k, v in swept.items())
    earlier = trial_run(ctx["uri"], ctx["parent"], trial_id)
    if earlier is not None and earlier.info.status == "FINISHED":
        log.info("trial %s finished before (MLflow run %s): reported as it was", trial_id, earlier.info.run_id)
        tune.report(finished_result(earlier, study.kind))
        return
    if study.kind == "train":
        cfg.tracking.run_name = name
        train_trial(cfg, ctx, tags, earlier)
        return
    if earlier is not None:
        child = MlflowTracker(ctx["uri"], earlier.info.run_id)
        child.reopen()
        child.set_tag(NODE_TAG, tags[NODE_TAG])
    else:
        child = MlflowTracker.create(ctx["uri"], cfg.tracking.experiment, name, tags, ctx["parent"])
        child.log_params(cfg.flat())
    try:
        actor = ray.get_actor(actor_name(study.study, cfg.data.name))
        table = ray.get(actor.simulate.remote(cfg, [strategy], study.cycles))
        for row in table.to_dict("records"):
            child.log_metrics_once({k: v for k, v in _numeric(row).items() if k in SIM_METRICS}, step=int(row["cycle"]))
    except BaseException:
        child.finish("FAILED")
        raise
    child.finish()
    tune.report(_numeric(table.iloc[-1].to_dict()))


def train_trial(cfg, ctx: dict, tags: dict, earlier) -> None:
    """A training trial: every evaluated epoch reported with a checkpoint of its run folder
    (:class:`EpochReporter`), then the final result. ``earlier``: the trial's MLflow run from
    an attempt that did not finish; training goes on in its folder, restored from the trial's
    last checkpoint where this node's copy is missing or behind."""
    from aas_ray.orchestration.run import recover_started, train_one

    uri = ctx["uri"]
    run_dir = None
    if earlier is not None:
        recover_started(Path(cfg.output_dir), uri)  # an attempt killed while its folder was made
        folder = RunFolder(Path(cfg.output_dir) / earlier.info.run_id)
        if restore_folder(tune.get_checkpoint(), folder):
            log.info("run folder %s restored from the trial's last checkpoint", folder.dir)
        if folder.is_run():
            run_dir = folder.dir
            MlflowTracker(uri, earlier.info.run_id).set_tag(NODE_TAG, tags[NODE_TAG])
        else:  # the attempt left neither a folder nor a checkpoint: start again
            MlflowTracker(uri, earlier.info.run_id).finish("KILLED")
    reporter = EpochReporter(cfg, uri, ctx["experiment_id"])
    run_id, outcome = train_one(cfg, uri, run_dir, progress=False, parent_run_id=ctx["parent"], extra_tags=tags,
                                on_epoch=reporter)
    with folder_checkpoint(RunFolder(Path(cfg.output_dir) / run_id), tune.Checkpoint) as checkpoint:
        tune.report(reporter.result(outcome.final, cfg.train.epochs) | {"mlflow_run_id": run_id},
                    checkpoint=checkpoint)


class EpochReporter:
    """The trainer's ``on_epoch`` in a training trial: each evaluated epoch goes to Ray Tune
    (mAP and the other evaluation metrics, utilised budget, pairs, gap closed when the
    bounds of this setting are in the tracking store) with a checkpoint of the run folder,
    so a scheduler may stop the trial there. The last epoch is reported once the run has
    finished (its artifacts logged), by the trial itself."""

    def __init__(self, cfg, uri: str, experiment_id: str):
        self.cfg, self.uri, self.experiment_id = cfg, uri, experiment_id

    def __call__(self, epoch: int, metrics: dict, folder: RunFolder) -> None:
        if "eval/mAP" not in metrics or epoch == self.cfg.train.epochs - 1:
            return
        row = {k.removeprefix("eval/"): v for k, v in metrics.items() if k.startswith("eval/")}
        with folder_checkpoint(folder, tune.Checkpoint) as checkpoint:
            tune.report(self.result(row, epoch + 1) | {"mlflow_run_id": folder.dir.name}, checkpoint=checkpoint)

    def result(self, evaluation: dict, epochs_done: int) -> dict:
        """A report: the evaluation's numbers, ``epoch`` (epochs trained, ASHA's time) and
        ``epochs`` (of the schedule), and ``gap_closed`` where the bounds are known."""
        from mlflow.tracking import MlflowClient

        out = _numeric(evaluation) | {"epoch": epochs_done, "epochs": self.cfg.train.epochs}
        bounds = bounds_in_store(MlflowClient(self.uri), self.experiment_id, config_key(self.cfg))
        gap = gap_closed(out.get("mAP", float("nan")), bounds.get("none"), bounds.get("supervised"))
        if np.isfinite(gap):
            out["gap_closed"] = gap
        return out


def trial_run(uri: str, parent: str, trial_id: str):
    """The MLflow run of a study's trial: its finished one, else its newest; None if it has none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
                              order_by=["attributes.start_time DESC"])
    return next((r for r in runs if r.info.status == "FINISHED"), runs[0] if runs else None)


def finished_result(run, kind: str) -> dict:
    """What a trial reported when it finished, read back from its MLflow run."""
    metrics = run.data.metrics
    if kind == "train":
        epochs = int(run.data.params["train.epochs"])
        out = {k.removeprefix("eval/"): v for k, v in metrics.items() if k.startswith("eval/")}
        return out | {"epoch": epochs, "epochs": epochs, "mlflow_run_id": run.info.run_id}
    return {k: v for k, v in metrics.items() if k in SIM_METRICS}


class TrialEnds(tune.Callback):
    """On the driver, what a trial's own process cannot record: a trial the scheduler stopped
    early (its MLflow run KILLED, tagged ``stopped_early``), and one that failed for good
    after its retries (FAILED, when it died before it could say so)."""

    def __init__(self, uri: str, parent: str):
        self.uri, self.parent = uri, parent

    def on_trial_complete(self, iteration, trials, trial, **info):
        # A trial completes by itself only after its run has FINISHED: any other run was stopped.
        run = trial_run(self.uri, self.parent, trial.trial_id)
        if run is not None and run.info.status != "FINISHED":
            tracker = MlflowTracker(self.uri, run.info.run_id)
            tracker.set_tag(STOPPED_TAG, "true")
            tracker.finish("KILLED")
            log.info("trial %s stopped early by the scheduler after %s epoch(s)", trial.trial_id,
                     (trial.last_result or {}).get("epoch", "?"))

    def on_trial_error(self, iteration, trials, trial, **info):
        run = trial_run(self.uri, self.parent, trial.trial_id)
        if run is not None and run.info.status != "FINISHED":
            MlflowTracker(self.uri, run.info.run_id).finish("FAILED")


def trial_statuses(uri: str, parent: str) -> dict[str, str]:
    """Each trial of the study that has an MLflow run, by Tune trial id: finished, stopped
    early, failed or unfinished."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    out: dict[str, str] = {}
    for run in client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'"):
        trial = run.data.tags.get(TRIAL_TAG)
        if trial is None:
            continue
        status = ("finished" if run.info.status == "FINISHED" else
                  "stopped early" if run.data.tags.get(STOPPED_TAG) == "true" else
                  "failed" if run.info.status == "FAILED" else "unfinished")
        rank = ("unfinished", "failed", "stopped early", "finished")
        if trial not in out or rank.index(status) > rank.index(out[trial]):
            out[trial] = status
    return out


def _load_dataset(cfg):
    from aas_ray.experiment.prepare import prepare_experiment

    exp = prepare_experiment(cfg, progress=False)
    return exp.train_features, exp.truth


AGG_METRICS = ("mAP", "top1", "auc_roc", "gap_closed", "utilised_budget", "pairs", "pair_f1", "nmi", "must_link")


def aggregate(table: pd.DataFrame, study: StudyConfig) -> pd.DataFrame | None:
    """Mean and sd over the repeats (seeds) of each dataset x setting: one row per group."""
    repeat = [k for k in ("seed", "data.synthetic.seed") if k in study.search]
    if not repeat and study.num_samples < 2:
        return None
    group = ["data.name"] + [k for k in study.search if k in table.columns and k not in repeat]
    metrics = [m for m in AGG_METRICS if m in table.columns]
    g = table.groupby(group, dropna=False)[metrics]
    out = g.mean().add_suffix("_mean").join(g.std().add_suffix("_sd")).join(g.size().rename("repeats"))
    return out.reset_index()


def format_aggregate(agg: pd.DataFrame) -> str:
    """The aggregate as a Markdown table, each metric as mean ± sd (mAP-like in %)."""
    keys = [c for c in agg.columns if not c.endswith(("_mean", "_sd")) and c != "repeats"]
    metrics = [c.removesuffix("_mean") for c in agg.columns if c.endswith("_mean")]
    pct = {"mAP", "top1", "auc_roc", "gap_closed", "utilised_budget"}

    def cell(r, m):
        mu, sd = r[f"{m}_mean"], r[f"{m}_sd"]
        if pd.isna(mu):
            return "-"
        f = 100.0 if m in pct else 1.0
        digits = 3 if m == "utilised_budget" else 1 if m in pct else 0 if m in ("pairs", "must_link") else 3
        return f"{f * mu:.{digits}f} ± {f * (0 if pd.isna(sd) else sd):.{digits}f}"

    head = keys + [f"{m} (%)" if m in pct else m for m in metrics] + ["n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in agg.iterrows():
        lines.append("| " + " | ".join([str(r[k]) for k in keys] + [cell(r, m) for m in metrics] + [str(r["repeats"])])
                     + " |")
    return "\n".join(lines)


def write_paired(table: pd.DataFrame, study: StudyConfig, out: Path) -> list[Path]:
    """Paired differences between strategies over the repeats (seeds) of each dataset and
    setting, with 95 % intervals and verdicts, and the Wilcoxon test across datasets
    (docs/method.md §12): ``paired.csv`` and ``paired.txt``."""
    if "al.strategy" not in table.columns or table["al.strategy"].nunique() < 2:
        return []
    metric = study.metric if study.metric in table.columns else "mAP"
    repeat = tuple(k for k in ("seed", "data.synthetic.seed") if k in study.search)
    group = ("data.name", *(k for k in study.search if k in table.columns and k not in repeat and k != "al.strategy"))
    paired = paired_table(table, metric, "al.strategy", repeat, group)
    if paired.empty:
        return []
    paired.to_csv(out / "paired.csv", index=False)
    text = f"Paired differences in {metric} (A − B on the same dataset, setting and seed):\n\n" + format_paired(paired)
    across = across_datasets(table, metric, "al.strategy", "data.name")
    if not across.empty:
        text += ("\n\nAcross datasets (Wilcoxon signed-rank test on the per-dataset means; with fewer than 6 "
                 "datasets no result reaches p < 0.05):\n\n" + format_across(across))
    (out / "paired.txt").write_text(text + "\n")
    return [out / "paired.csv", out / "paired.txt"]


def summarise(df: pd.DataFrame, study: StudyConfig, out: Path) -> list[Path]:
    """Summary table (CSV + HTML) and plots: each metric against each swept key per dataset,
    and the study metric against utilised budget per strategy. With a ``status`` column, every
    trial is listed with it, and gap closed, the aggregates, the paired differences and the
    plots are of the finished trials only (a trial stopped early trained for fewer epochs)."""
    import matplotlib.pyplot as plt

    from aas_ray.orchestration.plots import save_figure

    out.mkdir(parents=True, exist_ok=True)
    cols = {c: c.removeprefix("config/") for c in df.columns if c.startswith("config/")}
    table = df.rename(columns=cols)
    keep = ["status", "epoch", *cols.values()] + [c for c in (*SIM_METRICS, "mAP", "mINP", "top1", "top5", "BAKS",
                                                              "auc_roc", "pairs") if c in table.columns]
    table = table[list(dict.fromkeys(c for c in keep if c in table.columns))]
    finished = table["status"] == "finished" if "status" in table.columns else pd.Series(True, index=table.index)
    if "al.strategy" in table.columns and "mAP" in table.columns:
        group = ["data.name"] + [k for k in study.search if k in table.columns and k != "al.strategy"]
        table["gap_closed"] = with_gap_closed(table[finished], group, strategy="al.strategy")["gap_closed"]
    files = [out / "summary.csv", out / "summary.html"]
    table.to_csv(files[0], index=False)
    table.to_html(files[1], index=False, float_format=lambda v: f"{v:.4f}")
    table = table[finished]
    agg = aggregate(table, study)
    if agg is not None:
        agg.to_csv(out / "aggregate.csv", index=False)
        (out / "aggregate.txt").write_text(format_aggregate(agg) + "\n")
        files += [out / "aggregate.csv", out / "aggregate.txt"]
    files += write_paired(table, study, out)
    swept = [k for k in study.search if k in table.columns and k != "al.strategy"]
    metrics = [m for m in (study.metric, "utilised_budget", "mAP", "nmi") if m in table.columns]
    metrics = list(dict.fromkeys(metrics))
    hue = "al.strategy" if "al.strategy" in table.columns else None
    for key in swept:
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            groups = table.groupby(["data.name"] + ([hue] if hue else []))
            for g, sub in groups:
                agg = sub.groupby(key)[m].mean().sort_index()
                x = agg.index.astype(float) if pd.api.types.is_numeric_dtype(agg.index) else agg.index.astype(str)
                ax.plot(x, agg.values, marker="o", label=" / ".join(map(str, np.atleast_1d(g))))
            ax.set_xlabel(key)
            ax.set_ylabel(m)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        files.append(save_figure(fig, out / f"sweep-{key.replace('.', '_')}.png", f"{study.study}: {key}"))
    if "utilised_budget" in table.columns and study.metric in table.columns:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for g, sub in table.groupby(hue) if hue else [("all", table)]:
            ax.scatter(100 * sub["utilised_budget"], sub[study.metric], label=str(g), alpha=0.8)
        ax.set_xlabel("utilised budget (% of all pairs)")
        ax.set_ylabel(study.metric)
        ax.grid(alpha=0.3)
        ax.legend()
        files.append(save_figure(fig, out / f"{study.metric}-vs-budget.png"))
    return files


def prepare_datasets(study: StudyConfig, base_raw: dict) -> dict:
    """Every dataset read and checked before Ray starts: a missing or broken one fails here in
    seconds. A simulation's features are computed here (its dataset actors get them); a
    training trial computes them on its own node, whose caches may lack them."""
    if study.kind == "simulate":
        return {ds: _load_dataset(trial_config(base_raw, {"data.name": ds}, study)) for ds in study.datasets}
    from aas_ray.experiment.prepare import prepare_data

    for ds in study.datasets:
        prepare_data(trial_config(base_raw, {"data.name": ds}, study), progress=False)
    return {}


def study_run(uri: str, experiment: str, study: StudyConfig, ref: str) -> MlflowTracker:
    """The parent MLflow run ``--resume`` continues: ``ref`` (a run id), or this study's newest
    (``latest``). It must be a run of this study, started with the same study settings."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if ref == "latest":
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], f"tags.study = '{study.study}' and attributes.run_name = "
                                  f"'study-{study.study}'", order_by=["attributes.start_time DESC"]) if exp else []
        runs = [r for r in runs if TUNE_DIR_TAG in r.data.tags]
        if not runs:
            raise InputError(f"--resume: {uri} holds no run of study {study.study!r} (experiment {experiment!r}) "
                             "to continue; start it without --resume")
        run = runs[0]
    else:
        try:
            run = client.get_run(ref)
        except MlflowException:
            raise InputError(f"--resume {ref}: {uri} holds no such MLflow run") from None
        if run.data.tags.get("study") != study.study or TUNE_DIR_TAG not in run.data.tags:
            raise InputError(f"--resume {ref}: MLflow run {ref} is not a run of study {study.study!r}")
    logged = run.data.params
    for key, value in study.model_dump(mode="json").items():
        was, now = logged.get(f"study.{key}"), str(value)[:6000]
        if key != "storage" and was is not None and was != now:
            raise InputError(f"--resume {run.info.run_id}: study.{key} was {was} when that run started and is {now} "
                             "now; resume with the same study file and --set values")
    return MlflowTracker(uri, run.info.run_id)


def make_tuner(study: StudyConfig, base_cfg, trainable, tune_dir: str, name: str, uri: str, parent: str):
    """A new Tuner for the study: its scheduler (ASHA, if asked), retries, checkpoints kept and
    the callback that records how trials ended."""
    from ray.tune.schedulers import ASHAScheduler

    param_space = {"data.name": tune.grid_search(study.datasets), **{k: _space(s) for k, s in study.search.items()}}
    scheduler = None
    if study.scheduler.asha is not None:
        epochs = [base_cfg.train.epochs] + [v for v in next(iter(study.search.get("train.epochs", {"": []}).values()))
                                            if isinstance(v, (int, float))]
        scheduler = ASHAScheduler(time_attr="epoch", max_t=int(max(epochs)),
                                  grace_period=study.scheduler.asha.grace_period,
                                  reduction_factor=study.scheduler.asha.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=study.num_samples, max_concurrent_trials=study.max_concurrent_trials,
                                    metric=study.metric, mode=study.mode, scheduler=scheduler),
        run_config=tune.RunConfig(name=name, storage_path=tune_dir, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=study.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
                                  callbacks=[TrialEnds(uri, parent)]),
    )


def tune_cli(args) -> int:
    study, base_raw = load_study(args.study, args.set)
    storage = Storage.resolve(args.storage, study.storage)
    base_raw["output_dir"] = storage.output_dir(base_raw.get("output_dir", "runs"))
    absolute_paths(base_raw, study)
    base_cfg = trial_config(base_raw, {"data.name": study.datasets[0]}, study)
    uri = resolve_tracking_uri(args.tracking_uri, base_cfg.tracking.tracking_uri)
    check_tracking_uri(uri)
    experiment = base_cfg.tracking.experiment
    parent = study_run(uri, experiment, study, args.resume) if args.resume else None
    loaded = prepare_datasets(study, base_raw)
    if not ray.is_initialized():
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    storage.require_for_cluster(f"study {study.study}")
    trial_resources, actor_gpus = study_resources(study)
    tune_root = storage.tune(base_cfg.output_dir)
    if parent is None:
        parent = MlflowTracker.create(uri, experiment, f"study-{study.study}",
                                      {"study": study.study, "kind": study.kind, "datasets": ",".join(study.datasets)})
        parent.log_params({f"study.{k}": v for k, v in study.model_dump(mode="json").items()})
        name = f"{study.study}-{parent.run_id[:8]}"
        parent.set_tag(TUNE_DIR_TAG, f"{tune_root}/{name}")
    else:
        parent.reopen()
        name = f"{study.study}-{parent.run_id[:8]}"
    tune_path = parent.run().data.tags[TUNE_DIR_TAG]
    actors = []
    try:
        if study.kind == "simulate":
            actors = [create_actor(study.study, ds, x, y, actor_gpus, int(study.resources_per_trial.cpu))
                      for ds, (x, y) in loaded.items()]
            log.info("clustering actors: %s", ray.get([a.info.remote() for a in actors]))
        ctx = {"study": study.model_dump(mode="json"), "base_raw": base_raw, "uri": uri, "parent": parent.run_id,
               "experiment_id": parent.run().info.experiment_id}
        trainable = tune.with_resources(partial(run_trial, ctx=ctx), trial_resources)
        if args.resume:
            if not tune.Tuner.can_restore(tune_path):
                raise InputError(f"--resume {parent.run_id}: no Tune state at {tune_path} (moved, or the study "
                                 "stopped before Tune saved any); start the study again without --resume")
            log.info("resuming study %s (MLflow run %s) from %s", study.study, parent.run_id, tune_path)
            tuner = tune.Tuner.restore(tune_path, trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = make_tuner(study, base_cfg, trainable, tune_root, name, uri, parent.run_id)
        results = tuner.fit()
    except BaseException as err:
        parent.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    finally:  # the clustering actors serve the trials only
        for a in actors:
            ray.kill(a)
    resume = shlex.join(["aas-ray", "tune", args.study, *(f"--set={s}" for s in args.set or []), "--resume",
                         parent.run_id])
    return finish_study(results, study, base_cfg, name, uri, parent, resume)


def study_size(study: StudyConfig) -> int:
    """The trials of a study: every dataset x every combination of the grids, ``num_samples``
    times (a random key draws one value per trial), as Tune's variant generator makes them."""
    grids = [len(next(iter(s.values()))) for s in study.search.values() if next(iter(s)) == "grid"]
    return study.num_samples * len(study.datasets) * int(np.prod(grids, dtype=int))


def finish_study(results, study: StudyConfig, base_cfg, name: str, uri: str, parent: MlflowTracker, resume: str) -> int:
    """Counts of the trials by how they ended (from the tracking store: a trial counts once,
    whatever its attempts; unfinished: the rest of the study's trials, made by Tune or not yet),
    the summary, the report, and the parent run's status: FINISHED, FAILED (a trial failed for
    good), or KILLED (trials left to run: ``--resume`` goes on)."""
    statuses = trial_statuses(uri, parent.run_id)
    for trial, status in statuses.items():
        run = trial_run(uri, parent.run_id, trial)
        if status == "unfinished" and run.info.status == "RUNNING":  # its process was stopped with the study
            MlflowTracker(uri, run.info.run_id).finish("KILLED")
    counts = {s: sum(v == s for v in statuses.values()) for s in ("finished", "stopped early")}
    counts["failed"] = len(results.errors)  # failed for good, after their retries
    counts["unfinished"] = study_size(study) - sum(counts.values())
    df = results.get_dataframe()
    if len(df) and "trial_id" in df.columns:
        df["status"] = df["trial_id"].map(statuses).fillna("unfinished")
    out = Path(base_cfg.output_dir) / "tune" / name / "summary"  # on this machine, whatever the storage
    try:
        for f in summarise(df, study, out) if len(df) else []:
            parent.log_artifact(f)
    except BaseException:
        # The trials' own runs are complete; only the summary failed. Keep the table.
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "results.csv", index=False)
        parent.log_artifact(out / "results.csv")
        parent.finish("FAILED")
        raise
    parent.log_metrics({"trials_completed": counts["finished"], "trials_stopped_early": counts["stopped early"],
                        "trials_failed": counts["failed"], "trials_unfinished": counts["unfinished"]}, step=0)
    if counts["finished"]:
        from aas_ray.orchestration.report import build_report

        build_report(uri, study.study, base_cfg.tracking.experiment, out.parent / "report", parent.run_id)
    for err in results.errors:
        log.error("trial failed: %s", err)
    log.info("study %s: %d trials completed, %d stopped early, %d failed, %d unfinished; parent MLflow run %s; summary "
             "in %s", study.study, counts["finished"], counts["stopped early"], counts["failed"], counts["unfinished"],
             parent.run_id, out)
    for f in ("aggregate.txt", "paired.txt"):
        if (out / f).is_file():
            print((out / f).read_text())
    if study.register_model and counts["finished"] and not counts["unfinished"]:
        register_best(df, study, uri, parent)
    if counts["unfinished"]:
        parent.finish("KILLED")
        log.warning("study %s stopped with %d of %d trials unfinished; continue it with: %s", study.study,
                    counts["unfinished"], study_size(study), resume)
        return 1
    parent.finish("FAILED" if counts["failed"] else "FINISHED")
    return 1 if counts["failed"] else 0


def register_best(df: pd.DataFrame, study: StudyConfig, uri: str, parent: MlflowTracker) -> None:
    """The best finished trial's MLflow model registered under ``register_model`` (a trial
    stopped early is not a candidate: it trained for fewer epochs)."""
    from aas_ray.orchestration.embedder import register_model

    finished = df[(df["status"] == "finished") & df[study.metric].notna()]
    if finished.empty:
        log.warning("no finished trial reported %s: no model registered as %s", study.metric, study.register_model)
        return
    best = finished.loc[finished[study.metric].idxmax() if study.mode == "max" else finished[study.metric].idxmin(),
                        "mlflow_run_id"]
    version = register_model(uri, best, study.register_model)
    parent.set_tag("registered_model", f"{study.register_model} version {version} (run {best})")
    log.info("best trial's model (run %s) registered as %s version %s", best, study.register_model, version)
