"""SpCL's pieces (docs/method.md §10): the hybrid memory's loss and update, the self-paced filter."""

import numpy as np
import pytest
import torch

from aas_ray.experiment.spcl import HybridMemory, self_paced_labels, with_instance_classes


def unit(t):
    return t / t.norm(dim=1, keepdim=True)


def test_hybrid_memory_loss_is_softmax_over_label_centroids():
    torch.manual_seed(0)
    mem = HybridMemory(4, 5, temp=0.5, momentum=0.2)
    feats = unit(torch.randn(5, 4))
    mem.features.copy_(feats)
    # items 0, 1 form cluster 0; 2, 3 cluster 1; 4 an instance (label 2)
    mem.labels.copy_(torch.tensor([0, 0, 1, 1, 2]))
    x = unit(torch.randn(2, 4))
    idx = torch.tensor([1, 4])
    loss = mem(x, idx)
    # by hand: logit per label = mean over its items of x . f / temp
    logits = x @ feats.t() / 0.5
    per_label = torch.stack([logits[:, [0, 1]].mean(1), logits[:, [2, 3]].mean(1), logits[:, 4]], dim=1)
    expected = torch.nn.functional.cross_entropy(per_label, torch.tensor([0, 2]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    # labels with no item (after re-labelling) take no part in the softmax
    mem.labels.copy_(torch.tensor([0, 0, 3, 3, 4]))
    per_label2 = torch.stack([logits[:, [0, 1]].mean(1), logits[:, [2, 3]].mean(1), logits[:, 4]], dim=1)
    expected2 = torch.nn.functional.cross_entropy(per_label2, torch.tensor([0, 2]))
    assert mem(x, idx).item() == pytest.approx(expected2.item(), rel=1e-4)


def test_hybrid_memory_momentum_update_keeps_unit_rows():
    mem = HybridMemory(3, 4, momentum=0.2)
    mem.features.copy_(unit(torch.eye(4, 3) + 0.1))
    old = mem.features.clone()
    x = unit(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    mem.update(x, torch.tensor([0, 2]))
    want0 = unit((0.2 * old[0] + 0.8 * x[0])[None])[0]
    assert torch.allclose(mem.features[0], want0, atol=1e-6)
    assert torch.allclose(mem.features[1], old[1]) and torch.allclose(mem.features[3], old[3])
    assert torch.allclose(mem.features.norm(dim=1), torch.ones(4), atol=1e-6)


def test_with_instance_classes_numbers_noise_after_clusters():
    out = with_instance_classes(np.array([5, -1, 5, 9, -1]))
    assert out.tolist() == [0, 2, 0, 1, 3]


def test_self_paced_filter_demotes_unreliable_and_spares_protected():
    # cluster 0 = {0..3}, cluster 1 = {4..7}, cluster 2 = {8..11}
    labels = np.repeat([0, 1, 2], 4)
    # loose clustering merges clusters 1 and 2: both lose independence (IoU 4/8)
    loose = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    # tight clustering splits cluster 0 into {0, 1, 2} and outlier 3: image 3 is less compact
    tight = np.array([0, 0, 0, -1, 1, 1, 1, 1, 2, 2, 2, 2])
    out, thres, stats = self_paced_labels(labels, tight, loose, indep_thres=0.1)
    assert thres == 0.1
    # cluster 0 is independent; its compact core stays, image 3 becomes an instance
    assert len({out[0], out[1], out[2]}) == 1 and out[3] not in (out[0],)
    # clusters 1 and 2 fail independence (R_indep = 0.5 > 0.1): all their images are instances
    assert len(set(out[4:].tolist())) == 8
    assert stats == {"clusters": 1, "instances": 9, "demoted": 9}
    # images held by a must-link keep their cluster whatever the criteria say
    protected = np.zeros(12, bool)
    protected[[4, 5]] = True
    out2, _, stats2 = self_paced_labels(labels, tight, loose, 0.1, protected)
    assert out2[4] == out2[5] and stats2["demoted"] == 7


def test_self_paced_threshold_is_fixed_at_the_90th_percentile_once():
    labels = np.repeat(np.arange(10), 3)
    loose = labels.copy()
    loose[loose == 9] = 8  # clusters 8 and 9 lose independence
    _, thres, _ = self_paced_labels(labels, labels, loose, None)
    assert thres == pytest.approx(0.5)
    _, again, _ = self_paced_labels(labels, labels, labels, thres)
    assert again == thres
