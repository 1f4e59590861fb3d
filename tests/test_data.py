import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aas_ray.config import DataConfig, SyntheticConfig
from aas_ray.data import DatasetError, load_catalogue
from aas_ray.data.images import ImageLoadError, PKSampler, check_images
from aas_ray.data.synthetic import synthetic_dataset


def small_synth(**kw):
    return SyntheticConfig(identities=6, families=2, min_images=3, max_images=6, image_size=40, **kw)


def test_synthetic_writes_real_pngs_and_caches(tmp_path):
    root, df = synthetic_dataset(small_synth(), tmp_path, progress=False)
    assert len(df) >= 6 * 3 and df["identity"].nunique() == 6
    im = Image.open(root / df["path"].iloc[0])
    assert im.size == (40, 40) and im.mode == "RGB"
    mtime = (root / "catalogue.csv").stat().st_mtime_ns
    root2, _ = synthetic_dataset(small_synth(), tmp_path, progress=False)
    assert root2 == root and (root / "catalogue.csv").stat().st_mtime_ns == mtime  # not regenerated
    root3, _ = synthetic_dataset(small_synth(seed=1), tmp_path, progress=False)
    assert root3 != root  # new parameters, new dataset


def test_synthetic_is_deterministic_and_identities_differ(tmp_path):
    r1, d1 = synthetic_dataset(small_synth(), tmp_path / "a", progress=False)
    r2, d2 = synthetic_dataset(small_synth(), tmp_path / "b", progress=False)
    a = np.asarray(Image.open(r1 / d1["path"].iloc[5]))
    b = np.asarray(Image.open(r2 / d2["path"].iloc[5]))
    assert np.array_equal(a, b)
    counts = d1.groupby("identity").size()
    assert counts.min() >= 3 and counts.max() <= 6


def write_folder(root, layout):
    for rel in layout:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(p)


def test_folder_and_csv_sources(tmp_path):
    write_folder(tmp_path / "f", ["a/1.png", "a/2.png", "b/1.jpg"])
    cat = load_catalogue(DataConfig(name="folder", root=str(tmp_path / "f")))
    assert sorted(cat.df["identity"]) == ["a", "a", "b"] and "split" not in cat.df
    write_folder(tmp_path / "s", ["train/a/1.png", "train/b/1.png", "val/a/2.png"])
    cat = load_catalogue(DataConfig(name="folder", root=str(tmp_path / "s")))
    assert sorted(cat.df["split"]) == ["test", "train", "train"]
    pd.DataFrame({"identity": ["a", "b"], "path": ["a/1.png", "b/1.jpg"]}).to_csv(tmp_path / "c.csv", index=False)
    cat = load_catalogue(DataConfig(name="csv", csv=str(tmp_path / "c.csv"), root=str(tmp_path / "f")))
    assert len(cat) == 2 and (cat.root / cat.df["path"][0]).is_file()


def test_missing_root_says_where(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_catalogue(DataConfig(name="folder", root=str(tmp_path / "nope")))
    with pytest.raises(DatasetError, match=r"expected its images under .*Lion_Data_Zero"):
        load_catalogue(DataConfig(name="LionData", root=str(tmp_path)))
    with pytest.raises(DatasetError, match="metadata expected at"):
        load_catalogue(DataConfig(name="ZakynthosTurtles", root=str(tmp_path)))
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_catalogue(DataConfig(name="Unicorns"))


def test_empty_and_malformed_catalogues(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_catalogue(DataConfig(name="folder", root=str(tmp_path / "empty")))
    pd.DataFrame({"identity": [], "path": []}).to_csv(tmp_path / "e.csv", index=False)
    with pytest.raises(DatasetError, match="empty"):
        load_catalogue(DataConfig(name="csv", csv=str(tmp_path / "e.csv")))
    pd.DataFrame({"name": ["a"], "file": ["x.png"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['image_id', 'identity', 'path'\]"):
        load_catalogue(DataConfig(name="csv", csv=str(tmp_path / "m.csv")))


def test_corrupt_and_missing_images(tmp_path):
    write_folder(tmp_path, ["a/1.png", "a/2.png", "b/1.png"])
    (tmp_path / "b" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    cat = load_catalogue(DataConfig(name="folder", root=str(tmp_path)))
    with pytest.raises(ImageLoadError, match=r"corrupt or unreadable image: .*b/2.png"):
        check_images(cat, skip_bad=False)
    kept = check_images(cat, skip_bad=True)
    assert len(kept) == 3 and kept.df.attrs["skipped_images"] == 1
    (tmp_path / "a" / "1.png").unlink()
    with pytest.raises(ImageLoadError, match="not found"):
        check_images(cat, skip_bad=False)


def test_one_identity_is_rejected_by_the_protocol(tmp_path, tiny_cfg):
    from aas_ray.checks import InputError
    from aas_ray.experiment.prepare import make_split, prepare_data

    write_folder(tmp_path / "one", ["solo/1.png", "solo/2.png", "solo/3.png"])
    cfg = tiny_cfg.model_copy(update={"data": DataConfig(name="folder", root=str(tmp_path / "one"))})
    data = prepare_data(cfg, progress=False)
    with pytest.raises(InputError, match="1 identity"):
        make_split(cfg, data, None)


def test_pk_sampler():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    s = PKSampler(labels, batch_size=8, k=4, iters=5, seed=0)
    idx = np.array(list(s))
    assert idx.size == len(s) == 40
    for batch in idx.reshape(5, 8):
        groups = labels[batch].reshape(2, 4)
        assert (groups == groups[:, :1]).all()  # K images of one pseudo-identity each


def test_liondata(lion_root):
    cat = load_catalogue(DataConfig(name="LionData", root=str(lion_root)))
    assert len(cat) == 740 and cat.n_identities == 94
    assert all((cat.root / p).is_file() for p in cat.df["path"][:20])
