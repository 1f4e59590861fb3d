"""Images for training and feature extraction: a torch Dataset over a catalogue with
SpCL's augmentations (docs/method.md §10), upfront image checks, and the PK sampler."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from aas_ray.data.catalogue import Catalogue, DatasetError
from aas_ray.grouping import Groups

log = logging.getLogger(__name__)


class ImageLoadError(DatasetError):
    pass


def load_rgb(path: Path, bbox=None, size: tuple[int, int] | None = None) -> Image.Image:
    """Open one image as RGB (cropped to ``bbox`` = [x, y, w, h] when given), or raise naming it.

    With ``size`` (height, width: what the image will be resized to), a JPEG is decoded at
    the smallest of its built-in reductions (1/2, 1/4, 1/8) that still leaves the crop at
    least that large: a 6-megapixel photo for a 128-pixel network decodes ~8x faster, and
    the pixels are the same whether they come from here or from the image cache.
    """
    box = None
    if bbox is not None and not (isinstance(bbox, float) and np.isnan(bbox)):
        box = _parse_bbox(bbox)
    try:
        with Image.open(path) as im:
            full = im.size
            if size is not None and im.format == "JPEG":
                cw, ch = (box[2], box[3]) if box is not None else full
                scale = max(size[1] / max(cw, 1), size[0] / max(ch, 1))
                if scale < 1:
                    im.draft("RGB", (int(np.ceil(full[0] * scale)), int(np.ceil(full[1] * scale))))
            im = im.convert("RGB")
    except FileNotFoundError:
        raise ImageLoadError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"corrupt or unreadable image: {path} ({err})") from None
    if box is not None:
        sx, sy = im.size[0] / full[0], im.size[1] / full[1]
        x, y, w, h = box
        im = im.crop((int(x * sx), int(y * sy), int((x + w) * sx), int((y + h) * sy)))
    return im


def thumbnail(path: Path, bbox=None, max_side: int = 160) -> Image.Image:
    """A copy of an image (cropped to ``bbox``) at most ``max_side`` pixels on its longer side,
    for a page; a JPEG is decoded at a reduced scale, so a large photo is never held whole."""
    im = load_rgb(path, bbox, (max_side, max_side))
    im.thumbnail((max_side, max_side))
    return im


def _parse_bbox(bbox):
    if isinstance(bbox, str):
        vals = [float(v) for v in bbox.strip("[]() ").replace(",", " ").split()]
    else:
        vals = [float(v) for v in bbox]
    return vals if len(vals) == 4 and vals[2] > 0 and vals[3] > 0 else None


def check_images(cat: Catalogue, skip_bad: bool) -> Catalogue:
    """Decode every image once, before any loader worker sees it.

    A bad image raises :class:`ImageLoadError` naming it, or with ``skip_bad`` is dropped
    with a warning; the count of skipped images is logged and kept in ``cat.df.attrs``.
    """
    bad = []
    for i, path in enumerate(cat.abs_paths()):
        try:
            with Image.open(path) as im:
                im.load()
        except FileNotFoundError:
            bad.append((i, f"image not found: {path}"))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            bad.append((i, f"corrupt or unreadable image: {path} ({err})"))
    if not bad:
        cat.df.attrs["skipped_images"] = 0
        return cat
    out = cat.subset(kept_rows(cat, bad, skip_bad))
    out.df.attrs["skipped_images"] = len(bad)
    return out


def kept_rows(cat: Catalogue, bad: list[tuple[int, str]], skip_bad: bool) -> np.ndarray:
    """The rows left once the ``bad`` (row, reason) images are dropped, or the error naming the
    first of them when skipping is not asked for."""
    bad = sorted(bad)
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ImageLoadError(bad[0][1] + more + "; set data.skip_bad_images: true to skip them")
    for _, msg in bad[:20]:
        log.warning("skipping %s", msg)
    if bad:
        log.warning("skipped %d bad image(s) of %d in dataset %r", len(bad), len(cat), cat.name)
    keep = np.setdiff1d(np.arange(len(cat)), [i for i, _ in bad])
    if keep.size == 0:
        raise DatasetError(f"dataset {cat.name!r}: every image is missing or corrupt")
    return keep


def normalisation(model_cfg_mean_std=None):
    mean, std = model_cfg_mean_std or ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return T.Normalize(mean=mean, std=std)


def train_transform(size: tuple[int, int], mean_std=None) -> T.Compose:
    """SpCL's training augmentations: flip, pad 10 + random crop, random erasing 0.5."""
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.Pad(10),
        T.RandomCrop(size),
        T.ToTensor(),
        normalisation(mean_std),
        T.RandomErasing(p=0.5, value=0),
    ])


def test_transform(size: tuple[int, int], mean_std=None) -> T.Compose:
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(), normalisation(mean_std)])


class CatalogueImages(Dataset):
    """(image tensor, index) for every row of a catalogue, read from the image cache when the
    catalogue has one (a ``cached`` column: copies at the network's input size)."""

    def __init__(self, cat: Catalogue, transform, size: tuple[int, int] | None = None):
        self.paths = cat.abs_paths()
        self.bboxes = cat.df["bbox"].tolist() if "bbox" in cat.df.columns else [None] * len(cat)
        same = size is not None and cat.cached_size == tuple(size) and "cached" in cat.df.columns
        self.cached = cat.df["cached"].tolist() if same else None
        self.size = tuple(size) if size is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.cached is not None:
            with Image.open(self.cached[i]) as im:
                return self.transform(im.convert("RGB")), i
        return self.transform(load_rgb(self.paths[i], self.bboxes[i], self.size)), i


class PKSampler(Sampler):
    """Batches of P pseudo-identities x K images (docs/method.md §10), ``iters`` batches per epoch.

    Labels are pseudo-labels: every image with its own label (an un-clustered instance)
    is a class of one and is repeated K times when drawn, as SpCL does.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, k: int, iters: int, seed: int = 0):
        self.labels = np.asarray(labels)
        self.k = k
        self.p = max(1, batch_size // k)
        self.iters = iters
        self.rng = np.random.default_rng(seed)
        self.groups = list(Groups.of_labels(self.labels)[0])
        multi = [g for g in self.groups if g.size > 1]
        # Prefer real clusters as anchors, as SpCL's sampler does; instances fill in.
        self.anchor_groups = multi if len(multi) >= self.p else self.groups

    def __len__(self) -> int:
        return self.iters * self.p * self.k

    def __iter__(self):
        for _ in range(self.iters):
            pick = self.rng.choice(len(self.anchor_groups), size=min(self.p, len(self.anchor_groups)), replace=False)
            for gi in pick:
                g = self.anchor_groups[gi]
                yield from self.rng.choice(g, size=self.k, replace=g.size < self.k).tolist()


def to_tensor_batch(items):
    imgs, idx = zip(*items)
    return torch.stack(imgs), torch.tensor(idx)
