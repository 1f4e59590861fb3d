"""What a finished run leaves its user (docs/method.md §16): every training image with the
individual it ended in (``individuals.csv``), the final model's embeddings of those images
(``embeddings.npy``: what new photos are matched against) and the "new individual"
threshold chosen on the run's own open-set evaluation (``open_set.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.checks import InputError
from aas_ray.data.catalogue import Catalogue
from aas_ray.eval.individuals import medoid_distances, name_individuals, new_individual_threshold, rank_individuals

INDIVIDUALS = "individuals.csv"
EMBEDDINGS = "embeddings.npy"
OPEN_SET = "open_set.json"


def individuals_frame(cat: Catalogue, labels: np.ndarray, features: np.ndarray, confirmed: np.ndarray) -> pd.DataFrame:
    """One row per training image, in the run's order: its individual, how many images that
    individual has, whether an answer's must-link touches the image, and its cosine distance
    to the individual's medoid in ``features`` (those the labels were made from)."""
    individual = name_individuals(labels)
    medoid, dist = medoid_distances(individual, features)
    root = Path(cat.root).expanduser().resolve()
    df = pd.DataFrame({
        "image_id": cat.df["image_id"].astype(str).to_numpy(),
        "path": [str(root / p) for p in cat.df["path"]],
        "individual": individual,
        "cluster_size": np.bincount(individual)[individual],
        "singleton": np.bincount(individual)[individual] == 1,
        "confirmed_by_person": np.asarray(confirmed, dtype=bool),
        "distance_to_medoid": np.round(dist, 6),
        "medoid": medoid == np.arange(individual.size),
    })
    if "bbox" in cat.df.columns:
        df["bbox"] = cat.df["bbox"].astype(str).to_numpy()
    return df


def write_run_outputs(run_dir: Path, cat: Catalogue, labels: np.ndarray, features: np.ndarray, confirmed: np.ndarray,
                      train_embeddings: np.ndarray, query_embeddings: np.ndarray, known: np.ndarray) -> dict:
    """``individuals.csv``, ``embeddings.npy`` and ``open_set.json`` in the run folder; returns
    the open-set threshold record. ``known``: whether each query's identity was trained on."""
    run_dir = Path(run_dir)
    df = individuals_frame(cat, labels, features, confirmed)
    df.to_csv(run_dir / INDIVIDUALS, index=False)
    np.save(run_dir / EMBEDDINGS, np.ascontiguousarray(train_embeddings, dtype=np.float32))
    best = rank_individuals(query_embeddings, train_embeddings, df["individual"].to_numpy(), k=1).score[:, 0]
    record = new_individual_threshold(best, known)
    (run_dir / OPEN_SET).write_text(json.dumps(record, indent=1))
    return record


@dataclass
class RunOutputs:
    individuals: pd.DataFrame
    embeddings: np.ndarray
    open_set: dict


def read_run_outputs(run_dir: Path, with_embeddings: bool = True) -> RunOutputs:
    """A finished run's outputs, or a one-line error saying which is missing and why."""
    run_dir = Path(run_dir)
    names = (INDIVIDUALS, OPEN_SET) + ((EMBEDDINGS,) if with_embeddings else ())
    missing = [n for n in names if not (run_dir / n).is_file()]
    if missing:
        raise InputError(f"run {run_dir} has no {missing[0]}: a run writes its individuals when it finishes "
                         "(finish it with `aas-ray run --resume`; runs of older versions have none)")
    df = pd.read_csv(run_dir / INDIVIDUALS, dtype={"image_id": str, "path": str, "bbox": str}, keep_default_na=False)
    lacking = [c for c in ("image_id", "path", "individual", "cluster_size", "confirmed_by_person") if c not in df]
    if lacking:
        raise InputError(f"{run_dir / INDIVIDUALS} lacks column(s) {lacking}")
    emb = np.load(run_dir / EMBEDDINGS) if with_embeddings else np.empty((len(df), 0), np.float32)
    if emb.shape[0] != len(df):
        raise InputError(f"{run_dir / EMBEDDINGS} has {emb.shape[0]} rows but {run_dir / INDIVIDUALS} {len(df)} images")
    try:
        open_set = json.loads((run_dir / OPEN_SET).read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{run_dir / OPEN_SET} is not JSON: {err}") from None
    return RunOutputs(df, emb, open_set)
