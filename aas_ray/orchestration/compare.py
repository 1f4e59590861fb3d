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
