"""Dataset sources behind one registry (``aas-ray datasets``).

Kinds: a ``wildlife_datasets`` class (optional, AGPL extra), WildlifeReID-10k members
read from its ``metadata.csv``, a plain folder of identity sub-folders, a CSV catalogue,
and the built-in synthetic generator.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from aas_ray.data.catalogue import REQUIRED, DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SPLIT_DIRS = {"train": "train", "val": "test", "valid": "test", "test": "test", "query": "test", "gallery": "train"}

# docs/method.md §12: the 13 WildlifeReID-10k datasets of the paper's Table 1.
PAPER_DATASETS = (
    "AmvrakikosTurtles", "CatIndividualImages", "Chicks4FreeID", "CowDataset", "DogFaceNet", "MPDD",
    "MultiCamCows2024", "PolarBearVidID", "PrimFace", "ReunionTurtles", "SeaStarReID2023",
    "SouthernProvinceTurtles", "ZakynthosTurtles",
)


def read_folder(root: Path, name: str) -> pd.DataFrame:
    """``root/<identity>/<image>`` or ``root/<split>/<identity>/<image>`` (split = train/val/test)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset {name!r}: folder {root} does not exist")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not subdirs:
        raise DatasetError(f"dataset {name!r}: {root} has no identity sub-folders")
    split_layout = all(p.name.lower() in SPLIT_DIRS for p in subdirs)
    rows = []
    for top in subdirs:
        id_dirs = sorted(p for p in top.iterdir() if p.is_dir()) if split_layout else [top]
        for id_dir in id_dirs:
            for img in sorted(id_dir.iterdir()):
                if img.suffix.lower() in IMAGE_SUFFIXES:
                    rel = img.relative_to(root).as_posix()
                    row = {"image_id": rel, "identity": id_dir.name, "path": rel}
                    if split_layout:
                        row["split"] = SPLIT_DIRS[top.name.lower()]
                    rows.append(row)
    if not rows:
        raise DatasetError(f"dataset {name!r}: no images ({sorted(IMAGE_SUFFIXES)}) under {root}")
    return pd.DataFrame(rows)


def read_csv_catalogue(csv: Path, name: str) -> pd.DataFrame:
    csv = Path(csv)
    if not csv.is_file():
        raise DatasetError(f"dataset {name!r}: catalogue CSV {csv} not found")
    try:
        df = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetError(f"dataset {name!r}: cannot read catalogue CSV {csv}: {err}") from None
    if "image_id" not in df.columns and "path" in df.columns:
        df["image_id"] = df["path"]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DatasetError(f"dataset {name!r}: catalogue CSV {csv} lacks column(s) {missing}; required: "
                           f"{list(REQUIRED)} (image_id may be left out: the path is used), found: {list(df.columns)}")
    return df


def wildlife_datasets_available() -> bool:
    try:
        importlib.import_module("wildlife_datasets.datasets")
        return True
    except ImportError:
        return False


def read_wildlife_class(class_name: str, root: Path, name: str) -> pd.DataFrame:
    """Any ``wildlife_datasets.datasets`` class, given the folder it was downloaded to."""
    try:
        module = importlib.import_module("wildlife_datasets.datasets")
    except ImportError:
        raise DatasetError(
            f"dataset {name!r} needs the optional 'wildlife-datasets' package "
            "(pip install 'aas-ray[wildlife]'; AGPL-licensed, never bundled)"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise DatasetError(f"wildlife_datasets has no dataset class {class_name!r}")
    if not Path(root).is_dir():
        raise DatasetError(
            f"dataset {name!r}: expected its files under {root}, which does not exist. Download it with "
            f"`python -c \"from wildlife_datasets.datasets import {class_name}; {class_name}.get_data('{root}')\"` "
            "or point data.root at an existing copy"
        )
    return cls(str(root)).df


def read_wildlifereid10k(root: Path, members: list[str], name: str) -> pd.DataFrame:
    """WildlifeReID-10k's ``metadata.csv`` filtered to ``members`` (its ``dataset`` column)."""
    meta = Path(root) / "metadata.csv"
    if not meta.is_file():
        raise DatasetError(
            f"dataset {name!r}: WildlifeReID-10k metadata expected at {meta}. Download WildlifeReID-10k "
            "(Kaggle: wildlifedatasets/wildlifereid-10k) and set data.root to the folder holding metadata.csv"
        )
    df = pd.read_csv(meta)
    if "dataset" not in df.columns:
        raise DatasetError(f"{meta} has no 'dataset' column; is it WildlifeReID-10k's metadata.csv?")
    if members:
        unknown = sorted(set(members) - set(df["dataset"].unique()))
        if unknown:
            raise DatasetError(f"dataset {name!r}: {unknown} not in WildlifeReID-10k (see its 'dataset' column)")
        df = df[df["dataset"].isin(members)]
    if "image_id" not in df.columns:
        df["image_id"] = df["path"]
    return df


@dataclass
class Source:
    """How one registered dataset is read."""

    name: str
    kind: str  # synthetic | folder | csv | wildlife | wr10k
    wildlife_class: str | None = None
    members: list[str] = field(default_factory=list)
    subdir: str | None = None  # LionData-style fixed layout below the root
    # The folder split of some sets (LionData's train/val) has disjoint identities, so it
    # cannot give known queries; wildlife_datasets reports no split for them either.
    ignore_split: bool = False
    description: str = ""
