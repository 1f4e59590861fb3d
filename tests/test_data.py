import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
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
    with pytest.raises(DatasetError, match=r"expected its images under .*Nyala_Data_Zero"):
        load_catalogue(DataConfig(name="NyalaData", root=str(tmp_path)))
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


def photo(path, w=1600, h=1200, seed=0):
    """A camera-sized JPEG with structure at every scale."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 40, w // 40, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 20, (h, w, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=92)


def test_jpeg_draft_decode_keeps_the_box_in_place(tmp_path):
    from aas_ray.data.images import load_rgb

    photo(tmp_path / "p.jpg")
    box = [400, 300, 640, 480]
    full = np.asarray(load_rgb(tmp_path / "p.jpg", box).resize((64, 64), Image.BICUBIC), dtype=float)
    fast = np.asarray(load_rgb(tmp_path / "p.jpg", box, (64, 64)).resize((64, 64), Image.BICUBIC), dtype=float)
    with Image.open(tmp_path / "p.jpg") as im:
        im.draft("RGB", (200, 150))
        assert im.size[0] < 1600  # this JPEG does decode at a reduced scale
    # the same region, at a reduced decode: close pixel for pixel (a misplaced box would not be)
    assert np.abs(full - fast).mean() < 6
    shifted = np.asarray(load_rgb(tmp_path / "p.jpg", [460, 340, 640, 480]).resize((64, 64), Image.BICUBIC), dtype=float)
    assert np.abs(full - shifted).mean() > 3 * np.abs(full - fast).mean()


def test_image_cache_gives_the_same_pixels_and_follows_file_changes(tmp_path):
    from aas_ray.data.image_cache import cache_usage, cached_catalogue
    from aas_ray.data.images import CatalogueImages, test_transform

    for i in range(4):
        photo(tmp_path / "data" / f"id{i % 2}" / f"{i}.jpg", seed=i)
    cat = load_catalogue(DataConfig(name="folder", root=str(tmp_path / "data")))
    cat.df["bbox"] = ["[100, 100, 800, 600]", None, "[0, 0, 1600, 1200]", None]
    cached = cached_catalogue(cat, (96, 96), tmp_path / "cache", progress=False)
    assert cached.cached_size == (96, 96) and all(Path(p).is_file() for p in cached.df["cached"])
    t = test_transform((96, 96))
    direct = CatalogueImages(cat, t, (96, 96))
    via = CatalogueImages(cached.subset([0, 1, 2, 3]), t, (96, 96))
    assert via.cached is not None and direct.cached is None
    for i in range(4):
        assert torch.equal(direct[i][0], via[i][0])  # lossless: the very same network input
    assert cache_usage(tmp_path / "cache")[0][:2] == ("96x96", 4)
    # a rewritten photo gets a new copy; the others are reused
    before = list(cached.df["cached"])
    photo(tmp_path / "data" / "id0" / "0.jpg", seed=99)
    os.utime(tmp_path / "data" / "id0" / "0.jpg", ns=(1, 10**18))
    again = cached_catalogue(cat, (96, 96), tmp_path / "cache", progress=False)
    assert again.df["cached"][0] != before[0] and list(again.df["cached"][1:]) == before[1:]
    # a corrupt photo is named, or skipped on request
    (tmp_path / "data" / "id1" / "3.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    cat2 = load_catalogue(DataConfig(name="folder", root=str(tmp_path / "data")))
    with pytest.raises(ImageLoadError, match=r"corrupt or unreadable image: .*3.jpg"):
        cached_catalogue(cat2, (96, 96), tmp_path / "cache", progress=False)
    kept = cached_catalogue(cat2, (96, 96), tmp_path / "cache", skip_bad=True, progress=False)
    assert len(kept) == 3 and kept.df.attrs["skipped_images"] == 1


def test_cache_command_lists_and_clears(tmp_path, capsys):
    from aas_ray.cli import main
    from aas_ray.data.image_cache import cached_catalogue

    photo(tmp_path / "data" / "a" / "1.jpg")
    photo(tmp_path / "data" / "b" / "1.jpg", seed=1)
    cached_catalogue(load_catalogue(DataConfig(name="folder", root=str(tmp_path / "data"))), (64, 64),
                     tmp_path / "cache", progress=False)
    assert main(["cache", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "64x64:       2 files" in capsys.readouterr().out
    assert main(["cache", "--cache-dir", str(tmp_path / "cache"), "--clear", "images"]) == 0
    assert not (tmp_path / "cache" / "images").exists()
