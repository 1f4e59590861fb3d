"""``aas-ray tune``: a Ray Tune study over datasets and config keys, one MLflow parent run
per study and one child run per trial."""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from ray import tune

from aas_ray.orchestration.actors import actor_name, create_actor
from aas_ray.orchestration.compare import (
    across_datasets,
    format_across,
    format_paired,
    paired_table,
    with_gap_closed,
)
from aas_ray.orchestration.resources import study_resources, use_ray_gpus
from aas_ray.orchestration.study import StudyConfig, load_study, trial_config
from aas_ray.orchestration.mlflow_tracking import MlflowTracker, check_tracking_uri, resolve_tracking_uri

log = logging.getLogger(__name__)

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
    """Trials run in their own working directories: every path must be absolute."""
    base_raw["output_dir"] = str(Path(base_raw.get("output_dir", "runs")).expanduser().resolve())
    data = base_raw.setdefault("data", {})
    data["cache_dir"] = str(Path(data.get("cache_dir", "~/.cache/aas-ray")).expanduser().resolve())
    if data.get("root"):
        data["root"] = str(Path(data["root"]).expanduser().resolve())
    study.data_roots = {k: str(Path(v).expanduser().resolve()) for k, v in study.data_roots.items()}


def _numeric(row: dict) -> dict:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, bool) and np.isfinite(v)}


def run_trial(params: dict, ctx: dict) -> None:
    """One trial: a simulation on the dataset's actor, or a full training run."""
    use_ray_gpus()  # the trial's GPU share, or no GPU at all
    study = StudyConfig.model_validate(ctx["study"])
    cfg = trial_config(ctx["base_raw"], params, study)
    strategy = cfg.al.strategy
    tags = {"study": study.study, "dataset": cfg.data.name, "strategy": strategy, "kind": study.kind}
    swept = {k: v for k, v in params.items() if k != "data.name"}
    if study.kind == "train":
        from aas_ray.orchestration.run import train_one

        cfg.tracking.run_name = f"{cfg.data.name}-{strategy}-" + "-".join(f"{k.split('.')[-1]}={v}" for k, v in swept.items())
        run_id, outcome = train_one(cfg, ctx["uri"], progress=False, parent_run_id=ctx["parent"], extra_tags=tags)
        tune.report({**_numeric(outcome.final), "mlflow_run_id": run_id})
        return
    name = f"{cfg.data.name}-{strategy}-" + "-".join(f"{k.split('.')[-1]}={v}" for k, v in swept.items())
    child = MlflowTracker.create(ctx["uri"], cfg.tracking.experiment, name, tags, ctx["parent"])
    child.log_params(cfg.flat())
    try:
        actor = ray.get_actor(actor_name(study.study, cfg.data.name))
        table = ray.get(actor.simulate.remote(cfg, [strategy], study.cycles))
        for row in table.to_dict("records"):
            child.log_metrics({k: v for k, v in _numeric(row).items() if k in SIM_METRICS}, step=int(row["cycle"]))
    except BaseException:
        child.finish("FAILED")
        raise
    child.finish()
    tune.report(_numeric(table.iloc[-1].to_dict()))


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
    and the study metric against utilised budget per strategy."""
    import matplotlib.pyplot as plt

    from aas_ray.orchestration.plots import save_figure

    out.mkdir(parents=True, exist_ok=True)
    cols = {c: c.removeprefix("config/") for c in df.columns if c.startswith("config/")}
    table = df.rename(columns=cols)
    keep = list(cols.values()) + [c for c in (*SIM_METRICS, "mAP", "mINP", "top1", "top5", "BAKS", "auc_roc", "pairs")
                                  if c in table.columns]
    table = table[list(dict.fromkeys(c for c in keep if c in table.columns))]
    if "al.strategy" in table.columns and "mAP" in table.columns:
        group = ["data.name"] + [k for k in study.search if k in table.columns and k != "al.strategy"]
        table = with_gap_closed(table, group, strategy="al.strategy")
    agg = aggregate(table, study)
    files = [out / "summary.csv", out / "summary.html"]
    table.to_csv(files[0], index=False)
    table.to_html(files[1], index=False, float_format=lambda v: f"{v:.4f}")
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


def tune_cli(args) -> int:
    study, base_raw = load_study(args.study, args.set)
    absolute_paths(base_raw, study)
    base_cfg = trial_config(base_raw, {"data.name": study.datasets[0]}, study)
    uri = resolve_tracking_uri(args.tracking_uri, base_cfg.tracking.tracking_uri)
    check_tracking_uri(uri)
    # Every dataset is read, checked and embedded before Ray starts: a missing or broken
    # dataset fails here in seconds, and trials find the features cached.
    loaded = {ds: _load_dataset(trial_config(base_raw, {"data.name": ds}, study)) for ds in study.datasets}
    if not ray.is_initialized():
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    trial_resources, actor_gpus = study_resources(study)
    parent = MlflowTracker.create(uri, base_cfg.tracking.experiment, f"study-{study.study}",
                                  {"study": study.study, "kind": study.kind, "datasets": ",".join(study.datasets)})
    parent.log_params({f"study.{k}": v for k, v in study.model_dump(mode="json").items()})
    actors = []
    try:
        if study.kind == "simulate":
            actors = [create_actor(study.study, ds, x, y, actor_gpus, int(study.resources_per_trial.cpu))
                      for ds, (x, y) in loaded.items()]
            log.info("clustering actors: %s", ray.get([a.info.remote() for a in actors]))
        param_space = {"data.name": tune.grid_search(study.datasets), **{k: _space(s) for k, s in study.search.items()}}
        ctx = {"study": study.model_dump(mode="json"), "base_raw": base_raw, "uri": uri, "parent": parent.run_id}
        trainable = tune.with_resources(partial(run_trial, ctx=ctx), trial_resources)
        storage = Path(base_cfg.output_dir) / "tune"
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(num_samples=study.num_samples, max_concurrent_trials=study.max_concurrent_trials,
                                        metric=study.metric, mode=study.mode),
            run_config=tune.RunConfig(name=f"{study.study}-{parent.run_id[:8]}", storage_path=str(storage), verbose=1),
        )
        results = tuner.fit()
    except BaseException:
        parent.finish("FAILED")
        raise
    finally:  # the clustering actors serve the trials only
        for a in actors:
            ray.kill(a)
    errors = results.errors
    df = results.get_dataframe()
    out = storage / f"{study.study}-{parent.run_id[:8]}" / "summary"
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
    done = len(results) - len(errors)
    parent.log_metrics({"trials_completed": done, "trials_failed": len(errors)}, step=0)
    if done:
        from aas_ray.orchestration.report import build_report

        build_report(uri, study.study, base_cfg.tracking.experiment, out.parent / "report", parent.run_id)
    for err in errors:
        log.error("trial failed: %s", err)
    parent.finish("FINISHED" if not errors else "FAILED")
    if study.register_model and done:
        from aas_ray.orchestration.embedder import register_model

        best = results.get_best_result(study.metric, study.mode).metrics["mlflow_run_id"]
        version = register_model(uri, best, study.register_model)
        parent.set_tag("registered_model", f"{study.register_model} version {version} (run {best})")
        log.info("best trial's model (run %s) registered as %s version %s", best, study.register_model, version)
    log.info("study %s: %d trials completed, %d failed; parent MLflow run %s; summary in %s", study.study, done,
             len(errors), parent.run_id, out)
    for name in ("aggregate.txt", "paired.txt"):
        if (out / name).is_file():
            print((out / name).read_text())
    return 0 if not errors else 1
