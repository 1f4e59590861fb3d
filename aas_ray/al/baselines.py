"""Active learning baselines behind the same interface as AAS (docs/method.md §14): what a
benchmark of AL for re-identification compares AAS with. Every one proposes pairs not yet
asked nor implied by the answers so far, at most ``budget`` of them, deterministically for
a seed; all are refined by NP3 downstream, as AAS is.

* ``nis`` — nested importance sampling (Perez et al., ECCV 2024): vertices drawn with
  probability ∝ 1/n̂_i (n̂_i: the soft count of images like i, so images in small groups
  come up more), then neighbours of each vertex drawn ∝ a row softmax of cosine similarity
  (temperature τ); the answers also give an estimate of the number of individuals, with a
  95 % interval.
* ``farthest-nearest`` — per cluster of the current pseudo-labels, its farthest
  intra-cluster pair and its nearest pair to another cluster (the pair rule of SPAL).
* ``uncertainty`` — the pairs whose k-reciprocal distance lies closest to DBSCAN's radius,
  the clustering's decision boundary.
* ``nearest`` — the most similar pairs, most similar first: what a person reviewing
  matches by hand does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aas_ray.al.constraints import Answer, ConstraintStore
from aas_ray.al.sampling import PairDraw
from aas_ray.grouping import Groups, singletons_to_clusters

# n̂ over all images is exact (chunked n x n products) up to this many images; above, the
# k nearest neighbours' terms are exact and the rest is estimated from a column sample.
NIS_EXACT_UP_TO = 50_000


def _draw(pairs: np.ndarray, pool: str, probability: np.ndarray | None = None) -> PairDraw:
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    p = np.full(len(pairs), np.nan) if probability is None else np.asarray(probability, dtype=np.float64)
    return PairDraw(pairs, np.full(len(pairs), pool, "<U6"), np.full(len(pairs), "", "<U16"), p)


def _open_in_order(store: ConstraintStore, pairs: np.ndarray, budget: int) -> np.ndarray:
    """The first ``budget`` distinct pairs (u < v) of ``pairs`` that are still open, in order."""
    if len(pairs) == 0 or budget <= 0:
        return np.empty((0, 2), dtype=np.int64)
    p = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
    p = p[p[:, 0] != p[:, 1]]
    _, first = np.unique(p, axis=0, return_index=True)
    p = p[np.sort(first)]
    return p[store.open_pairs(p)][:budget]


def _knn_pairs(views) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j) of the kNN graph, j != i, with its cosine."""
    idx, sim = views.knn_idx, views.knn_sim
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    cols, s = idx.ravel(), sim.ravel()
    keep = (cols >= 0) & (cols != rows)
    return np.stack([rows[keep], cols[keep]], axis=1), s[keep]


@dataclass
class NearestSampler:
    name: str = "nearest"

    def propose(self, views, store: ConstraintStore, budget: int, rng: np.random.Generator):
        from aas_ray.al.samplers import Proposal

        pairs, sim = _knn_pairs(views)
        order = np.lexsort((pairs[:, 1], pairs[:, 0], -sim))  # most similar first; ties by index
        chosen = _open_in_order(store, pairs[order], budget)
        return Proposal(_draw(chosen, "near"), {"pool_open": int(len(_open_in_order(store, pairs, len(pairs))))})


@dataclass
class UncertaintySampler:
    name: str = "uncertainty"

    def propose(self, views, store: ConstraintStore, budget: int, rng: np.random.Generator):
        from aas_ray.al.samplers import Proposal

        if views.jaccard is None or views.eps is None:
            raise ValueError("the uncertainty sampler needs the Jaccard graph and DBSCAN's radius")
        d = views.jaccard.distance().tocoo()
        upper = d.row < d.col
        pairs = np.stack([d.row[upper], d.col[upper]], axis=1).astype(np.int64)
        margin = np.abs(d.data[upper].astype(np.float64) - views.eps)
        order = np.lexsort((pairs[:, 1], pairs[:, 0], margin))  # closest to the boundary first
        chosen = _open_in_order(store, pairs[order], budget)
        return Proposal(_draw(chosen, "bound"), {"pool_open": int(upper.sum())})


