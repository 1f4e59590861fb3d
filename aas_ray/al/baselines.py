"""Active learning baselines behind the same interface as AAS (docs/method.md §14): what a
benchmark of AL for re-identification compares AAS with. Every one proposes pairs not yet
asked nor implied by the answers so far, at most ``budget`` of them, deterministically for
a seed; all are refined by NP3 downstream, as AAS is.

* ``nis`` — nested importance sampling (Perez et al., ECCV 2024): vertices drawn with
  probability ∝ 1/n̂_i (n̂_i: the soft count of images like i, so images in small groups
  come up more), then about √B neighbours of each vertex drawn ∝ a row softmax of cosine
  similarity (temperature τ), as the authors' code allocates a budget of B pairs; the answers
  also give an estimate of the number of individuals, with a 95 % interval.
* ``farthest-nearest`` — per cluster of the current pseudo-labels, its farthest
  intra-cluster pair and its nearest pair to another cluster (the pair rule of SPAL).
* ``uncertainty`` — the pairs whose k-reciprocal distance lies closest to DBSCAN's radius,
  the clustering's decision boundary.
* ``nearest`` — the most similar pairs, most similar first: what a person reviewing
  matches by hand does.
* ``lbas`` / ``gbas`` — balanced active sampling (He et al., ICME 2024), *reconstructed* from
  the AAS paper's description (no public code; every choice in docs/method.md §15): triplets
  of DBSCAN-clustered images, the anchor by farthest-point sampling, the positive the farthest
  member of its cluster, the negative the nearest image of another cluster, one positive and
  one negative question per triplet, DBSCAN's outliers never asked. LBAS takes anchors
  cluster by cluster in turn, GBAS over all clustered images at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aas_ray.al.constraints import Answer, ConstraintStore
from aas_ray.al.interface import PairSampler, Proposal, SamplerInput
from aas_ray.al.refine import np3
from aas_ray.al.registry import register_strategy
from aas_ray.al.sampling import PairDraw
from aas_ray.checks import check_param
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


def _knn_pairs(views: SamplerInput) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j) of the kNN graph, j != i, with its cosine."""
    idx, sim = views.knn_idx, views.knn_sim
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    cols, s = idx.ravel(), sim.ravel()
    keep = (cols >= 0) & (cols != rows)
    return np.stack([rows[keep], cols[keep]], axis=1), s[keep]


@register_strategy("nearest", rank=5, description="the most similar pairs first, as a person reviewing matches does")
@dataclass
class NearestSampler(PairSampler):

    def propose(self, views: SamplerInput, store: ConstraintStore, budget: int, rng: np.random.Generator):
        pairs, sim = _knn_pairs(views)
        order = np.lexsort((pairs[:, 1], pairs[:, 0], -sim))  # most similar first; ties by index
        chosen = _open_in_order(store, pairs[order], budget)
        return Proposal(_draw(chosen, "near"), {"pool_open": int(len(_open_in_order(store, pairs, len(pairs))))})


@register_strategy("uncertainty", rank=4, description="the pairs whose distance lies closest to DBSCAN's radius")
@dataclass
class UncertaintySampler(PairSampler):

    def propose(self, views: SamplerInput, store: ConstraintStore, budget: int, rng: np.random.Generator):
        if views.jaccard is None or views.eps is None:
            raise ValueError("the uncertainty sampler needs the Jaccard graph and DBSCAN's radius")
        d = views.jaccard.distance().tocoo()
        upper = d.row < d.col
        pairs = np.stack([d.row[upper], d.col[upper]], axis=1).astype(np.int64)
        margin = np.abs(d.data[upper].astype(np.float64) - views.eps)
        order = np.lexsort((pairs[:, 1], pairs[:, 0], margin))  # closest to the boundary first
        chosen = _open_in_order(store, pairs[order], budget)
        return Proposal(_draw(chosen, "bound"), {"pool_open": int(upper.sum())})


@register_strategy("farthest-nearest", rank=3,
                   description="per cluster its farthest pair and its nearest pair to another cluster (SPAL)")
@dataclass
class FarthestNearestSampler(PairSampler):

    def propose(self, views: SamplerInput, store: ConstraintStore, budget: int, rng: np.random.Generator):
        from aas_ray.al.refine import np3
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


