"""``aas-ray report <study>``: the paper's Table 1 and Fig. 3 for a study, rebuilt from the
tracking store (docs/method.md §12, §14).

The table has one row per strategy and, per dataset and averaged over datasets, each
metric as mean ± sd over the seeds, the utilised budget and the gap closed against plain
SpCL and the supervised skyline of the same dataset and seed. The curves plot a metric
against the pairs asked (mAP for training studies, pseudo-label pair F1 and ARI for
simulations), one line per strategy. An HTML page and the PNGs go to a folder and onto the
study's parent MLflow run.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import pandas as pd

from aas_ray.checks import InputError
from aas_ray.config import STRATEGIES
from aas_ray.orchestration.compare import across_datasets, paired_table, with_gap_closed

log = logging.getLogger(__name__)

TRAIN_METRICS = [("mAP", "eval/mAP"), ("mINP", "eval/mINP"), ("BAKS", "eval/BAKS"), ("AUC-ROC", "eval/auc_roc"),
                 ("Top-1", "eval/top1"), ("Top-3", "eval/top3"), ("Top-5", "eval/top5"), ("Top-10", "eval/top10")]
SIM_METRICS = [("pair F1", "pair_f1"), ("ARI", "ari"), ("NMI", "nmi"), ("must-links", "must_link")]
ORDER = list(STRATEGIES)
# rebuilt from a description, without the authors' code (docs/method.md §15): so named wherever reported
RECONSTRUCTED = ("gbas", "lbas")


def shown(strategy: str) -> str:
    """A strategy's name in tables and legends: reconstructions say so."""
    return f"{strategy} (reconstruction)" if strategy in RECONSTRUCTED else strategy


def _ordered(strategies) -> list:
    return sorted(strategies, key=lambda s: ORDER.index(s) if s in ORDER else 99)


def study_runs(client, experiment: str, study: str, parent_id: str | None = None):
    """The study's parent run (the newest, unless named) and its child runs."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise InputError(f"no MLflow experiment {experiment!r} in this tracking store")
    if parent_id is None:
        parents = client.search_runs([exp.experiment_id], filter_string=f"tags.study = '{study}' and "
                                     f"attributes.run_name = 'study-{study}'", order_by=["attributes.start_time DESC"])
        if not parents:
            raise InputError(f"no study {study!r} in experiment {experiment!r} (its parent run is study-{study})")
        parent = parents[0]
    else:
        parent = client.get_run(parent_id)
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=5000)
    if not children:
        raise InputError(f"study {study!r} (run {parent.info.run_id}) has no trial runs")
    return parent, children


def trial_table(children, kind: str) -> pd.DataFrame:
    metrics = TRAIN_METRICS if kind == "train" else SIM_METRICS
    rows = []
    for r in children:
        if r.info.status != "FINISHED":
            continue
        row = {"run_id": r.info.run_id, "dataset": r.data.tags.get("dataset"), "strategy": r.data.tags.get("strategy"),
               "seed": r.data.params.get("seed")}
        for name, key in metrics:
            row[name] = r.data.metrics.get(key)
        row["budget"] = r.data.metrics.get("eval/utilised_budget" if kind == "train" else "utilised_budget")
        rows.append(row)
    df = pd.DataFrame(rows)
    if kind == "train" and len(df):
        df = with_gap_closed(df, ["dataset", "seed"], metric="mAP")
    return df


def table_one(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Strategies x metrics, mean ± sd over seeds, per dataset and over datasets."""
    metrics = [m for m, _ in (TRAIN_METRICS if kind == "train" else SIM_METRICS)] + ["budget"] + \
        (["gap_closed"] if "gap_closed" in df.columns else [])
    pct = set(m for m, _ in TRAIN_METRICS) | {"budget", "gap_closed", "pair F1", "ARI", "NMI"}
    out = []
    for ds, sub in list(df.groupby("dataset")) + [("mean of datasets", None)]:
        if sub is None:  # per strategy, the mean over datasets of the per-dataset means
            per = df.groupby(["dataset", "strategy"])[metrics].mean()
            agg = per.groupby("strategy").agg(["mean", "std"])
            n = df.groupby("strategy")["dataset"].nunique()
        else:
            agg = sub.groupby("strategy")[metrics].agg(["mean", "std"])
            n = sub.groupby("strategy").size()
        for s in _ordered(agg.index):
            row = {"dataset": ds, "strategy": shown(s), "n": int(n[s])}
            for m in metrics:
                mu, sd = agg.loc[s, (m, "mean")], agg.loc[s, (m, "std")]
                f = 100 if m in pct else 1
                d = 3 if m == "budget" else 1 if m in pct else 0
                row[m] = "–" if pd.isna(mu) else f"{f * mu:.{d}f} ± {0 if pd.isna(sd) else f * sd:.{d}f}"
            out.append(row)
    return pd.DataFrame(out)


