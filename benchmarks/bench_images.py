"""Are images ever the bottleneck? Training and feature-extraction throughput on camera-sized
JPEGs against the same images pre-resized, measured in one run, interleaved.

It writes ``--photos`` multi-megapixel JPEGs (a rendered coat per individual, enlarged with
grain, several shots each, with a bounding box like a detector's) and a copy of the same
images already at the network's size, then times, with the trainer's own loaders:

* training steps (SpCL's hybrid-memory step, offline EfficientNet-Lite0, PK batches);
* feature extraction (the evaluation pass);

for (a) the pre-resized copies, (b) the full-size photos through the image cache (what
aas-ray does by default; the one-time cache build is timed separately) and (c) the full-size
photos decoded every time without the cache (draft-mode JPEG decoding only), and the old way,
(d) full decode every time. The target: (b) within 10 % of (a).

    .venv/bin/python benchmarks/bench_images.py [--photos 96] [--megapixels 6] [--workers 2]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from aas_ray.config import DataConfig, ModelConfig
from aas_ray.data import load_catalogue
from aas_ray.data.image_cache import cache_usage, cached_catalogue
from aas_ray.data.images import CatalogueImages, PKSampler, load_rgb, to_tensor_batch, train_transform
from aas_ray.data.synthetic import family_coat, individual_coat, render_image
from aas_ray.experiment.spcl import HybridMemory
from aas_ray.models import build_model, extract_features
from saving import save_results


class FullDecode(CatalogueImages):
    """The loader before this change: every photo decoded at full size, every time."""

    def __getitem__(self, i):
        return self.transform(load_rgb(self.paths[i], self.bboxes[i])), i


def make_photos(root: Path, n: int, megapixels: float, size: int) -> None:
    rng = np.random.default_rng(0)
    w = int(np.sqrt(megapixels * 1e6 * 3 / 2))
    h = int(w * 2 / 3)
    fam = family_coat(rng)
    n_ids = max(2, n // 6)
    coats = [individual_coat(fam, rng) for _ in range(n_ids)]
    from aas_ray.data.synthetic import render_coat

    textures = [render_coat(c) for c in coats]
    rows = []
    for i in range(n):
        ident = i % n_ids
        shot = render_image(textures[ident], 512, rng, clutter=0.5).resize((w // 2, h // 2), Image.BICUBIC)
        canvas = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(60, 160, 3)))
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        canvas.paste(shot, (x0, y0))
        grain = rng.normal(0, 6, (h // 4, w // 4, 3))
        arr = np.asarray(canvas, dtype=np.float32) + np.kron(grain, np.ones((4, 4, 1)))[:h, :w]
        rel = f"id{ident:03d}/{i:04d}.jpg"
        (root / "full" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / "full" / rel, quality=92)
        rows.append({"image_id": f"{i:04d}", "identity": f"id{ident:03d}", "path": rel,
                     "bbox": f"[{x0}, {y0}, {w // 2}, {h // 2}]"})
        small = load_rgb(root / "full" / rel, rows[-1]["bbox"]).resize((size, size), Image.BICUBIC)
        (root / "small" / rel).parent.mkdir(parents=True, exist_ok=True)
        small.save((root / "small" / rel).with_suffix(".png"))
    import pandas as pd

    df = pd.DataFrame(rows)
    df.to_csv(root / "full.csv", index=False)
    small = df.assign(path=df["path"].str.replace(".jpg", ".png", regex=False), bbox="")
    small.to_csv(root / "small.csv", index=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=96)
    p.add_argument("--megapixels", type=float, default=6.0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="timed training steps per loader per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    make_photos(tmp, args.photos, args.megapixels, args.size)
    made = time.perf_counter() - t
    size = (args.size, args.size)
    full = load_catalogue(DataConfig(name="csv", csv=str(tmp / "full.csv"), root=str(tmp / "full")))
    small = load_catalogue(DataConfig(name="csv", csv=str(tmp / "small.csv"), root=str(tmp / "small")))
    t = time.perf_counter()
    cached = cached_catalogue(full, size, tmp / "cache", progress=False)
    build = time.perf_counter() - t
    disk = cache_usage(tmp / "cache")[0]
    photo_mb = sum(f.stat().st_size for f in (tmp / "full").rglob("*.jpg")) / 2**20

    mcfg = ModelConfig(arch="tf_efficientnet_lite0", weights="builtin:efficientnet_lite0", image_size=size)
    model = build_model(mcfg)
    n = len(full)
    labels = np.unique(full.df["identity"], return_inverse=True)[1]
    memory = HybridMemory(model.feat_dim, n)
    memory.features.copy_(torch.nn.functional.normalize(torch.randn(n, model.feat_dim), dim=1))
    memory.labels.copy_(torch.from_numpy(labels))
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    tr = train_transform(size, model.mean_std)
    loaders = {
        "pre-resized": CatalogueImages(small, tr, size),
        "full-size, image cache": CatalogueImages(cached, tr, size),
        "full-size, draft decode": CatalogueImages(full, tr, size),
        "full-size, full decode (before)": FullDecode(full, tr, size),
    }

    def train(ds) -> float:
        loader = DataLoader(ds, batch_size=args.batch, sampler=PKSampler(labels, args.batch, 4, args.steps),
                            num_workers=args.workers, collate_fn=to_tensor_batch, drop_last=True)
        model.train()
        seen, t0 = 0, time.perf_counter()
        for imgs, idx in loader:
            loss = memory(model(imgs), idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += imgs.size(0)
        return seen / (time.perf_counter() - t0)

    cats = {"pre-resized": small, "full-size, image cache": cached, "full-size, draft decode": full}

    def extract(name) -> float:
        t0 = time.perf_counter()
        extract_features(model, cats[name], size, 64, args.workers, "cpu", False)
        return len(full) / (time.perf_counter() - t0)

    train(loaders["pre-resized"])  # warm-up: allocator, worker start, first batches
    rates = {k: [] for k in loaders}
    xrates = {k: [] for k in cats}
    for _ in range(args.rounds):
        for name, ds in loaders.items():
            rates[name].append(train(ds))
        for name in cats:
            xrates[name].append(extract(name))
    base, basex = np.mean(rates["pre-resized"]), np.mean(xrates["pre-resized"])
    lines = [f"images: {args.photos} JPEGs of {args.megapixels:g} MP ({photo_mb:.0f} MiB, made in {made:.0f} s), "
             f"network input {size}, batch {args.batch}, {args.workers} loader workers, {torch.get_num_threads()} "
             "torch threads; mean of interleaved rounds",
             f"image cache: built once in {build:.1f} s ({args.photos / build:.1f} photos/s), "
             f"{disk[1]} files, {disk[2] / 2**20:.1f} MiB ({disk[2] / disk[1] / 1024:.0f} KiB per image)",
             "", "| loader | training images/s | vs pre-resized | extraction images/s | vs pre-resized |",
             "|---|---|---|---|---|"]
    for name in loaders:
        r = np.mean(rates[name])
        x = np.mean(xrates[name]) if name in xrates else float("nan")
        lines.append(f"| {name} | {r:.1f} | {r / base:.2f} | {x:.1f} | {x / basex:.2f} |")
    report = "\n".join(lines)
    print(report)
    save_results("images", report, {"train": rates, "extract": xrates, "build_s": build, "cache_bytes": disk[2],
                                    "photos": args.photos, "megapixels": args.megapixels})
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