def farthest_point_order(x: np.ndarray):
    """Row indices of the unit rows ``x`` in farthest-point order by cosine distance, from the
    row farthest from their mean (ties to the lower index): each next row is the one whose
    nearest already chosen row is farthest (docs/method.md §15)."""
    n = x.shape[0]
    if n == 0:
        return
    d = np.full(n, np.inf)
    i = int(np.argmin(x @ x.mean(axis=0)))
    for _ in range(n):
        yield i
        d = np.minimum(d, 1.0 - x @ x[i])
        d[i] = -np.inf  # chosen; np.minimum keeps it so
        i = int(np.argmax(d))


@dataclass
class _BalancedSampler(PairSampler):
    """Balanced active sampling (He et al., ICME 2024), reconstructed (docs/method.md §15):
    per triplet one positive question (anchor, farthest member of its cluster) and one negative
    question (anchor, nearest image of another cluster), so the budget is split evenly."""

    local = True  # LBAS; GBAS sets False

    def propose(self, views: SamplerInput, store: ConstraintStore, budget: int, rng: np.random.Generator):
        from aas_ray.al.refine import np3
        x = views.features
        # the current pseudo-labels (view A with every answer, NP3); DBSCAN's outliers discarded
        labels = np.where(views.labels_a < 0, -1, np3(views.labels_a, store.must_links(), store.cannot_links(), x))
        groups, _ = Groups.of_labels(labels)
        clusters = [g for g in groups if g.size > 1 and labels[g[0]] >= 0]
        taken: set[tuple[int, int]] = set()
        triplets = []
        for a in self._anchors(x, clusters, rng):
            if 2 * (len(triplets) + 1) > budget:
                break
            t = _balanced_triplet(x, labels, a, store, taken)
            if t is not None:
                triplets.append(t)
        pairs = np.array([p for _, pos, neg in triplets for p in (pos, neg)], dtype=np.int64).reshape(-1, 2)
        pool = np.array(["pos", "neg"] * len(triplets), dtype="<U6")
        draw = PairDraw(pairs, pool, np.full(len(pairs), "", "<U16"), np.full(len(pairs), np.nan))
        stats = {"clusters": len(clusters), "triplets": len(triplets), "pool_open": int(len(pairs)),
                 "outliers_discarded": int((views.labels_a < 0).sum())}
        return Proposal(draw, stats)

    def _anchors(self, x: np.ndarray, clusters: list, rng: np.random.Generator):
        if not clusters:
            return
        if not self.local:  # GBAS: one farthest-point order over every clustered image
            members = np.concatenate(clusters)
            for i in farthest_point_order(x[members]):
                yield int(members[i])
            return
        # LBAS: the clusters in a seeded random order, each giving its next farthest point in turn
        orders = [(m, farthest_point_order(x[m])) for m in (clusters[k] for k in rng.permutation(len(clusters)))]
        while orders:
            alive = []
            for m, order in orders:
                i = next(order, None)
                if i is not None:
                    alive.append((m, order))
                    yield int(m[i])
            orders = alive


def _balanced_triplet(x: np.ndarray, labels: np.ndarray, a: int, store: ConstraintStore, taken: set):
    """(anchor, positive pair, negative pair): the anchor's farthest cluster mate and its nearest
    image of another cluster whose pairs are still open and not yet taken; None without both."""
    s = x @ x[a]
    mates = np.flatnonzero(labels == labels[a])
    mates = mates[mates != a]
    others = np.flatnonzero((labels >= 0) & (labels != labels[a]))
    pos = _first_open(a, mates[np.argsort(s[mates], kind="stable")], store, taken)
    neg = _first_open(a, others[np.argsort(-s[others], kind="stable")], store, taken)
    if pos is None or neg is None:
        return None
    taken.update((pos, neg))
    return a, pos, neg


def _first_open(a: int, candidates: np.ndarray, store: ConstraintStore, taken: set):
    """The first pair (a, c), in the order of ``candidates``, neither settled nor taken."""
    if candidates.size == 0:
        return None
    pairs = np.sort(np.stack([np.full(candidates.size, a), candidates], axis=1), axis=1)
    for u, v in pairs[store.open_pairs(pairs)]:
        if (int(u), int(v)) not in taken:
            return int(u), int(v)
    return None