def curves(client, df: pd.DataFrame, kind: str, out: Path) -> list[Path]:
    """Metric against pairs asked, one line per strategy (mean over seeds), one figure per dataset."""
    import matplotlib.pyplot as plt

    from aas_ray.orchestration.plots import save_figure

    ys = [("mAP", "eval/mAP")] if kind == "train" else [("pair F1", "pair_f1"), ("ARI", "ari")]
    x_key = "eval/pairs" if kind == "train" else "utilised_budget"
    files = []
    for ds, sub in df.groupby("dataset"):
        fig, axes = plt.subplots(1, len(ys), figsize=(5.2 * len(ys), 3.8), squeeze=False)
        for ax, (label, key) in zip(axes[0], ys):
            for s in _ordered(sub["strategy"].unique()):
                pts = []
                for rid in sub.loc[sub["strategy"] == s, "run_id"]:
                    xs = {m.step: m.value for m in client.get_metric_history(rid, x_key)}
                    for m in client.get_metric_history(rid, key):
                        if m.step in xs:
                            pts.append((m.step, xs[m.step], m.value))
                if not pts:
                    continue
                p = pd.DataFrame(pts, columns=["step", "x", "y"]).groupby("step").mean()
                style = dict(ls="--", color="grey") if s in ("none", "supervised") else {}
                if s in ("none", "supervised"):  # bounds: a line at their final value
                    ax.axhline(100 * p["y"].iloc[-1], label=s, **style)
                else:
                    ax.plot(p["x"] * (1 if kind == "train" else 100), 100 * p["y"], marker="o", label=shown(s))
            ax.set_xlabel("pairs asked" if kind == "train" else "utilised budget (% of all pairs)")
            ax.set_ylabel(f"{label} (%)")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        files.append(save_figure(fig, out / f"curve-{ds}.png",
                                 f"{ds}: {', '.join(y for y, _ in ys)} against the pairs asked (mean over seeds)"))
    return files


def paired(trials: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired differences over seeds per dataset, with 95 % intervals and verdicts, and the
    Wilcoxon test across datasets (docs/method.md §12), in the table's metric."""
    metric = "mAP" if kind == "train" else "pair F1"
    return (paired_table(trials, metric, "strategy", ("seed",), ("dataset",)),
            across_datasets(trials, metric, "strategy", "dataset"))


def write_html(study: str, kind: str, table: pd.DataFrame, trials: pd.DataFrame, pngs: list[Path], path: Path,
               pairs: pd.DataFrame | None = None, across: pd.DataFrame | None = None) -> None:
    def frame(df):
        return df.to_html(index=False, escape=True, border=0, classes="t", na_rep="–")

    body = [f"<h1>Study {html.escape(study)}</h1>",
            "<p>Each cell: mean ± sd over seeds (%, but for counts). <b>gap closed</b> = (mAP − mAP<sub>none</sub>) / "
            "(mAP<sub>supervised</sub> − mAP<sub>none</sub>) on the same dataset and seed; <b>budget</b>: pairs asked "
            "over all pairs. All strategies but none and supervised are refined by NP3.</p>" if kind == "train" else
            "<p>Pseudo-label quality after the last cycle on frozen features (mean ± sd over seeds).</p>",
            "<h2>Table 1</h2>", frame(table)]
    if pairs is not None and not pairs.empty:
        diffs = pairs.drop(columns=["a", "b"]).copy()
        for c in ("mean", "low", "high"):
            diffs[c] = (100 * diffs[c]).round(1)
        body += ["<h2>Paired differences</h2>", "<p>A − B on the same dataset and seed, in points; the interval is "
                 "a 95 % t-interval over the seeds, and a verdict is given only when it excludes 0.</p>", frame(diffs)]
    if across is not None and not across.empty:
        body += ["<p>Across datasets, the Wilcoxon signed-rank test on the per-dataset means (fewer than 6 datasets "
                 "cannot reach p &lt; 0.05):</p>", frame(across.round(4))]
    body += ["<h2>Budget curves</h2>"]
    if trials["strategy"].isin(RECONSTRUCTED).any():
        body.insert(2, "<p><b>gbas</b> and <b>lbas</b> (He et al., ICME 2024) are reconstructions from a description, "
                       "without the authors' code: every choice is in docs/method.md §15.</p>")
    body += [f'<img src="{html.escape(p.name)}" style="max-width:100%">' for p in pngs]
    trials = trials.drop(columns=["run_id"]).assign(strategy=trials["strategy"].map(shown))
    body += ["<h2>Trials</h2>", frame(trials.round(4))]
    css = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222} table.t{border-collapse:collapse;"
           "font-size:0.9em} .t td,.t th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>aas-ray study {html.escape(study)}"
                    f"</title><style>{css}</style></head><body>{''.join(body)}</body></html>")


def build_report(uri: str, study: str, experiment: str = "aas-ray", out: Path | None = None,
                 parent_id: str | None = None, log_to_parent: bool = True) -> Path:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent, children = study_runs(client, experiment, study, parent_id)
    kind = parent.data.tags.get("kind", "train")
    trials = trial_table(children, kind)
    if trials.empty:
        raise InputError(f"study {study!r} has no finished trials yet")
    table = table_one(trials, kind)
    out = Path(out or f"report-{study}")
    out.mkdir(parents=True, exist_ok=True)
    pngs = curves(client, trials, kind, out)
    pairs, across = paired(trials, kind)
    table.to_csv(out / "table1.csv", index=False)
    trials.to_csv(out / "trials.csv", index=False)
    pairs.to_csv(out / "paired.csv", index=False)
    write_html(study, kind, table, trials, pngs, out / "report.html", pairs, across)
    if log_to_parent:
        for f in [out / "report.html", out / "table1.csv", out / "trials.csv", out / "paired.csv", *pngs]:
            client.log_artifact(parent.info.run_id, str(f), "report")
    log.info("report of study %s (%d trials) in %s", study, len(trials), out)
    return out
