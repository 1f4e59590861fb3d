"""The embedded default dataset: procedurally generated individual animals.

Each identity has its own coat (stripes, spots or rosettes); identities of one
look-alike family share a base coat and differ in a minority of its marks, so some
are genuinely confusable. Every image re-renders the coat under a new viewpoint
(affine), scale, crop, lighting, background clutter, blur and partial occlusion.
Images per identity follow a long-tailed (Pareto) law. Real PNGs and a catalogue are
written to a cache folder keyed by the parameters, so the demo runs through the same
loaders as real data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

log = logging.getLogger(__name__)

GENERATOR_VERSION = 3
_TEX = 160  # coat texture resolution (pixels)
PATTERNS = ("stripes", "spots", "rosettes")


@dataclass
class Coat:
    """One individual's coat: pattern kind, colours and its marks (texture coordinates)."""

    kind: str
    base: np.ndarray  # RGB of the fur
    mark: np.ndarray  # RGB of the marks
    marks: np.ndarray  # spots/rosettes: (m, 3) x, y, r; stripes: (m, 4) offset, angle, width, wobble


def family_coat(rng: np.random.Generator) -> Coat:
    kind = PATTERNS[rng.integers(len(PATTERNS))]
    base = rng.uniform(120, 230, 3) * np.array([1.0, 0.85, 0.6])
    mark = base * rng.uniform(0.1, 0.4)
    if kind == "stripes":
        m = int(rng.integers(9, 15))
        marks = np.column_stack([
            np.sort(rng.uniform(0, _TEX, m)),
            rng.normal(0.3, 0.25, m),
            rng.uniform(3, 8, m),
            rng.uniform(2, 10, m),
        ])
    else:
        m = int(rng.integers(22, 36)) if kind == "spots" else int(rng.integers(14, 22))
        lo, hi = (4, 9) if kind == "spots" else (7, 12)
        marks = np.column_stack([rng.uniform(8, _TEX - 8, m), rng.uniform(8, _TEX - 8, m), rng.uniform(lo, hi, m)])
    return Coat(kind, base, mark, marks)


def individual_coat(family: Coat, rng: np.random.Generator, change: float = 0.45) -> Coat:
    """A family member: a random ~``change`` share of the family's marks moved or reshaped."""
    marks = family.marks.copy()
    m = marks.shape[0]
    pick = rng.random(m) < change
    pick[rng.integers(m)] = True  # every individual differs somewhere
    if family.kind == "stripes":
        marks[pick, 0] = rng.uniform(0, _TEX, pick.sum())
        marks[pick, 1] += rng.normal(0, 0.35, pick.sum())
        marks[pick, 3] = rng.uniform(2, 10, pick.sum())
    else:
        marks[pick, 0] = rng.uniform(8, _TEX - 8, pick.sum())
        marks[pick, 1] = rng.uniform(8, _TEX - 8, pick.sum())
        marks[pick, 2] *= rng.uniform(0.7, 1.4, pick.sum())
    tint = rng.uniform(0.9, 1.1, 3)
    return Coat(family.kind, np.clip(family.base * tint, 0, 255), family.mark, marks)


def render_coat(coat: Coat) -> np.ndarray:
    """The coat as a (_TEX, _TEX, 3) uint8 texture."""
    yy, xx = np.mgrid[0:_TEX, 0:_TEX].astype(np.float32)
    ink = np.zeros((_TEX, _TEX), dtype=np.float32)
    if coat.kind == "stripes":
        for off, ang, width, wob in coat.marks:
            # A wavy band: distance of each pixel to a sinuous line across the body.
            line = xx * np.sin(ang) + yy * np.cos(ang) - off + wob * np.sin(xx / 13.0 + off)
            ink = np.maximum(ink, np.clip(1.5 - np.abs(line) / width * 1.5, 0, 1))
    else:
        for cx, cy, r in coat.marks:
            d = np.hypot(xx - cx, yy - cy)
            if coat.kind == "spots":
                ink = np.maximum(ink, np.clip((r - d) / 1.5, 0, 1))
            else:  # rosette: a dark broken ring around a slightly darker centre
                ring = np.clip(1 - np.abs(d - r) / 2.2, 0, 1) * (np.sin(np.arctan2(yy - cy, xx - cx) * 3 + cx) > -0.4)
                ink = np.maximum(ink, np.maximum(ring, 0.35 * np.clip((r - 2 - d) / 1.5, 0, 1)))
    tex = coat.base[None, None, :] * (1 - ink[..., None]) + coat.mark[None, None, :] * ink[..., None]
    return np.clip(tex, 0, 255).astype(np.uint8)


def _background(size: int, rng: np.random.Generator, clutter: float = 1.0) -> Image.Image:
    # ``clutter`` scales how far the scene's colour strays from a mid grey-green and how many
    # objects litter it; ImageNet features key on exactly these, not on the coat.
    colour = (120 + clutter * rng.uniform(-80, 80, 3)) * np.array([0.8, 1.0, 0.7])
    noise = rng.normal(0, 18, (size // 4, size // 4, 3))
    bg = Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(4, 12) * clutter)):  # clutter: grass blades, stones, leaves
        c = tuple(int(v) for v in np.clip(colour * rng.uniform(0.5, 1.5, 3), 0, 255))
        x0, y0 = rng.uniform(0, size, 2)
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x0 + rng.normal(0, size / 4), y0 + rng.normal(0, size / 4))], fill=c,
                      width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(2, size / 10)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=c)
    return bg