@dataclass
class FarthestNearestSampler:
    name: str = "farthest-nearest"

    def propose(self, views, store: ConstraintStore, budget: int, rng: np.random.Generator):
        from aas_ray.al.refine import np3
        from aas_ray.al.samplers import Proposal

        x = views.features
        # the current pseudo-labels: view A with every answer so far (NP3)
        labels = singletons_to_clusters(np3(views.labels_a, store.must_links(), store.cannot_links(), x))
        groups, _ = Groups.of_labels(labels)
        clusters = [g for g in groups if g.size > 1]
        pairs_nn, sim_nn = _knn_pairs(views)
        # nearest pair leaving each cluster: best kNN edge whose ends differ in label
        out = labels[pairs_nn[:, 0]] != labels[pairs_nn[:, 1]]
        best_out: dict[int, tuple[float, int, int]] = {}
        for (u, v), s in zip(pairs_nn[out], sim_nn[out]):
            c = int(labels[u])
            if c not in best_out or s > best_out[c][0]:
                best_out[c] = (float(s), int(u), int(v))
        candidates = []
        for k in rng.permutation(len(clusters)):  # clusters in a seeded random order
            m = clusters[k]
            if m.size <= 2000:
                s = x[m] @ x[m].T
                i, j = np.unravel_index(np.argmin(s + 3 * np.eye(m.size)), s.shape)
                candidates.append((m[i], m[j]))
            else:  # a huge cluster: farthest from its mean, then farthest from that image
                far = m[np.argmin(x[m] @ x[m].mean(axis=0))]
                candidates.append((far, m[np.argmin(x[m] @ x[far])]))
            c = int(labels[m[0]])
            if c in best_out:
                candidates.append(best_out[c][1:])
        chosen = _open_in_order(store, np.array(candidates, dtype=np.int64).reshape(-1, 2), budget)
        return Proposal(_draw(chosen, "fn"), {"clusters": len(clusters), "pool_open": len(candidates)})


def _soft_counts(x: np.ndarray, tau: float, views, rng: np.random.Generator) -> np.ndarray:
    """n̂_i = Σ_j exp((cos_ij - 1) / τ): the soft number of images like i (itself counts 1)."""
    n = x.shape[0]
    if n <= NIS_EXACT_UP_TO:
        out = np.empty(n)
        for s in range(0, n, 2048):
            out[s:s + 2048] = np.exp((x[s:s + 2048] @ x.T - 1.0) / tau).sum(axis=1)
        return out
    # near terms exactly from the kNN lists, the far ones from a uniform sample of columns
    near = np.exp((np.clip(views.knn_sim, -1, 1) - 1.0) / tau).sum(axis=1)
    cols = rng.choice(n, size=2000, replace=False)
    far = np.exp((x @ x[cols].T - 1.0) / tau).mean(axis=1) * (n - views.knn_idx.shape[1])
    return near + far


@dataclass
class NISSampler:
    """Nested importance sampling (Perez et al., ECCV 2024), for pairs and for a count."""

    tau: float = 0.5
    neighbours: int = 5  # neighbours drawn per vertex (the vertex itself is not asked)
    name: str = "nis"

    def propose(self, views, store: ConstraintStore, budget: int, rng: np.random.Generator):
        from aas_ray.al.samplers import Proposal

        x = views.features
        n = x.shape[0]
        n_hat = _soft_counts(x, self.tau, views, rng)
        big_q = (1.0 / n_hat) / (1.0 / n_hat).sum()
        vertices = rng.choice(n, size=max(1, int(np.ceil(budget / self.neighbours))), p=big_q, replace=True)
        samples, pairs = [], []
        for v in vertices:
            # neighbours of v other than v itself, ∝ the softmax of similarity
            q = np.exp((x @ x[v] - 1.0) / self.tau)
            q[v] = 0.0
            q /= q.sum()
            nb = rng.choice(n, size=self.neighbours, p=q, replace=True)
            samples.append((int(v), nb, q[nb], float(big_q[v])))
            pairs += [(int(v), int(j)) for j in nb]
        chosen = _open_in_order(store, np.array(pairs, dtype=np.int64).reshape(-1, 2), budget)
        prop = Proposal(_draw(chosen, "nis"), {"pool_open": len(pairs), "vertices": int(len(vertices))})
        prop.stats["nis_samples"] = samples
        return prop

    @staticmethod
    def estimate(samples, store: ConstraintStore) -> tuple[float, float, int]:
        """(individuals, half-width of its 95 % interval, vertices used) from the answers to the
        drawn pairs (a vertex is used when all its drawn neighbours have an answer)."""
        terms = []
        for v, nb, q_nb, big_q in samples:
            pairs = np.array([(v, j) for j in nb], dtype=np.int64).reshape(-1, 2)
            known = store.implied(pairs) if len(pairs) else np.empty(0, np.int8)
            ans = store.answers_for(pairs) if len(pairs) else np.empty(0, np.int64)
            same = np.where(ans >= 0, ans == int(Answer.MUST_LINK), known == 1)
            unknown = (ans < 0) & (known < 0) | (ans == int(Answer.UNSURE))
            if unknown.any():
                continue
            # the size of v's individual's cluster: v itself plus an unbiased estimate of the
            # others (Perez et al. put v among its own samples instead, which biases the size
            # up when the softmax is flat); at least 1, so its inverse is finite
            n_bar = 1.0 + float(np.mean(same / q_nb))
            terms.append((1.0 / n_bar) / big_q)
        if not terms:
            return float("nan"), float("nan"), 0
        t = np.asarray(terms)
        f_hat = float(t.mean())
        ci = float(1.96 * np.sqrt(((t - f_hat) ** 2).mean() / t.size))
        return f_hat, ci, int(t.size)
