import numpy as np
import pytest
import torch

from aas_ray.config import ConfigError, ModelConfig, load_config
from aas_ray.models import FeatureCache, ModelError, build_model, extract_features


def test_unknown_config_keys_are_rejected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("al:\n  epsilon: 0.5\n  epsilonn: 0.4\n")
    with pytest.raises(ConfigError, match=r"unknown key 'al.epsilonn'"):
        load_config(p)
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(None, ["trian.epochs=3"])
    with pytest.raises(ConfigError, match="'al.epsilon'"):
        load_config(None, ["al.epsilon=1.5"])
    cfg = load_config(None, ["al.epsilon=0.25", "cluster.finch_partition=1"])
    assert cfg.al.epsilon == 0.25 and cfg.cluster.finch_partition == 1
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_the_config_defaults_are_the_library_defaults():
    """Each default lives in the library's signatures; the config only refers to them."""
    import inspect
    from typing import get_args

    from aas_ray.al import config_keys, list_strategies, strategy_entry, strategy_params
    from aas_ray.cluster import build_views
    from aas_ray.config import ALConfig, ClusterConfig, Strategy
    from aas_ray.experiment.cycle import SAMPLED, sampler_for
    from aas_ray.orchestration.report import ORDER

    cluster = ClusterConfig().view_params()
    signature = inspect.signature(build_views).parameters
    assert cluster and all(cluster[k] == signature[k].default for k in cluster)
    # the primitives build_views calls default to what build_views passes them
    from aas_ray.cluster import dbscan_view, jaccard_graph, knn_search
    from aas_ray.cluster.views import finch_partitions, hdbscan_view

    def default(f, name):
        return inspect.signature(f).parameters[name].default

    for f, name, ours in [(jaccard_graph, "k1", "k1"), (jaccard_graph, "k2", "k2"),
                          (jaccard_graph, "min_sim", "jaccard_min_sim"), (knn_search, "method", "knn"),
                          (knn_search, "exact_up_to", "knn_exact_up_to"), (knn_search, "target_recall", "knn_recall"),
                          (finch_partitions, "knn", "knn"), (dbscan_view, "min_samples", "min_samples"),
                          (hdbscan_view, "min_cluster_size", "hdbscan_min_cluster_size"),
                          (hdbscan_view, "min_samples", "hdbscan_min_samples")]:
        assert default(f, name) == signature[ours].default, (f.__name__, name)
    al = ALConfig()
    for name in list_strategies():
        keys = config_keys(name)
        # every parameter of every sampler is configurable, under a key whose default is the sampler's
        assert {p: getattr(al, k) for p, k in keys.items()} == strategy_params(name)
        built = sampler_for(al.model_copy(update={"strategy": name}))
        assert built.name == name and type(built) is strategy_entry(name).cls
    assert list(get_args(Strategy)) == ORDER == ["none", *SAMPLED, "supervised"]
    assert set(SAMPLED) == {"random", "aas", "nis", "farthest-nearest", "uncertainty", "nearest", "lbas", "gbas"}


def test_shipped_configs_are_valid():
    from pathlib import Path

    from aas_ray.config import read_yaml

    checked = 0
    for p in sorted((Path(__file__).parents[1] / "tune_configs").glob("*.yaml")):
        if "study" not in read_yaml(p):  # studies are validated by their own loader
            load_config(p)
            checked += 1
    assert checked >= 2


def test_builtin_backbone_is_pretrained():
    m = build_model(ModelConfig(arch="tf_efficientnet_lite0", weights="builtin:efficientnet_lite0"))
    assert m.feat_dim == 1280 and m.mean_std == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    import timm

    random = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    w = dict(m.backbone.named_parameters())["conv_stem.weight"]
    assert not torch.allclose(w, dict(random.named_parameters())["conv_stem.weight"])


def test_local_weights_roundtrip_and_mismatch(tmp_path):
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("resnet18", num_classes=0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "r.pth")
    save_file(src.state_dict(), str(tmp_path / "r.safetensors"))
    for name in ("r.pth", "r.safetensors"):
        m = build_model(ModelConfig(arch="resnet18", weights=str(tmp_path / name)))
        assert torch.equal(m.backbone.conv1.weight, src.conv1.weight)
    with pytest.raises(ModelError, match="do not match"):
        build_model(ModelConfig(arch="resnet34", weights=str(tmp_path / "r.pth")))
    with pytest.raises(ModelError, match="not found"):
        build_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "nope.pth")))
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot load weights"):
        build_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "bad.pth")))


def test_feature_extraction_and_cache(tiny_cfg):
    from aas_ray.experiment.prepare import prepare_data

    data = prepare_data(tiny_cfg, progress=False)
    calls = []

    def compute():
        calls.append(1)
        return extract_features(build_model(tiny_cfg.model), data.cat, (64, 64), 16, 0, "cpu", progress=False)

    cache = FeatureCache(tiny_cfg.data.cache_dir)
    f1 = cache.get_or_compute(data.cat, tiny_cfg.model, compute)
    f2 = cache.get_or_compute(data.cat, tiny_cfg.model, compute)
    assert len(calls) == 1 and np.array_equal(f1, f2)
    assert f1.shape == (len(data.cat), 1280)
    assert np.allclose(np.linalg.norm(f1, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("key,value,message", [
    ("eps", 1.5, r"eps must be 'auto' or a radius in \(0, 1\); got 1.5"),
    ("eps", "most", r"eps must be 'auto' or a radius"),
    ("k2", 40, r"k2 \(40\) must not exceed k1 \(30\)"),
    ("eps_gap", 0.7, r"eps_gap must be a gap in \[0, 0.5\)"),
    ("finch_partition", -1, r"finch_partition must be 'auto' or a level >= 0"),
    ("knn", "lsh", r"knn must be one of auto, exact, ivf, hnsw"),
    ("hdbscan_min_cluster_size", 1, r"hdbscan_min_cluster_size must be an integer >= 2"),
])
def test_the_library_rejects_bad_view_parameters_before_searching_and_the_config_at_load(key, value, message):
    """scikit-learn's way: the parameters' constraints live with the function and are checked
    before any work; the configuration asks the same check when it is loaded."""
    from aas_ray.checks import InputError
    from aas_ray.cluster import build_views

    empty = np.zeros((0, 8), np.float32)  # a search would fail on this with another message
    with pytest.raises(InputError, match="build_views: " + message):
        build_views(empty, **{key: value})
    with pytest.raises(ConfigError, match=key):  # pydantic's own message where the field's type says it
        load_config(None, [f"cluster.{key}={value}"])
