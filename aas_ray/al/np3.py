"""NP3: non-parametric plug-and-play constrained refinement of any clustering
(SPEC §9; paper §3.1 E, Algorithm 1 step 2, Fig. 2)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from aas_ray.al.regions import group_sum
from aas_ray.checks import InputError, labels_array, pair_array, unit_features

# Conflict graphs up to this many nodes are coloured exactly; larger ones by DSatur.
EXACT_COLORING_MAX_NODES = 10


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    g = sp.coo_matrix((np.ones(edges.shape[0]), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(g, directed=False)[1]


def _raise_contradiction(ml: np.ndarray, u: int, v: int) -> None:
    g = nx.Graph()
    g.add_edges_from(map(tuple, ml.tolist()))
    path = nx.shortest_path(g, u, v)
    chain = ", ".join(f"ML({a},{b})" for a, b in zip(path[:-1], path[1:]))
    raise InputError(f"contradictory constraints: CL({u},{v}) but {chain} joins them")


def _k_colorable(order, adj, k, colors, pos=0) -> bool:
    if pos == len(order):
        return True
    node = order[pos]
    used = {colors[m] for m in adj[node] if m in colors}
    for c in range(k):
        if c not in used:
            colors[node] = c
            if _k_colorable(order, adj, k, colors, pos + 1):
                return True
            del colors[node]
    return False


def color_graph(g: nx.Graph) -> dict:
    """Proper colouring: exact minimum (chromatic number) for small graphs, DSatur beyond."""
    if g.number_of_nodes() > EXACT_COLORING_MAX_NODES:
        return nx.coloring.greedy_color(g, strategy="saturation_largest_first")
    order = sorted(g.nodes, key=lambda v: -g.degree(v))
    adj = {v: set(g[v]) for v in g.nodes}
    for k in range(1, len(order) + 1):
        colors: dict = {}
        if _k_colorable(order, adj, k, colors):
            return colors
    return {}


def _purify(members: np.ndarray, comp: np.ndarray, cl: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """Split one impure cluster into sub-clusters satisfying its internal CLs (SPEC §9 step 3).

    Returns the member indices of each sub-cluster; ML groups (``comp``) are never split.
    """
    conflict = nx.Graph()
    conflict.add_edges_from(zip(comp[cl[:, 0]].tolist(), comp[cl[:, 1]].tolist()))
    groups = [conflict.subgraph(c).copy() for c in nx.connected_components(conflict)]
    colorings = [color_graph(g) for g in groups]
    n_colors = [max(c.values()) + 1 for c in colorings]
    # The CL group of highest chromatic number fixes the sub-clusters; larger groups first
    # among the rest so that the sub-cluster centroids settle on the most evidence.
    order = sorted(range(len(groups)), key=lambda i: (-n_colors[i], -groups[i].number_of_nodes()))
    member_comp = comp[members]

    def classes(coloring: dict, k: int) -> list[np.ndarray]:
        by_color: list[list] = [[] for _ in range(k)]
        for node, c in coloring.items():
            by_color[c].append(node)
        return [members[np.isin(member_comp, nodes)] for nodes in by_color]

    first = order[0]
    subclusters = classes(colorings[first], n_colors[first])
    sums = [x[s].sum(axis=0) for s in subclusters]
    counts = [s.size for s in subclusters]
    for gi in order[1:]:
        cls = classes(colorings[gi], n_colors[gi])
        cents = np.stack([x[c].mean(axis=0) for c in cls])
        sub_cents = np.stack([s / c for s, c in zip(sums, counts)])
        cost = np.linalg.norm(cents[:, None, :] - sub_cents[None, :, :], axis=2)
        rows, cols = linear_sum_assignment(cost)
        # DSatur may use more colours than the first group's χ: extra classes open sub-clusters.
        for r, c in zip(rows, cols):
            subclusters[c] = np.concatenate([subclusters[c], cls[r]])
            sums[c] = sums[c] + x[cls[r]].sum(axis=0)
            counts[c] += cls[r].size
        for r in sorted(set(range(len(cls))) - set(rows.tolist())):
            subclusters.append(cls[r])
            sums.append(x[cls[r]].sum(axis=0))
            counts.append(cls[r].size)
    # Unconstrained members and unconflicted ML groups join the nearest sub-cluster, as units.
    placed = np.isin(member_comp, list(conflict.nodes))
    free = members[~placed]
    if free.size:
        units, unit_of = np.unique(comp[free], return_inverse=True)
        unit_cent = group_sum(x[free], unit_of, units.size) / np.bincount(unit_of)[:, None]
        sub_cents = np.stack([s / c for s, c in zip(sums, counts)])
        d = np.linalg.norm(unit_cent[:, None, :] - sub_cents[None, :, :], axis=2)
        target = d.argmin(axis=1)[unit_of]
        for c in np.unique(target):
            subclusters[c] = np.concatenate([subclusters[c], free[target == c]])
    return subclusters


def np3(labels, must_link, cannot_link, features) -> np.ndarray:
    """Refine ``labels`` so that every must-link and cannot-link holds (SPEC §9).

    ``labels``: (n,) cluster ids, -1 = noise. ``must_link`` / ``cannot_link``: (m, 2)
    image-index pairs. ``features``: (n, d), used for centroid distances. Untouched
    clusters keep their ids; merged clusters take the smallest id; split-off
    sub-clusters get new ids. Without constraints the labels come back unchanged.
    Raises :class:`InputError` naming the pairs when the constraints contradict.
    """
    y = labels_array(labels, name="labels")
    n = y.size
    x = unit_features(features)
    if x.shape[0] != n:
        raise InputError(f"features have {x.shape[0]} rows but labels have {n}")
    ml = pair_array(must_link, n, "must_link")
    cl = pair_array(cannot_link, n, "cannot_link")
    out = y.copy()
    if ml.shape[0] == 0 and cl.shape[0] == 0:
        return out
    comp = _components(n, ml)
    bad = np.flatnonzero(comp[cl[:, 0]] == comp[cl[:, 1]])
    if bad.size:
        _raise_contradiction(ml, int(cl[bad[0], 0]), int(cl[bad[0], 1]))

    # Step 1: noise points that carry a constraint become singleton clusters.
    next_id = int(out.max()) + 1 if n else 0
    constrained = np.unique(np.concatenate([ml.ravel(), cl.ravel()]))
    noisy = constrained[out[constrained] < 0]
    out[noisy] = next_id + np.arange(noisy.size)
    next_id += noisy.size

    # Step 2: merge clusters linked by ML (union-find over cluster ids), keeping the smallest id.
    if ml.shape[0]:
        ids, local = np.unique(out[out >= 0], return_inverse=True)
        pos = np.searchsorted(ids, out[ml])
        merged = _components(ids.size, pos)
        smallest = np.full(merged.max() + 1, np.iinfo(np.int64).max)
        np.minimum.at(smallest, merged, ids)
        out[out >= 0] = smallest[merged[local]]

    # Step 3: purify clusters that hold a CL inside them; step 4: leave the rest.
    inside = out[cl[:, 0]] == out[cl[:, 1]]
    cl_in = cl[inside]
    if cl_in.shape[0] == 0:
        return out
    order = np.argsort(out, kind="stable")
    sorted_labels = out[order]
    for c in np.unique(out[cl_in[:, 0]]):
        lo, hi = np.searchsorted(sorted_labels, [c, c + 1])
        members = order[lo:hi]
        subs = _purify(members, comp, cl_in[out[cl_in[:, 0]] == c], x)
        for s in subs[1:]:
            out[s] = next_id
            next_id += 1
    return out
