import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

LION_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "LionData"


def mixture(n=400, d=32, k=40, spread=0.6, seed=0):
    """Gaussian-mixture unit embeddings and their component labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    y = rng.integers(0, k, n)
    x = centres[y] + spread * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


@pytest.fixture
def gaussian_mixture():
    return mixture()


@pytest.fixture
def lion_root():
    if not (LION_ROOT / "wildlife_reidentification-main").is_dir():
        pytest.skip(f"LionData not present at {LION_ROOT}")
    return LION_ROOT


@pytest.fixture
def tiny_cfg(tmp_path):
    """Config for a tiny synthetic dataset and the offline backbone at a small input size."""
    from aas_ray.config import load_config

    return load_config(None, [
        f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}",
        "data.synthetic.identities=10", "data.synthetic.families=4", "data.synthetic.min_images=4",
        "data.synthetic.max_images=8", "data.synthetic.image_size=48",
        "model.arch=tf_efficientnet_lite0", "model.weights=builtin:efficientnet_lite0",
        "model.image_size=[64,64]", "model.workers=0", "model.batch_size=32",
        "cluster.k1=10", "cluster.k2=3", "al.budget_fraction=0.01", "al.cycles=2",
    ])


os.environ.setdefault("TQDM_DISABLE", "1")
