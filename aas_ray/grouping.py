"""Group-by over integer ids, shared by every layer: one implementation of "the members of
each cluster / identity / region", vectorised (no Python loop over the groups)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def dense_ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map arbitrary ids to 0..k-1 (in sorted order of the ids); returns (ids, k)."""
    uniq, inv = np.unique(labels, return_inverse=True)
    return inv.astype(np.int64), uniq.size


def singletons_to_clusters(labels: np.ndarray) -> np.ndarray:
    """Give every -1 (noise) its own cluster id, so noise counts as singleton clusters."""
    out = np.asarray(labels).copy()
    noise = np.flatnonzero(out < 0)
    base = out.max() + 1 if out.size and out.max() >= 0 else 0
    out[noise] = base + np.arange(noise.size)
    return out


def group_sum(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Row sums of ``values`` per group id (a sparse indicator product; np.add.at is far slower)."""
    ind = sp.csr_matrix((np.ones(groups.size, dtype=values.dtype), (groups, np.arange(groups.size))),
                        shape=(n_groups, groups.size))
    return np.asarray(ind @ values)


@dataclass
class Groups:
    """Items grouped by a dense id in [0, k): the members of group g are
    ``order[start[g]:start[g + 1]]``, in their original (stable) order."""

    order: np.ndarray
    start: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, n_groups: int | None = None) -> "Groups":
        ids = np.asarray(ids)
        k = int(ids.max()) + 1 if n_groups is None and ids.size else int(n_groups or 0)
        order = np.argsort(ids, kind="stable")
        return cls(order, np.searchsorted(ids[order], np.arange(k + 1)))

    @classmethod
    def of_labels(cls, labels) -> tuple["Groups", np.ndarray]:
        """Group arbitrary labels (strings, sparse ints); returns (groups, the distinct labels)."""
        uniq, inv = np.unique(np.asarray(labels), return_inverse=True)
        return cls.of(inv, uniq.size), uniq

    def __len__(self) -> int:
        return self.start.size - 1

    def members(self, g: int) -> np.ndarray:
        return self.order[self.start[g]:self.start[g + 1]]

    def size(self, g) -> np.ndarray:
        g = np.asarray(g)
        return self.start[g + 1] - self.start[g]

    def __iter__(self):
        for g in range(len(self)):
            yield self.members(g)
