"""Dataset preparation shared by every entry point: catalogue, image checks, split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.data import Catalogue, load_catalogue
from aas_ray.data.images import check_images
from aas_ray.eval import OpenSetSplit, identity_aware_split, open_set_split

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    cat: Catalogue
    is_test: np.ndarray

    @property
    def identities(self) -> np.ndarray:
        return self.cat.df["identity"].to_numpy()


def prepare_data(cfg, progress: bool = True) -> PreparedData:
    """Catalogue with every image checked, and the train/test assignment (SPEC §11)."""
    cat = check_images(load_catalogue(cfg.data, progress), cfg.data.skip_bad_images)
    if cfg.data.use_split and "split" in cat.df.columns:
        is_test = (cat.df["split"] == "test").to_numpy()
    else:
        is_test = identity_aware_split(cat.df["identity"].to_numpy(), cfg.data.test_fraction, cfg.seed)
    return PreparedData(cat, is_test)


def make_split(cfg, data: PreparedData, reference_features: np.ndarray | None) -> OpenSetSplit:
    return open_set_split(
        data.identities, data.is_test, seed=cfg.seed, unknown_fraction=cfg.eval.unknown_fraction,
        gallery_size=cfg.eval.gallery_size, features=reference_features,
    )


def split_frame(cat: Catalogue, split: OpenSetSplit) -> pd.DataFrame:
    """One row per image: its role (train / gallery / query / held_out) and whether it is known."""
    role = np.full(len(cat), "held_out", dtype=object)
    role[split.train] = "train"
    role[split.query] = "query"
    df = cat.df[["image_id", "identity", "path"]].copy()
    df["role"] = role
    df["gallery"] = False
    df.loc[split.gallery, "gallery"] = True
    df["known"] = df["identity"].isin(split.known_identities)
    return df


def save_split(cat: Catalogue, split: OpenSetSplit, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    split_frame(cat, split).to_csv(path, index=False)
    return path