def render_image(texture: np.ndarray, size: int, rng: np.random.Generator, clutter: float = 1.0) -> Image.Image:
    """One photograph of an individual: viewpoint, scale, crop, light, clutter, blur, occlusion."""
    canvas = 2 * size
    img = _background(canvas, rng, clutter)
    # The coat is tiled 3 x 3 so that any viewpoint lands on fur, never off the texture.
    tex = Image.fromarray(np.tile(texture, (3, 3, 1)))
    # Viewpoint: a random affine map from canvas to texture coordinates (rotation, scale, shear).
    scale = rng.uniform(0.75, 1.25) * _TEX / (1.1 * size)
    ang = rng.normal(0, 0.35)
    shear = rng.normal(0, 0.15)
    a = scale * np.array([[np.cos(ang), -np.sin(ang) + shear], [np.sin(ang), np.cos(ang)]])
    centre = np.array([canvas / 2, canvas / 2]) + rng.normal(0, size * 0.08, 2)
    off = np.array([1.5 * _TEX, 1.5 * _TEX]) - a @ centre
    warped = tex.transform((canvas, canvas), Image.AFFINE, (a[0, 0], a[0, 1], off[0], a[1, 0], a[1, 1], off[1]),
                           resample=Image.BILINEAR)
    body = Image.new("L", (canvas, canvas), 0)
    rx, ry = size * rng.uniform(0.55, 0.75), size * rng.uniform(0.4, 0.55)
    ImageDraw.Draw(body).ellipse([centre[0] - rx, centre[1] - ry, centre[0] + rx, centre[1] + ry], fill=255)
    body = body.rotate(np.degrees(-ang), center=tuple(centre)).filter(ImageFilter.GaussianBlur(2))
    img.paste(warped, (0, 0), body)
    # Crop around the animal (scale and framing), then resize to the output size.
    half = size * rng.uniform(0.75, 1.0)
    cx, cy = np.clip(centre + rng.normal(0, size * 0.08, 2), half, canvas - half)
    img = img.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half))).resize((size, size), Image.BILINEAR)
    arr = np.asarray(img).astype(np.float32)
    arr = arr * rng.uniform(0.6, 1.35) * rng.uniform(0.85, 1.15, 3) + rng.uniform(-25, 25)  # lighting, colour cast
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.7:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.6)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 3) * clutter)):  # occluders: branches or posts in front of the animal
        c = tuple(int(v) for v in rng.uniform(20, 110, 3))
        if rng.random() < 0.5:
            x = rng.uniform(0, size)
            draw.rectangle([x, 0, x + rng.uniform(size * 0.05, size * 0.2), size], fill=c)
        else:
            draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))], fill=c,
                      width=int(rng.integers(2, max(3, size // 12))))
    return img


def images_per_identity(cfg, rng: np.random.Generator) -> np.ndarray:
    raw = cfg.min_images * (1 + rng.pareto(cfg.tail, cfg.identities))
    return np.clip(np.round(raw), cfg.min_images, cfg.max_images).astype(int)


def params_key(cfg) -> str:
    blob = json.dumps({"v": GENERATOR_VERSION, **cfg.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def generate(cfg, out_dir: Path, progress: bool = True) -> pd.DataFrame:
    """Write the PNGs and ``catalogue.csv`` under ``out_dir``; return the catalogue."""
    if cfg.max_images < cfg.min_images:
        raise ValueError(f"synthetic.max_images ({cfg.max_images}) < min_images ({cfg.min_images})")
    rng = np.random.default_rng(cfg.seed)
    families = [family_coat(rng) for _ in range(min(cfg.families, cfg.identities))]
    fam_of = np.arange(cfg.identities) % len(families)
    counts = images_per_identity(cfg, rng)
    rows = []
    bar = tqdm(total=int(counts.sum()), desc="synthetic images", disable=not progress)
    for ident in range(cfg.identities):
        coat = individual_coat(families[fam_of[ident]], rng)
        texture = render_coat(coat)
        name = f"id{ident:04d}"
        (out_dir / "images" / name).mkdir(parents=True, exist_ok=True)
        for j in range(counts[ident]):
            rel = f"images/{name}/{j:03d}.png"
            render_image(texture, cfg.image_size, rng, cfg.clutter).save(out_dir / rel)
            rows.append({"image_id": f"{name}_{j:03d}", "identity": name, "path": rel,
                         "species": f"synthetic-{coat.kind}", "family": int(fam_of[ident])})
            bar.update()
    bar.close()
    df = pd.DataFrame(rows)
    df.to_csv(out_dir / "catalogue.csv", index=False)
    return df


def synthetic_dataset(cfg, cache_dir: str | Path, progress: bool = True) -> tuple[Path, pd.DataFrame]:
    """The cached synthetic dataset for ``cfg``, generated once per distinct parameter set."""
    root = Path(os.path.expanduser(str(cache_dir))) / f"synthetic-{params_key(cfg)}"
    cat = root / "catalogue.csv"
    if cat.is_file():
        return root, pd.read_csv(cat)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=root.parent))
    try:
        log.info("generating synthetic dataset (%d identities) in %s", cfg.identities, root)
        df = generate(cfg, tmp, progress)
        # Publish atomically: a half-written dataset is never mistaken for a finished one.
        try:
            tmp.rename(root)
        except OSError:
            if not cat.is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root, df
