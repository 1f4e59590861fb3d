"""From answers to training labels (docs/method.md §9-10, Algorithm 1 step 2): NP3 refines
view A under every constraint so far, SpCL's self-paced criteria keep the reliable part
(must-link-held images are never demoted), and each stage is scored against the truth
where the truth is known (docs/method.md §13: where answers are lost)."""

from __future__ import annotations

import numpy as np

from aas_ray.al import ConstraintStore, np3
from aas_ray.cluster import ClusterViews
from aas_ray.eval import clustering_metrics
from aas_ray.experiment.spcl import self_paced_labels, with_instance_classes


def refine(labels: np.ndarray, store: ConstraintStore, x: np.ndarray) -> np.ndarray:
    """NP3 with every constraint in the store (the labels unchanged when there is none)."""
    ml, cl = store.must_links(), store.cannot_links()
    return np3(labels, ml, cl, x) if ml.size or cl.size else labels


def training_labels(views: ClusterViews, store: ConstraintStore, x: np.ndarray,
                    indep_thres: float | None) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """(training labels, NP3-refined view A, the independence threshold, filter stats)."""
    refined = refine(views.labels_a, store, x)
    protected = np.zeros(x.shape[0], dtype=bool)
    protected[store.must_links().ravel()] = True
    if views.tight is None or views.loose is None:
        # no radius-based reliability views (HDBSCAN's view A, docs/method.md §2): its noise
        # points are already instance classes
        labels = with_instance_classes(refined)
        sizes = np.bincount(labels)
        return labels, refined, indep_thres, {"clusters": int((sizes > 1).sum()), "instances": int((sizes == 1).sum()),
                                              "demoted": 0}
    labels, indep_thres, stats = self_paced_labels(refined, views.tight, views.loose, indep_thres, protected)
    return labels, refined, indep_thres, stats


def label_diagnostics(view_a: np.ndarray, store: ConstraintStore, refined: np.ndarray,
                      train_labels: np.ndarray | None, truth: np.ndarray) -> dict:
    """Pair precision / recall / F1 against the truth of each stage answers pass through:
    view A alone, the must-link closure alone, the NP3-refined view A and, in training,
    the labels used after the self-paced filter."""
    stages = {"view_a": view_a, "ml_closure": store.ml_closure_labels(), "refined": refined}
    if train_labels is not None:
        stages["train"] = with_instance_classes(train_labels)
    out = {}
    for name, lab in stages.items():
        q = clustering_metrics(lab, truth)
        out.update({f"labels/{name}_precision": q["pair_precision"], f"labels/{name}_recall": q["pair_recall"],
                    f"labels/{name}_f1": q["pair_f1"]})
    return out
