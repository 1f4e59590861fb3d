"""SpCL's pieces (Ge et al., NeurIPS 2020; docs/method.md §10): the hybrid memory with its
contrastive loss, and the self-paced reliability criteria on pseudo-labels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aas_ray.grouping import dense_ids


class HybridMemory(nn.Module):
    """All n instance features plus their current pseudo-labels.

    The loss is SpCL's: logits to every memory item averaged per label (cluster centroids
    and un-clustered instances alike), softmax over the labels present, NLL of the own label.
    The memory is a constant for the gradient; :meth:`update` applies SpCL's momentum update
    after the backward pass (in DDP with every worker's batch, so all copies stay equal).

    A training step makes no host sync here: the number of labels and their sizes are read
    once when the labels change (the labels buffer's version counter says when), and the
    update's rounds come from the indices on the host.
    """

    def __init__(self, num_features: int, num_samples: int, temp: float = 0.05, momentum: float = 0.2):
        super().__init__()
        self.temp, self.momentum = temp, momentum
        self.register_buffer("features", torch.zeros(num_samples, num_features))
        self.register_buffer("labels", torch.arange(num_samples))
        self._sizes_of: tuple | None = None  # (labels tensor, its version, items per label)

    def label_sizes(self) -> torch.Tensor:
        """Items per label (0 for a label with none), recomputed only when the labels changed."""
        labels = self.labels
        seen = self._sizes_of
        if seen is None or seen[0] is not labels or seen[1] != labels._version:
            sizes = torch.bincount(labels, minlength=int(labels.max()) + 1)
            self._sizes_of = seen = (labels, labels._version, sizes)
        return seen[2]

    def forward(self, inputs: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
        logits = inputs.float().mm(self.features.detach().t()) / self.temp
        labels = self.labels
        nums = self.label_sizes().to(logits.dtype)[:, None]
        sums = torch.zeros(nums.size(0), logits.size(0), device=logits.device).index_add_(
            0, labels, logits.t().contiguous())
        present = (nums > 0).float()
        mean = (sums / (present * nums + (1 - present))).t()
        # Softmax restricted to labels in use; subtract the max for stability.
        mean = mean - mean.max(dim=1, keepdim=True).values.detach()
        exps = torch.exp(mean) * present.t()
        probs = exps / (exps.sum(dim=1, keepdim=True) + 1e-6)
        return F.nll_loss(torch.log(probs + 1e-6), labels[indexes])

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, indexes: torch.Tensor) -> None:
        """f_i <- normalise(m f_i + (1 - m) x_i), sample by sample in batch order, as SpCL.

        An index met several times in one batch is updated once per occurrence, in batch
        order (PK batches repeat an image whose pseudo-class has fewer than K images, and every
        un-clustered instance K times). The batch is applied in rounds, the r-th occurrence of
        each index in round r: within a round the indices are distinct, so a round is one
        gather and one ``index_copy_``, and the result equals the sample-by-sample loop's.
        ``indexes`` on the host costs no sync (on the device it is copied to the host once).
        """
        host = indexes.cpu().numpy()
        if not host.size:
            return
        rank = _occurrence(host)
        idx = indexes.to(self.features.device, non_blocking=True)
        x = inputs.float()
        if rank.max() == 0:  # all distinct: one round
            steps = [(None, idx)]
        else:
            order = np.argsort(rank, kind="stable")  # by round, batch order within a round
            bounds = np.searchsorted(rank[order], np.arange(rank.max() + 2))
            pos = torch.from_numpy(order).to(self.features.device, non_blocking=True)
            steps = [(pos[a:b], idx[pos[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]
        m = self.momentum
        for pos, rows in steps:
            xr = x if pos is None else x[pos]
            f = self.features.index_select(0, rows).mul_(m).add_((1.0 - m) * xr)
            f.div_(f.norm(dim=1, keepdim=True).clamp_min(1e-12))
            self.features.index_copy_(0, rows, f)


def _occurrence(indexes: np.ndarray) -> np.ndarray:
    """For each position, how many times its value occurred before it (0 for a first occurrence)."""
    order = np.argsort(indexes, kind="stable")
    s = indexes[order]
    start = np.r_[True, s[1:] != s[:-1]]
    pos = np.arange(s.size)
    run_start = np.maximum.accumulate(np.where(start, pos, 0))
    out = np.empty(s.size, dtype=np.int64)
    out[order] = pos - run_start
    return out


def with_instance_classes(labels: np.ndarray) -> np.ndarray:
    """Noise (-1) becomes one class per sample, numbered after the clusters (SpCL)."""
    out = np.asarray(labels, dtype=np.int64).copy()
    clustered = out >= 0
    base = 0
    if clustered.any():
        out[clustered], base = dense_ids(out[clustered])
    noise = np.flatnonzero(~clustered)
    out[noise] = base + np.arange(noise.size)
    return out


def _iou_with(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per sample: IoU of its cluster under ``labels`` and under ``other`` (both instance-classed).

    Equals SpCL's Σ min / Σ max of the two label-equality rows, without the n x n matrices.
    """
    a, _ = dense_ids(labels)
    b, _ = dense_ids(other)
    na, nb = np.bincount(a), np.bincount(b)
    key = a.astype(np.int64) * (b.max() + 1) + b
    _, inv, nab = np.unique(key, return_inverse=True, return_counts=True)
    inter = nab[inv]
    return inter / (na[a] + nb[b] - inter)


def self_paced_labels(
    labels: np.ndarray, tight: np.ndarray, loose: np.ndarray, indep_thres: float | None,
    protected: np.ndarray | None = None,
) -> tuple[np.ndarray, float, dict]:
    """SpCL's reliability criteria (docs/method.md §10): a sample keeps its cluster only if its cluster
    is independent (R_indep vs the loose clustering within ``indep_thres``) and the sample
    is compact (R_comp vs the tight clustering as good as the cluster's best); otherwise it
    becomes an instance class. ``protected`` samples (held by an ML constraint) are never
    demoted. ``indep_thres`` None = fix it now at the 90th percentile, as SpCL's first epoch.
    """
    lab = with_instance_classes(labels)
    r_comp = 1 - _iou_with(lab, with_instance_classes(tight))
    r_indep = 1 - _iou_with(lab, with_instance_classes(loose))
    k = lab.max() + 1
    cluster_comp = np.full(k, np.inf)
    np.minimum.at(cluster_comp, lab, r_comp)
    cluster_indep = np.full(k, np.inf)
    np.minimum.at(cluster_indep, lab, r_indep)
    sizes = np.bincount(lab, minlength=k)
    if indep_thres is None:
        multi = np.sort(cluster_indep[sizes > 1])
        indep_thres = float(multi[min(multi.size - 1, int(round(multi.size * 0.9)))]) if multi.size else 1.0
    keep = (cluster_indep[lab] <= indep_thres) & (r_comp <= cluster_comp[lab])
    keep |= sizes[lab] == 1
    if protected is not None:
        keep |= protected
    out = lab.copy()
    demoted = np.flatnonzero(~keep)
    out[demoted] = k + np.arange(demoted.size)
    sizes_out = np.bincount(out)
    stats = {"clusters": int((sizes_out > 1).sum()), "instances": int((sizes_out == 1).sum()),
             "demoted": int(demoted.size)}
    return out, indep_thres, stats
