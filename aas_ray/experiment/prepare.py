"""What every entry point does first, written once: the catalogue with its images checked,
the zero-shot features of the untrained backbone, the open-set split (docs/method.md §11)
and the unlabeled training pool."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.data import Catalogue, load_catalogue
from aas_ray.data.image_cache import cached_catalogue
from aas_ray.data.images import check_images
from aas_ray.eval import OpenSetSplit, identity_aware_split, open_set_split
from aas_ray.models import FeatureCache, build_model, extract_features, resolve_device

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    cat: Catalogue
    is_test: np.ndarray

    @property
    def identities(self) -> np.ndarray:
        return self.cat.df["identity"].to_numpy()


def checked_catalogue(cat: Catalogue, cfg, skip_bad: bool, progress: bool = True) -> Catalogue:
    """``cat`` with every image checked and, with ``data.image_cache``, decoded once at the
    network's input size; a bad image is an error naming it, or with ``skip_bad`` dropped."""
    if cfg.data.image_cache:
        return cached_catalogue(cat, tuple(cfg.model.image_size), cfg.data.cache_dir, skip_bad, progress)
    return check_images(cat, skip_bad)


def prepare_data(cfg, progress: bool = True) -> PreparedData:
    """Catalogue with every image checked (and, with ``data.image_cache``, decoded once at the
    network's input size), and the train/test assignment (docs/method.md §11)."""
    cat = checked_catalogue(load_catalogue(cfg.data, progress), cfg, cfg.data.skip_bad_images, progress)
    if cfg.data.use_split and "split" in cat.df.columns:
        is_test = (cat.df["split"] == "test").to_numpy()
    else:
        is_test = identity_aware_split(cat.df["identity"].to_numpy(), cfg.data.test_fraction, cfg.seed)
    return PreparedData(cat, is_test)


def dataset_features(cfg, data: PreparedData, progress: bool = True) -> np.ndarray:
    """Features of every image by the configured (untrained) backbone, cached on disk."""
    device = resolve_device(cfg.model.device)

    def compute():
        return extract_features(build_model(cfg.model), data.cat, cfg.model.image_size, cfg.model.batch_size,
                                cfg.model.workers, device, progress, desc=f"features {data.cat.name}",
                                amp=cfg.train.amp)

    return FeatureCache(cfg.data.cache_dir).get_or_compute(data.cat, cfg.model, compute)


def make_split(cfg, data: PreparedData, reference_features: np.ndarray | None) -> OpenSetSplit:
    return open_set_split(
        data.identities, data.is_test, seed=cfg.seed, unknown_fraction=cfg.eval.unknown_fraction,
        gallery_size=cfg.eval.gallery_size, features=reference_features,
    )


@dataclass
class Experiment:
    """One dataset ready for AL: catalogue, zero-shot features of every image, the split."""

    data: PreparedData
    features: np.ndarray
    split: OpenSetSplit

    @property
    def train_cat(self) -> Catalogue:
        return self.data.cat.subset(self.split.train)

    @property
    def train_features(self) -> np.ndarray:
        return self.features[self.split.train]

    @property
    def truth(self) -> np.ndarray:
        """Ground-truth identity of each training image (only the simulated oracle, the
        supervised skyline and the diagnostics may look)."""
        return self.data.identities[self.split.train]


def prepare_experiment(cfg, progress: bool = True) -> Experiment:
    """Catalogue -> zero-shot features -> split: the gallery exemplars are chosen with the
    untrained backbone's features, so every strategy of a seed shares one split."""
    data = prepare_data(cfg, progress)
    feats = dataset_features(cfg, data, progress)
    return Experiment(data, feats, make_split(cfg, data, feats))


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