@register_strategy("lbas", rank=7, description="local balanced active sampling (He et al., a reconstruction)")
@dataclass
class LBASSampler(_BalancedSampler):
    pass


@register_strategy("gbas", rank=6, description="global balanced active sampling (He et al., a reconstruction)")
@dataclass
class GBASSampler(_BalancedSampler):
    local = False


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


def nis_draws(budget: int) -> int:
    """Draws per vertex for a budget of ``budget`` pairs: the reference's allocation, N_v = N_n =
    round(√B) samples with the vertex itself the first of its N_n (docs/method.md §14)."""
    return max(1, round(np.sqrt(max(budget, 1))) - 1)


@register_strategy("nis", rank=2, description="nested importance sampling (Perez et al.), which also counts "
                   "the individuals")
@dataclass
class NISSampler(PairSampler):
    """Nested importance sampling (Perez et al., ECCV 2024), for pairs and for a count: ``tau``
    the temperature of the neighbour softmax, ``neighbours`` the draws per vertex besides
    itself (None: :func:`nis_draws` of the budget)."""

    tau: float = 0.5
    neighbours: int | None = None

    def __post_init__(self):
        check_param("NISSampler", "tau", self.tau, 0.0, low_open=True)
        if self.neighbours is not None:
            check_param("NISSampler", "neighbours", self.neighbours, 1, integer=True)

    def propose(self, views: SamplerInput, store: ConstraintStore, budget: int, rng: np.random.Generator):
        x = views.features
        n = x.shape[0]
        draws = self.neighbours or nis_draws(budget)
        n_hat = _soft_counts(x, self.tau, views, rng)
        big_q = (1.0 / n_hat) / (1.0 / n_hat).sum()
        vertices = rng.choice(n, size=max(1, int(np.ceil(budget / draws))), p=big_q, replace=True)
        samples, pairs = [], []
        for v in vertices:
            # the row softmax of similarity, v included (q_v = 1 / n̂_v); a draw of v asks nothing
            q = np.exp((x @ x[v] - 1.0) / self.tau)
            q /= q.sum()
            nb = rng.choice(n, size=draws, p=q, replace=True)
            samples.append((int(v), nb, q[nb], float(q[v]), float(big_q[v])))
            pairs += [(int(v), int(j)) for j in nb if j != v]
        chosen = _open_in_order(store, np.array(pairs, dtype=np.int64).reshape(-1, 2), budget)
        return Proposal(_draw(chosen, "nis"), {"pool_open": len(pairs), "vertices": int(len(vertices))}, samples)

    def summarise(self, proposal: Proposal, store: ConstraintStore) -> dict:
        """NIS's own output: how many individuals the answers say there are."""
        est, ci, used = self.estimate(proposal.drawn, store)
        return {"individuals": est, "individuals_ci95": ci, "individuals_vertices": used}

    @staticmethod
    def estimate(samples, store: ConstraintStore) -> tuple[float, float, int]:
        """(individuals, half-width of its 95 % interval, vertices used) from the answers to the
        drawn pairs (a vertex is used when all its drawn neighbours have an answer).

        As the reference: v's group size n̄_v is the mean of same / q over its N_n samples, v
        itself the first (1 / q_v); F̂ = mean over vertices of 1 / (n̄_v · Q_v)."""
        terms = []
        for v, nb, q_nb, q_self, big_q in samples:
            others = nb != v
            pairs = np.array([(v, j) for j in nb[others]], dtype=np.int64).reshape(-1, 2)
            known = store.implied(pairs) if len(pairs) else np.empty(0, np.int8)
            ans = store.answers_for(pairs) if len(pairs) else np.empty(0, np.int64)
            if (((ans < 0) & (known < 0)) | (ans == int(Answer.UNSURE))).any():
                continue
            same = np.ones(nb.size)
            same[others] = np.where(ans >= 0, ans == int(Answer.MUST_LINK), known == 1)
            n_bar = (1.0 / q_self + float(np.sum(same / q_nb))) / (nb.size + 1)
            terms.append((1.0 / n_bar) / big_q)
        if not terms:
            return float("nan"), float("nan"), 0
        t = np.asarray(terms)
        f_hat = float(t.mean())
        ci = float(1.96 * np.sqrt(((t - f_hat) ** 2).mean() / t.size))
        return f_hat, ci, int(t.size)
