"""Why a strategy does or does not close the gap: the label diagnostics of finished runs.

For every strategy in a tracking store (mean over its seeds): final mAP; the pseudo-labels'
pair precision / recall / F1 against the true identities at the first labelled epoch and at
the last (view A alone and the labels trained on, after NP3); clusters and outliers; the pairs
asked per pool and how many of them were the same individual (the pools' yields); the
must-links the answers gave.

    python benchmarks/label_diagnostics.py --tracking-uri sqlite:///mlflow.db [--dataset LionData]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from mlflow import MlflowClient

FIRST_LAST = ["labels/view_a_precision", "labels/view_a_recall", "labels/view_a_f1", "labels/train_precision",
              "labels/train_recall", "labels/train_f1", "views/clusters", "views/outliers", "views/eps"]
SUMMED = ["oracle/pairs_asked", "oracle/asked_us", "oracle/ml_us", "oracle/asked_os", "oracle/ml_os",
          "oracle/asked_random", "oracle/ml_random", "oracle/must_link", "oracle/unspent"]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def run_row(client: MlflowClient, run) -> dict:
    rid = run.info.run_id
    row = {"strategy": run.data.tags.get("strategy"), "seed": int(run.data.tags.get("seed", -1)),
           "mAP": run.data.metrics.get("eval/mAP", np.nan)}
    for key in FIRST_LAST:
        h = history(client, rid, key)
        name = key.split("/", 1)[1]
        row[f"{name} first"] = h[0][1] if h else np.nan
        row[f"{name} last"] = h[-1][1] if h else np.nan
    for key in SUMMED:
        h = history(client, rid, key)
        row[key.split("/", 1)[1]] = sum(v for _, v in h) if h else np.nan
    # must_link is the running count of must-link answers: its last value, not a sum
    h = history(client, rid, "oracle/must_link")
    row["must_link"] = h[-1][1] if h else np.nan
    return row


def table(uri: str, experiment: str, dataset: str | None) -> pd.DataFrame:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} in {uri}")
    query = "attributes.status = 'FINISHED'" + (f" and tags.dataset = '{dataset}'" if dataset else "")
    runs = client.search_runs([exp.experiment_id], filter_string=query, max_results=10_000)
    return pd.DataFrame([run_row(client, r) for r in runs if "parent" not in r.data.tags.get("mlflow.runName", "")])


def yields(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    for pool in ("us", "os", "random"):
        out[f"same-individual rate {pool}"] = df[f"ml_{pool}"] / df[f"asked_{pool}"].where(df[f"asked_{pool}"] > 0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", default="aas-ray")
    p.add_argument("--dataset")
    args = p.parse_args()
    df = table(args.tracking_uri, args.experiment, args.dataset)
    if df.empty:
        raise SystemExit("no finished runs")
    df = pd.concat([df, yields(df)], axis=1)
    seeds = df.groupby("strategy")["seed"].nunique().rename("seeds")
    mean = df.drop(columns="seed").groupby("strategy").mean(numeric_only=True)
    mean.insert(0, "seeds", seeds)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 100)
    groups = {"mAP and labels": ["seeds", "mAP", "view_a_f1 first", "view_a_f1 last", "train_precision first",
                                 "train_recall first", "train_f1 first", "train_precision last", "train_recall last",
                                 "train_f1 last"],
              "clusters": ["clusters first", "clusters last", "outliers first", "outliers last", "eps first",
                           "eps last"],
              "pairs and yields": ["pairs_asked", "unspent", "asked_us", "asked_os", "asked_random", "must_link",
                                   "same-individual rate us", "same-individual rate os",
                                   "same-individual rate random"]}
    for title, cols in groups.items():
        print(f"\n{title} (mean over seeds)\n" + mean[[c for c in cols if c in mean]].round(3).to_string())


if __name__ == "__main__":
    main()
