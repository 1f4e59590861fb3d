"""NP3: non-parametric plug-and-play constrained refinement of any clustering
(docs/method.md §9; paper §3.1 E, Algorithm 1 step 2, Fig. 2)."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from aas_ray.al._refine_kernels import nearest_colour
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


def _group_colourings(edges: np.ndarray, n_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CL groups of a conflict graph and a proper colouring of each (docs/method.md §9 step 3).

    Returns (group of each node, colour of each node, colours used per group). Bipartite
    groups (single CLs, stars, even cycles: nearly all of them) get their unique optimal
    2-colouring from one connected-components pass over the bipartite double cover: v
    takes colour 0 when (v, 0) is connected to (root, 0), i.e. at an even distance from
    its group's smallest node. Only groups with an odd cycle are coloured one by one.
    """
    k = n_nodes
    u, v = edges[:, 0], edges[:, 1]
    g = sp.coo_matrix((np.ones(u.size), (u, v)), shape=(k, k))
    n_groups, group = connected_components(g, directed=False)
    cover = sp.coo_matrix((np.ones(2 * u.size), (np.r_[u, u + k], np.r_[v + k, v])), shape=(2 * k, 2 * k))
    _, side = connected_components(cover, directed=False)
    root = np.full(n_groups, k)
    np.minimum.at(root, group, np.arange(k))
    colour = (side[:k] != side[root[group]]).astype(np.int64)
    # (v, 0) and (v, 1) connected <=> an odd cycle through v's group: not 2-colourable.
    odd = np.unique(group[side[:k] == side[k:]])
    edge_group = group[u]
    for gi in odd:
        conflict = nx.Graph()
        conflict.add_edges_from(edges[edge_group == gi].tolist())
        for node, c in color_graph(conflict).items():
            colour[node] = c
    n_colours = np.zeros(n_groups, dtype=np.int64)
    np.maximum.at(n_colours, group, colour + 1)
    return group, colour, n_colours


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` and ``b`` (ranks equal L2's)."""
    return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)


def _unit_centroids(x: np.ndarray, unit_of: np.ndarray, n_units: int) -> np.ndarray:
    if n_units == unit_of.size:  # every unit a single image: nothing to average
        out = np.empty_like(x)
        out[unit_of] = x
        return out
    # A cluster's units are few: a dense indicator product beats any scatter-add.
    ind = np.zeros((n_units, unit_of.size), dtype=x.dtype)
    ind[unit_of, np.arange(unit_of.size)] = 1.0
    return (ind @ x) / ind.sum(axis=1, keepdims=True)


@dataclass
class _ConflictGraph:
    """The conflict graph of all impure clusters: each image's node (-1: none), each node's
    CL group and colour, and per group its colour count and node count."""

    node_of: np.ndarray
    group: np.ndarray
    colour: np.ndarray
    n_colours: np.ndarray
    group_nodes: np.ndarray


def _purify(members: np.ndarray, groups: np.ndarray, graph: _ConflictGraph, member_comp: np.ndarray,
            x: np.ndarray) -> list[np.ndarray]:
    """Split one impure cluster into sub-clusters satisfying its internal CLs (docs/method.md §9 step 3).

    ``groups``: this cluster's CL groups in ``graph``; ``member_comp``: each member's ML
    group. Returns the member indices of each sub-cluster; ML groups are never split.
    Only the cluster's own rows are touched.
    """
    xm = x[members]
    member_node = graph.node_of[members]
    placed = member_node >= 0
    member_group = np.where(placed, graph.group[np.maximum(member_node, 0)], -1)
    member_colour = graph.colour[np.maximum(member_node, 0)]
    n_colours = graph.n_colours
    # The CL group of highest chromatic number fixes the sub-clusters; larger groups first
    # among the rest so that the sub-cluster centroids settle on the most evidence.
    groups = groups[np.lexsort((groups, -graph.group_nodes[groups], -n_colours[groups]))]

    def classes(gi: int) -> list[np.ndarray]:
        here = member_group == gi
        return [np.flatnonzero(here & (member_colour == c)) for c in range(n_colours[gi])]

    subclusters = classes(groups[0])
    sums = [xm[s].sum(axis=0) for s in subclusters]
    counts = [s.size for s in subclusters]
    for gi in groups[1:]:
        cls = classes(gi)
        cents = np.stack([xm[c].mean(axis=0) for c in cls])
        sub_cents = np.stack([s / c for s, c in zip(sums, counts)])
        rows, cols = linear_sum_assignment(np.sqrt(np.maximum(_sq_dists(cents, sub_cents), 0.0)))
        # DSatur may use more colours than the first group's χ: extra classes open sub-clusters.
        for r, c in zip(rows, cols):
            subclusters[c] = np.concatenate([subclusters[c], cls[r]])
            sums[c] = sums[c] + xm[cls[r]].sum(axis=0)
            counts[c] += cls[r].size
        for r in sorted(set(range(len(cls))) - set(rows.tolist())):
            subclusters.append(cls[r])
            sums.append(xm[cls[r]].sum(axis=0))
            counts.append(cls[r].size)
    # Unconstrained members and unconflicted ML groups join the nearest sub-cluster, as units.
    free = np.flatnonzero(~placed)
    if free.size:
        units, unit_of = np.unique(member_comp[free], return_inverse=True)
        unit_cent = _unit_centroids(xm[free], unit_of, units.size)
        sub_cents = np.stack([s / c for s, c in zip(sums, counts)])
        target = _sq_dists(unit_cent, sub_cents).argmin(axis=1)[unit_of]
        for c in np.unique(target):
            subclusters[c] = np.concatenate([subclusters[c], free[target == c]])
    return [members[s] for s in subclusters]


def _split_each(out, clusters, groups_of, graph: _ConflictGraph, comp, x, next_id: int) -> int:
    """docs/method.md §9 step 3 cluster by cluster (:func:`_purify`); colour 0 keeps the cluster id."""
    order = np.argsort(out, kind="stable")
    sorted_labels = out[order]
    for c, groups in zip(clusters, groups_of):
        lo, hi = np.searchsorted(sorted_labels, [c, c + 1])
        members = order[lo:hi]
        subs = _purify(members, groups, graph, comp[members], x)
        for s in subs[1:]:
            out[s] = next_id
            next_id += 1
    return next_id


def _centroids(x: np.ndarray, rows: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean of ``x[rows]`` per group, through a sparse indicator over x (no gathered copy)."""
    ind = sp.csr_matrix((np.ones(rows.size, dtype=x.dtype), (groups, rows)), shape=(n_groups, x.shape[0]))
    return np.asarray(ind @ x) / np.bincount(groups, minlength=n_groups)[:, None]


def _split_single_group(out, clusters, groups, graph: _ConflictGraph, comp, x, next_id: int) -> int:
    """docs/method.md §9 step 3 for clusters whose conflict graph is one CL group, all at once.

    Each colour class is a sub-cluster; every free unit (an unconflicted ML group or an
    unconstrained image) joins the nearest sub-cluster centroid of its own cluster. The
    same result as :func:`_purify` (no matching is needed with one group), without a
    Python loop over clusters.
    """
    chi = graph.n_colours[groups]
    sub_base = np.r_[0, np.cumsum(chi)[:-1]]
    slot = np.full(int(out.max()) + 1, -1, dtype=np.int64)
    slot[clusters] = np.arange(clusters.size)
    idx = np.flatnonzero((out >= 0) & (slot[np.maximum(out, 0)] >= 0))
    k = slot[out[idx]]
    node = graph.node_of[idx]
    placed = node >= 0
    sub = np.full(idx.size, -1, dtype=np.int64)
    sub[placed] = sub_base[k[placed]] + graph.colour[node[placed]]
    n_sub = int(chi.sum())
    sub_cent = _centroids(x, idx[placed], sub[placed], n_sub)
    free = np.flatnonzero(~placed)
    if free.size:
        units, unit_of = np.unique(comp[idx[free]], return_inverse=True)
        unit_cent = _centroids(x, idx[free], unit_of, units.size)
        unit_k = np.empty(units.size, dtype=np.int64)
        unit_k[unit_of] = k[free]
        base = sub_base[unit_k]
        choice = nearest_colour(unit_cent, sub_cent, (sub_cent * sub_cent).sum(axis=1), base, chi[unit_k])
        sub[free] = (base + choice)[unit_of]
    # Colour 0 keeps the cluster id; each further colour class becomes a new cluster.
    colour_of = sub - sub_base[k]
    split = colour_of > 0
    new_id = np.full(n_sub, -1, dtype=np.int64)
    extra = np.flatnonzero(np.arange(n_sub) - np.repeat(sub_base, chi) > 0)
    new_id[extra] = next_id + np.arange(extra.size)
    out[idx[split]] = new_id[sub[split]]
    return next_id + extra.size


def np3(labels, must_link, cannot_link, features) -> np.ndarray:
    """Refine ``labels`` so that every must-link and cannot-link holds (docs/method.md §9).

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
    next_id = _constrained_noise_to_singletons(out, ml, cl)  # step 1
    _merge_must_linked(out, ml)  # step 2
    # Step 3: purify clusters that hold a CL inside them; step 4: leave the rest.
    inside = out[cl[:, 0]] == out[cl[:, 1]]
    if inside.any():
        _purify_impure(out, cl[inside], comp, x, next_id)
    return out


def _constrained_noise_to_singletons(out: np.ndarray, ml: np.ndarray, cl: np.ndarray) -> int:
    """NP3 step 1, in place: noise points that carry a constraint become singleton clusters;
    returns the next free cluster id."""
    next_id = int(out.max()) + 1 if out.size else 0
    constrained = np.unique(np.concatenate([ml.ravel(), cl.ravel()]))
    noisy = constrained[out[constrained] < 0]
    out[noisy] = next_id + np.arange(noisy.size)
    return next_id + noisy.size


def _merge_must_linked(out: np.ndarray, ml: np.ndarray) -> None:
    """NP3 step 2, in place: clusters linked by a must-link merge (union-find over cluster ids),
    keeping the smallest id."""
    if ml.shape[0] == 0:
        return
    ids, local = np.unique(out[out >= 0], return_inverse=True)
    pos = np.searchsorted(ids, out[ml])
    merged = _components(ids.size, pos)
    smallest = np.full(merged.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(smallest, merged, ids)
    out[out >= 0] = smallest[merged[local]]


def _purify_impure(out: np.ndarray, cl_in: np.ndarray, comp: np.ndarray, x: np.ndarray, next_id: int) -> int:
    """NP3 step 3, in place: split every cluster holding the cannot-links ``cl_in`` so that none
    stays inside one; ``comp``: each image's must-link group. Returns the next free id."""
    # The conflict graph over all impure clusters at once: nodes are ML groups carrying an
    # internal CL, edges the CLs; a CL group never spans two clusters.
    nodes, edge_nodes = np.unique(comp[cl_in], return_inverse=True)
    edges = edge_nodes.reshape(-1, 2)
    group, colour, n_colours = _group_colourings(edges, nodes.size)
    group_nodes = np.bincount(group, minlength=n_colours.size)
    group_cluster = np.empty(n_colours.size, dtype=np.int64)
    group_cluster[group[edges[:, 0]]] = out[cl_in[:, 0]]
    pos = np.minimum(np.searchsorted(nodes, comp), nodes.size - 1)
    node_of = np.where(nodes[pos] == comp, pos, -1)
    by_cluster = np.argsort(group_cluster, kind="stable")
    impure, starts = np.unique(group_cluster[by_cluster], return_index=True)
    per_cluster = np.split(by_cluster, starts[1:])
    graph = _ConflictGraph(node_of, group, colour, n_colours, group_nodes)
    # Most impure clusters hold one CL group: those are split all at once; the rest (several
    # groups to match by the Hungarian method) one by one.
    single = np.array([g.size == 1 for g in per_cluster], dtype=bool)
    if single.any():
        next_id = _split_single_group(out, impure[single], by_cluster[starts[single]], graph, comp, x, next_id)
    if (~single).any():
        next_id = _split_each(out, impure[~single], [g for g, s in zip(per_cluster, single) if not s], graph,
                              comp, x, next_id)
    return next_id
