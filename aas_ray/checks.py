"""Input checks shared by the algorithm layer: clear errors instead of silent garbage."""

from __future__ import annotations

import numpy as np

from aas_ray.errors import AasRayError


class InputError(AasRayError, ValueError):
    """Bad user input (features, labels, constraints, catalogues), with a message naming it."""


def unit_features(features, name: str = "features") -> np.ndarray:
    """Return ``features`` as a C-contiguous float32 array of L2-normalised rows (docs/method.md §0).

    The result may be ``features`` itself (when it already is one); treat it as read-only.

    Rejects what would otherwise poison every downstream stage silently: wrong rank,
    no rows, NaN/inf and all-zero rows (which have no direction to normalise).
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (n, d); got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {x.shape})")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise InputError(
            f"{name} contain NaN or inf in {rows.size} row(s), first rows {rows[:10].tolist()}"
        )
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    zero = norms < 1e-12
    if zero.any():
        rows = np.flatnonzero(zero)
        raise InputError(f"{name} have all-zero rows {rows[:10].tolist()}; cannot L2-normalise")
    # Features are usually unit already (every stage normalises once); then the array is
    # returned as is: callers treat the result as read-only and never write into it.
    if np.abs(norms - 1.0).max() <= 1e-6:
        return x
    # Otherwise a new array: the input may be read-only (Ray's object store) or the caller's.
    return x / norms[:, None]


def labels_array(labels, n: int | None = None, name: str = "labels") -> np.ndarray:
    """Integer cluster labels, -1 meaning noise / singleton; checks length against ``n``."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise InputError(f"{name} must be 1-D; got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise InputError(f"{name} must be integers; got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if n is not None and y.size != n:
        raise InputError(f"{name} has {y.size} entries but there are {n} images")
    if y.size and y.min() < -1:
        raise InputError(f"{name} contains {int(y.min())}; only -1 may mark noise")
    return y


def pair_array(pairs, n: int, name: str) -> np.ndarray:
    """An (m, 2) int64 array of image-index pairs, each inside [0, n), no self-pairs."""
    p = np.asarray(pairs if pairs is not None else np.empty((0, 2)), dtype=np.int64)
    if p.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise InputError(f"{name} must have shape (m, 2); got {p.shape}")
    if p.min() < 0 or p.max() >= n:
        raise InputError(f"{name} holds an index outside [0, {n}): min {p.min()}, max {p.max()}")
    same = p[:, 0] == p[:, 1]
    if same.any():
        raise InputError(f"{name} pairs an image with itself: {p[same][:5].tolist()}")
    return p


def check_param(owner: str, name: str, value, low=None, high=None, *, low_open: bool = False,
                integer: bool = False) -> None:
    """Refuse a parameter outside ``[low, high]`` (``(low, high]`` with ``low_open``) or, with
    ``integer``, not an integer, in one line naming it: ``AASSampler: epsilon must be in [0, 1];
    got 5``."""
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    ok = ok and not isinstance(value, bool) and bool(np.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        kind = "an integer" if integer else "a number"
        if low is not None and high is not None:
            where = f" in {'(' if low_open else '['}{low}, {high}]"
        elif low is not None:
            where = f" {'>' if low_open else '>='} {low}"
        else:
            where = ""
        raise InputError(f"{owner}: {name} must be {kind}{where}; got {value!r}")
