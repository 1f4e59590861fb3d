"""The individuals of a finished run and new photos ranked against them (docs/method.md §16):
individual numbers, medoid distances, per-individual scores and the "new individual"
threshold. Arrays in, arrays out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from aas_ray.checks import InputError, labels_array
from aas_ray.grouping import Groups, dense_ids, group_sum, singletons_to_clusters


def name_individuals(labels) -> np.ndarray:
    """Final labels (-1 = unclustered) as individual numbers 1..K: the largest cluster is 1
    (ties: the one whose first image comes first), and every unclustered image is an
    individual of its own, after all clusters."""
    lab = singletons_to_clusters(labels_array(labels, name="final labels"))
    dense, k = dense_ids(lab)
    sizes = np.bincount(dense, minlength=k)
    first = np.full(k, dense.size, dtype=np.int64)
    np.minimum.at(first, dense, np.arange(dense.size))
    rank = np.empty(k, dtype=np.int64)
    rank[np.lexsort((first, -sizes))] = np.arange(1, k + 1)
    return rank[dense]


def medoid_distances(individuals: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each image's individual's medoid, cosine distance to it). The medoid is the member
    with the largest summed cosine similarity to its individual; for unit rows that is the
    member with the largest dot product with the members' sum, so it costs O(n d)."""
    dense, k = dense_ids(np.asarray(individuals))
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] != dense.size:
        raise InputError(f"{dense.size} individuals but {x.shape[0]} feature rows")
    centrality = np.einsum("ij,ij->i", x, group_sum(x, dense, k)[dense])
    order = np.lexsort((-centrality, dense))  # by individual, most central first
    medoid = order[np.searchsorted(dense[order], np.arange(k))][dense]
    dist = 1.0 - np.einsum("ij,ij->i", x, x[medoid])
    return medoid, np.clip(dist, 0.0, 2.0)


@dataclass
class Ranking:
    """Per query, its ``k`` best individuals: their numbers, scores and the index of each
    one's most similar image (rows: queries, columns: ranks)."""

    individual: np.ndarray
    score: np.ndarray
    best_image: np.ndarray


def rank_individuals(queries: np.ndarray, gallery: np.ndarray, individuals: np.ndarray, k: int = 5,
                     chunk: int = 1024) -> Ranking:
    """The ``k`` individuals most similar to each query (cosine similarity of unit rows).

    An individual scores its most similar image (max over its images, the nearest-neighbour
    rule that the evaluation's top-1 and AUC-ROC use, docs/method.md §11): a mean over its top
    images would count against the many individuals photographed only once or twice.
    """
    ind = np.asarray(individuals)
    if gallery.shape[0] != ind.size:
        raise InputError(f"{ind.size} individuals but {gallery.shape[0]} gallery rows")
    if queries.shape[1] != gallery.shape[1]:
        raise InputError(f"queries have {queries.shape[1]} dimensions, the gallery {gallery.shape[1]}")
    groups, names = Groups.of_labels(ind)
    order, start = groups.order, groups.start[:-1]
    g = np.ascontiguousarray(gallery[order], dtype=np.float32)
    k = min(k, names.size)
    out = Ranking(np.empty((len(queries), k), dtype=names.dtype), np.empty((len(queries), k), dtype=np.float32),
                  np.empty((len(queries), k), dtype=np.int64))
    for lo in range(0, len(queries), chunk):
        sim = np.asarray(queries[lo:lo + chunk], dtype=np.float32) @ g.T
        per = np.maximum.reduceat(sim, start, axis=1)
        top = np.argsort(-per, axis=1, kind="stable")[:, :k]
        for r, row in enumerate(top):
            q = lo + r
            out.individual[q] = names[row]
            out.score[q] = per[r, row]
            for c, j in enumerate(row):
                members = slice(groups.start[j], groups.start[j + 1])
                out.best_image[q, c] = order[members][np.argmax(sim[r, members])]
    return out


def new_individual_threshold(best: np.ndarray, known: np.ndarray) -> dict:
    """The score below which a photo is called a new individual, chosen on a run's open-set
    evaluation (docs/method.md §16): ``best`` is each query's best individual score, ``known``
    whether its identity was trained on. Youden's J (TPR - FPR, equivalently the best
    balanced accuracy) on the ROC of known (positive) against unknown queries; the
    threshold sits halfway between the chosen score and the next lower one, so a score
    recomputed with float noise falls on the same side. NaN when there is no known or no
    unknown query, or no threshold does better than chance."""
    best = np.asarray(best, dtype=np.float64)
    known = np.asarray(known, dtype=bool)
    if best.shape != known.shape:
        raise InputError(f"{best.size} scores but {known.size} known flags")
    out = {"rule": "youden", "score": "max", "known_queries": int(known.sum()),
           "unknown_queries": int((~known).sum()), "threshold": float("nan"), "auc": float("nan"),
           "known_accepted": float("nan"), "unknown_flagged": float("nan")}
    if known.all() or not known.any():
        return out
    out["auc"] = float(roc_auc_score(known, best))
    fpr, tpr, thr = roc_curve(known, best)
    i = int(np.argmax(tpr - fpr))
    if tpr[i] - fpr[i] <= 0 or not np.isfinite(thr[i]):
        return out
    threshold = (thr[i] + best[best < thr[i]].max()) / 2  # J > 0: some unknown query scores below
    out.update(threshold=float(threshold), known_accepted=float((best[known] >= threshold).mean()),
               unknown_flagged=float((best[~known] < threshold).mean()))
    return out
