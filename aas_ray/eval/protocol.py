"""The open-set evaluation protocol of docs/method.md §11 (paper §4, "Experimental Protocol")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aas_ray.checks import InputError, unit_features
from aas_ray.grouping import Groups


def identity_aware_split(identities, test_fraction: float, seed: int) -> np.ndarray:
    """Seeded train/test split *within* each identity (boolean ``is_test``).

    Used when a dataset brings no ``split`` column. Each identity with at least two images
    puts ``round(test_fraction * count)`` of them (at least one, never all) into test, so
    known identities have queries and still have gallery candidates.
    """
    ids = np.asarray(identities)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(ids.size, dtype=bool)
    for members in Groups.of_labels(ids)[0]:
        if members.size < 2:
            continue
        k = int(np.clip(round(test_fraction * members.size), 1, members.size - 1))
        is_test[rng.choice(members, size=k, replace=False)] = True
    return is_test


@dataclass
class OpenSetSplit:
    """Indices into the catalogue for each role (docs/method.md §11)."""

    train: np.ndarray  # unlabeled training images: train split of known identities
    gallery: np.ndarray  # up to ``gallery_size`` exemplars per known identity (from train)
    query: np.ndarray  # the whole test split
    known_identities: np.ndarray
    unknown_identities: np.ndarray


def select_exemplars(members: np.ndarray, x: np.ndarray | None, k: int, rng: np.random.Generator) -> np.ndarray:
    """The ``k`` most central images of one identity (largest summed cosine similarity)."""
    if members.size <= k:
        return members
    if x is None:
        return np.sort(rng.choice(members, size=k, replace=False))
    f = x[members]
    centrality = f @ f.sum(axis=0)
    return np.sort(members[np.argsort(-centrality, kind="stable")[:k]])


def open_set_split(
    identities,
    is_test,
    seed: int = 0,
    unknown_fraction: float = 0.2,
    gallery_size: int = 5,
    features: np.ndarray | None = None,
) -> OpenSetSplit:
    """docs/method.md §11: query = test; 20% of training identities held out as unknown (seeded);
    gallery = up to ``gallery_size`` exemplars of each other identity, chosen by feature
    similarity (``features`` of all catalogue rows; random when ``None``).

    Held-out identities are removed from the training pool too: they are unknown to the
    model as well as to the gallery. Deterministic for a seed.
    """
    ids = np.asarray(identities)
    test = np.asarray(is_test, dtype=bool)
    if ids.size != test.size:
        raise InputError(f"{ids.size} identities but {test.size} split flags")
    if not 0.0 <= unknown_fraction < 1.0:
        raise InputError(f"unknown_fraction must be in [0, 1); got {unknown_fraction}")
    if gallery_size < 1:
        raise InputError(f"gallery_size must be >= 1; got {gallery_size}")
    train_ids = np.unique(ids[~test])
    if train_ids.size < 2:
        raise InputError(
            f"the training split has {train_ids.size} identity(ies); re-identification needs at least 2"
        )
    if not test.any():
        raise InputError("the test split is empty: there is nothing to query")
    x = unit_features(features) if features is not None else None
    rng = np.random.default_rng(seed)
    n_unknown = int(round(unknown_fraction * train_ids.size))
    n_unknown = min(n_unknown, train_ids.size - 1)
    unknown = np.sort(rng.choice(train_ids, size=n_unknown, replace=False)) if n_unknown else train_ids[:0]
    known = np.setdiff1d(train_ids, unknown)
    if not np.isin(ids[test], known).any():
        raise InputError(
            "no test image belongs to a known training identity, so mAP and Top-k are undefined; "
            "the dataset's split has disjoint identities (set data.use_split: false for a seeded "
            "identity-aware split)"
        )
    train = np.flatnonzero(~test & np.isin(ids, known))
    gallery = [select_exemplars(train[m], x, gallery_size, rng) for m in Groups.of_labels(ids[train])[0]]
    return OpenSetSplit(
        train=train,
        gallery=np.sort(np.concatenate(gallery)),
        query=np.flatnonzero(test),
        known_identities=known,
        unknown_identities=unknown,
    )
