"""Evaluation metrics of docs/method.md §11: open-set retrieval and pseudo-label quality. Vectorised."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, roc_auc_score

from aas_ray.grouping import singletons_to_clusters
from aas_ray.checks import InputError, labels_array

TOPK = (1, 3, 5, 10)


def retrieval_metrics(sim: np.ndarray, query_ids, gallery_ids, topk=TOPK) -> dict[str, float]:
    """mAP, mINP, Top-k, BAKS and AUC-ROC for queries against a gallery (docs/method.md §11).

    ``sim`` is (n_query, n_gallery), larger = more similar. A query is *known* when its
    identity is in the gallery: mAP, mINP, Top-k and BAKS use known queries only;
    AUC-ROC scores known (positive) vs unknown queries by their best gallery similarity.
    BAKS averages top-1 accuracy per identity, then over identities (Adam et al. 2025).
    Returned as fractions in [0, 1]; NaN where undefined (no known or no unknown query).
    """
    sim = np.asarray(sim, dtype=np.float64)
    q_ids = np.asarray(query_ids)
    g_ids = np.asarray(gallery_ids)
    if sim.shape != (q_ids.size, g_ids.size):
        raise InputError(f"similarity is {sim.shape} but there are {q_ids.size} queries and {g_ids.size} gallery images")
    if g_ids.size == 0 or q_ids.size == 0:
        raise InputError("retrieval metrics need at least one query and one gallery image")
    if not np.isfinite(sim).all():
        raise InputError("similarity matrix contains NaN or inf")
    known = np.isin(q_ids, g_ids)
    out: dict[str, float] = {}
    if known.any():
        s = sim[known]
        qk = q_ids[known]
        order = np.argsort(-s, axis=1, kind="stable")
        hits = g_ids[order] == qk[:, None]
        n_pos = hits.sum(axis=1)
        ranks = np.arange(1, g_ids.size + 1)
        cum = np.cumsum(hits, axis=1)
        ap = (cum / ranks * hits).sum(axis=1) / n_pos
        last = g_ids.size - np.argmax(hits[:, ::-1], axis=1)
        out["mAP"] = float(ap.mean())
        out["mINP"] = float((n_pos / last).mean())
        first = np.argmax(hits, axis=1) + 1
        for k in topk:
            out[f"top{k}"] = float((first <= k).mean())
        correct = first == 1
        uniq, inv = np.unique(qk, return_inverse=True)
        per_id = np.bincount(inv, weights=correct) / np.bincount(inv)
        out["BAKS"] = float(per_id.mean())
    else:
        for key in ("mAP", "mINP", "BAKS", *(f"top{k}" for k in topk)):
            out[key] = float("nan")
    if known.all() or not known.any():
        out["auc_roc"] = float("nan")
    else:
        out["auc_roc"] = float(roc_auc_score(known, sim.max(axis=1)))
    out["known_queries"] = float(known.sum())
    out["unknown_queries"] = float((~known).sum())
    return out


def pair_counts(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, float]:
    """(same-cluster pairs in pred, in true, in both) from the contingency table."""
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)

    def c2(x):
        x = x.astype(np.float64)
        return float((x * (x - 1) / 2).sum())

    both = np.unique(p.astype(np.int64) * (t.max() + 1) + t, return_counts=True)[1]
    return c2(np.bincount(p)), c2(np.bincount(t)), c2(both)


def clustering_metrics(pred_labels, true_labels) -> dict[str, float]:
    """Pseudo-label quality (docs/method.md §11): NMI, ARI, pairwise precision / recall / F1,
    cluster and outlier counts. Noise (-1) counts as singleton clusters."""
    pred = labels_array(pred_labels, name="pseudo-labels")
    true = np.asarray(true_labels)
    if true.size != pred.size:
        raise InputError(f"{pred.size} pseudo-labels but {true.size} ground-truth labels")
    if pred.size == 0:
        raise InputError("clustering metrics need at least one sample")
    outliers = int((pred < 0).sum())
    n_clusters = int(np.unique(pred[pred >= 0]).size)
    pred = singletons_to_clusters(pred)
    n_pred, n_true, n_both = pair_counts(pred, true)
    precision = n_both / n_pred if n_pred else 0.0
    recall = n_both / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "nmi": float(normalized_mutual_info_score(true, pred)),
        "ari": float(adjusted_rand_score(true, pred)),
        "pair_precision": precision,
        "pair_recall": recall,
        "pair_f1": f1,
        "clusters": n_clusters,
        "outliers": outliers,
    }
