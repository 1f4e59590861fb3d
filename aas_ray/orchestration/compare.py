"""Strategies read against their bounds (docs/method.md §12): plain SpCL (``none``) below,
the supervised skyline above, and the share of the gap between them a strategy closes.

Runs are comparable when everything but the strategy is the same (dataset, seed, schedule,
clustering, budget): :func:`config_key` names that, and every run carries it as a tag so
bounds can be found in the tracking store later.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd

from aas_ray.eval.paired import paired_difference, wilcoxon_across

# What identifies a run besides its settings; excluded from the comparison key.
_NOT_SETTINGS = ("tracking", "output_dir")


def config_key(cfg) -> str:
    """Hash of every setting except the strategy (and where results go)."""
    d = cfg.model_dump(mode="json")
    for k in _NOT_SETTINGS:
        d.pop(k, None)
    d["al"].pop("strategy", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def gap_closed(value: float, none: float | None, supervised: float | None) -> float:
    """(value - none) / (supervised - none); NaN when a bound is missing or the gap is not positive."""
    if none is None or supervised is None or not all(map(math.isfinite, (value, none, supervised))):
        return float("nan")
    gap = supervised - none
    return (value - none) / gap if gap > 1e-9 else float("nan")


def with_gap_closed(table: pd.DataFrame, group: list[str], metric: str = "mAP",
                    strategy: str = "strategy") -> pd.DataFrame:
    """Add ``gap_closed`` to each row from the ``none`` and ``supervised`` rows of its group
    (the rows that share the ``group`` columns: dataset, seed, every swept setting but the
    strategy)."""
    out = table.copy()
    out["gap_closed"] = np.nan
    if metric not in out.columns or strategy not in out.columns:
        return out
    for _, sub in out.groupby(group, dropna=False) if group else [(None, out)]:
        bound = {s: sub.loc[sub[strategy] == s, metric].mean() for s in ("none", "supervised")}
        for i in sub.index:
            out.loc[i, "gap_closed"] = gap_closed(float(out.loc[i, metric]), bound["none"], bound["supervised"])
    return out


def bounds_in_store(client, experiment_id: str, key: str, metric: str = "eval/mAP") -> dict[str, float]:
    """The newest finished ``none`` and ``supervised`` runs with this comparison key."""
    out = {}
    for strategy in ("none", "supervised"):
        runs = client.search_runs([experiment_id], filter_string=f"tags.config_key = '{key}' and "
                                  f"tags.strategy = '{strategy}' and attributes.status = 'FINISHED'",
                                  order_by=["attributes.end_time DESC"], max_results=1)
        if runs and metric in runs[0].data.metrics:
            out[strategy] = runs[0].data.metrics[metric]
    return out


# Strategies that set the bounds of a comparison rather than take part in it.
BOUNDS = ("none", "supervised")


def contrasts(strategies, reference: str = "aas") -> list[tuple[str, str]]:
    """The pairs a verdict is read from: every strategy that asks pairs against plain SpCL
    (``none``), and ``reference`` against every other strategy that asks pairs."""
    present = list(dict.fromkeys(strategies))
    asking = [s for s in present if s not in BOUNDS]
    out = [(s, "none") for s in asking if "none" in present]
    if reference in asking:
        out += [(reference, s) for s in asking if s != reference]
    return out


def paired_table(table: pd.DataFrame, metric: str = "mAP", strategy: str = "strategy",
                 repeat: tuple[str, ...] = ("seed",), group: tuple[str, ...] = ("dataset",),
                 reference: str = "aas") -> pd.DataFrame:
    """Per group (dataset and any setting but the strategy and the repeat), each contrast of
    :func:`contrasts` as paired differences over the repeats (seeds) with a 95 % interval
    and its verdict (docs/method.md §12). Differences are in the metric's own units."""
    rows = []
    group = [g for g in group if g in table.columns]
    repeat = [r for r in repeat if r in table.columns]
    if metric not in table.columns or strategy not in table.columns:
        return pd.DataFrame()
    for key, sub in table.groupby(group, dropna=False) if group else [((), table)]:
        key = key if isinstance(key, tuple) else (key,)
        wide = sub.pivot_table(index=repeat or None, columns=strategy, values=metric, aggfunc="mean") if repeat \
            else sub.groupby(strategy)[metric].mean().to_frame().T
        for a, b in contrasts(wide.columns, reference):
            d = paired_difference(wide[a].to_numpy(), wide[b].to_numpy())
            rows.append({**dict(zip(group, key)), "contrast": f"{a} − {b}", "a": a, "b": b, "n": d.n,
                         "differences": " ".join(f"{v:+.4f}" for v in d.differences), "mean": d.mean,
                         "low": d.low, "high": d.high, "verdict": d.verdict(a, b)})
    return pd.DataFrame(rows)


def across_datasets(table: pd.DataFrame, metric: str = "mAP", strategy: str = "strategy",
                    dataset: str = "dataset", reference: str = "aas") -> pd.DataFrame:
    """Each contrast over datasets, as the paper tests it: a Wilcoxon signed-rank test on
    the per-dataset means. Empty with fewer than two datasets."""
    if dataset not in table.columns or table[dataset].nunique() < 2 or metric not in table.columns:
        return pd.DataFrame()
    means = table.groupby([dataset, strategy])[metric].mean().unstack(strategy)
    rows = []
    for a, b in contrasts(means.columns, reference):
        p, n = wilcoxon_across(means[a].to_numpy(), means[b].to_numpy())
        diff = (means[a] - means[b]).dropna()
        rows.append({"contrast": f"{a} − {b}", "datasets": n, "mean": float(diff.mean()) if len(diff) else np.nan,
                     "a_better": int((diff > 0).sum()), "wilcoxon_p": p})
    return pd.DataFrame(rows)


def format_paired(paired: pd.DataFrame, scale: float = 100.0, unit: str = "points") -> str:
    """The paired table as Markdown: mean difference [95 % interval] and the verdict."""
    if paired.empty:
        return ""
    keys = [c for c in paired.columns if c not in ("contrast", "a", "b", "n", "differences", "mean", "low", "high",
                                                   "verdict")]
    head = keys + ["contrast", "n", f"per repeat ({unit})", f"mean [95 % interval] ({unit})", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in paired.iterrows():
        per = " ".join(f"{scale * float(v):+.1f}" for v in str(r["differences"]).split())
        interval = "–" if pd.isna(r["mean"]) else (
            f"{scale * r['mean']:+.1f}" + ("" if pd.isna(r["low"]) else
                                            f" [{scale * r['low']:+.1f}, {scale * r['high']:+.1f}]"))
        lines.append("| " + " | ".join([str(r[k]) for k in keys] + [r["contrast"], str(r["n"]), per, interval,
                                                                    r["verdict"]]) + " |")
    return "\n".join(lines)


def format_across(across: pd.DataFrame, scale: float = 100.0) -> str:
    """:func:`across_datasets` as Markdown."""
    lines = ["| contrast | datasets | mean difference (points) | datasets where A is better | Wilcoxon p |",
             "|---|---|---|---|---|"]
    for _, r in across.iterrows():
        lines.append(f"| {r['contrast']} | {r['datasets']} | {scale * r['mean']:+.1f} | {r['a_better']} | "
                     f"{r['wilcoxon_p']:.3f} |")
    return "\n".join(lines)
