"""Images decoded once per size: copies of a catalogue's photos at the network's input size.

Camera photos are multi-megapixel JPEGs; a 128-pixel network needs a fraction of their
pixels, and training reads each image once per epoch. Each image is decoded once (JPEG
draft mode, see :func:`aas_ray.data.images.load_rgb`), cropped to its ``bbox``, resized and
stored losslessly (PNG) under ``<cache_dir>/images/<height>x<width>/``, keyed by the file's
path, size and modification time and the box: a changed photo gets a new copy. Reading
the copy gives the very pixels the photo would have given, so results do not depend on
whether the cache is on. Building the cache also checks every image (a missing or
corrupt one is named, or skipped with ``data.skip_bad_images``).

Disk: about 30-60 KB per image at 128 px, 100-200 KB at 224 px; ``aas-ray cache`` shows
the size and ``aas-ray cache --clear images`` removes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from aas_ray.data.catalogue import Catalogue
from aas_ray.data.images import ImageLoadError, kept_rows, load_rgb

log = logging.getLogger(__name__)
VERSION = 1


def cache_root(cache_dir: str | Path) -> Path:
    return Path(os.path.expanduser(str(cache_dir))) / "images"


def _entry(folder: Path, path: Path, bbox) -> Path:
    st = path.stat()
    key = f"v{VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{bbox}"
    h = hashlib.sha1(key.encode()).hexdigest()
    return folder / h[:2] / f"{h}.png"


def _build(src: Path, bbox, size: tuple[int, int], dst: Path) -> None:
    im = load_rgb(src, bbox, size).resize((size[1], size[0]), Image.BICUBIC)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, suffix=".png.tmp")
    with os.fdopen(fd, "wb") as f:
        im.save(f, "PNG", compress_level=1)  # fast to write, still lossless
    os.replace(tmp, dst)  # a half-written copy is never taken for a finished one


def cached_catalogue(cat: Catalogue, size: tuple[int, int], cache_dir: str | Path, skip_bad: bool = False,
                     progress: bool = True, threads: int | None = None) -> Catalogue:
    """``cat`` with a ``cached`` column (its copy at ``size``), building the missing copies.

    Every image not yet cached is decoded here, which checks it: a missing or corrupt image
    raises :class:`ImageLoadError` naming it, or with ``skip_bad`` is dropped with a warning.
    """
    size = (int(size[0]), int(size[1]))
    folder = cache_root(cache_dir) / f"{size[0]}x{size[1]}"
    paths = cat.abs_paths()
    bboxes = cat.df["bbox"].tolist() if "bbox" in cat.df.columns else [None] * len(cat)
    entries: list[Path | None] = []
    bad: list[tuple[int, str]] = []
    for i, p in enumerate(paths):
        try:
            entries.append(_entry(folder, p, bboxes[i]))
        except FileNotFoundError:
            entries.append(None)
            bad.append((i, f"image not found: {p}"))
    todo = [i for i, e in enumerate(entries) if e is not None and not e.is_file()]
    if todo:
        log.info("image cache: decoding %d of %d images once at %dx%d into %s", len(todo), len(paths), *size, folder)

        def build(i):
            try:
                _build(paths[i], bboxes[i], size, entries[i])
                return None
            except ImageLoadError as err:
                return i, str(err)

        # PIL releases the GIL while decoding and resizing: threads use every core.
        with ThreadPoolExecutor(threads or max(1, len(os.sched_getaffinity(0)))) as pool:
            for res in tqdm(pool.map(build, todo), total=len(todo), desc="image cache", disable=not progress):
                if res is not None:
                    bad.append(res)
    keep = kept_rows(cat, bad, skip_bad)
    df = cat.df.iloc[keep].reset_index(drop=True).copy()
    df["cached"] = [str(entries[i]) for i in keep]
    df.attrs["skipped_images"] = len(bad)
    return Catalogue(cat.name, cat.root, df, size)


def cache_usage(cache_dir: str | Path) -> list[tuple[str, int, int]]:
    """(size folder, files, bytes) of the image cache."""
    root = cache_root(cache_dir)
    out = []
    for folder in sorted(root.glob("*x*")) if root.is_dir() else []:
        files = [f for f in folder.rglob("*.png")]
        out.append((folder.name, len(files), sum(f.stat().st_size for f in files)))
    return out
