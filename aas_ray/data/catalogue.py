"""The catalogue: a wildlife-datasets style DataFrame plus the root its paths are relative to."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from aas_ray.errors import AasRayError

REQUIRED = ("image_id", "identity", "path")
OPTIONAL = ("split", "date", "bbox", "species")


class DatasetError(AasRayError, ValueError):
    """A dataset that cannot be used: missing root, empty catalogue, bad columns, bad images."""


@dataclass
class Catalogue:
    name: str
    root: Path
    df: pd.DataFrame
    # (height, width) of the image cache copies listed in the ``cached`` column, if any
    cached_size: tuple[int, int] | None = None

    def __post_init__(self):
        self.root = Path(self.root)
        self.df = validate_frame(self.df, self.name)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def n_identities(self) -> int:
        return int(self.df["identity"].nunique())

    def abs_paths(self) -> list[Path]:
        return [self.root / p for p in self.df["path"]]

    def fingerprint(self) -> str:
        """Changes whenever the images listed, their labels or their files change."""
        h = hashlib.sha256(str(self.root.resolve()).encode())
        for p, ident in zip(self.df["path"], self.df["identity"]):
            f = self.root / p
            st = f.stat() if f.exists() else None
            h.update(f"{p}|{ident}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
        return h.hexdigest()[:16]

    def subset(self, rows) -> "Catalogue":
        return Catalogue(self.name, self.root, self.df.iloc[rows].reset_index(drop=True), self.cached_size)


def validate_frame(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise DatasetError(f"dataset {name!r}: catalogue must be a pandas DataFrame")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DatasetError(
            f"dataset {name!r}: catalogue lacks column(s) {missing}; required: {list(REQUIRED)}, "
            f"found: {list(df.columns)}"
        )
    if len(df) == 0:
        raise DatasetError(f"dataset {name!r}: catalogue is empty (no images)")
    df = df.reset_index(drop=True).copy()
    if df["identity"].isna().any():
        rows = df.index[df["identity"].isna()].tolist()[:5]
        raise DatasetError(f"dataset {name!r}: identity missing in rows {rows}")
    if df["path"].isna().any():
        rows = df.index[df["path"].isna()].tolist()[:5]
        raise DatasetError(f"dataset {name!r}: path missing in rows {rows}")
    if df["image_id"].duplicated().any():
        dup = df["image_id"][df["image_id"].duplicated()].tolist()[:5]
        raise DatasetError(f"dataset {name!r}: duplicated image_id {dup}")
    df["identity"] = df["identity"].astype(str)
    df["path"] = df["path"].astype(str)
    if "split" in df.columns:
        df["split"] = df["split"].astype(str).str.lower().replace({"val": "test", "valid": "test", "query": "test"})
        bad = sorted(set(df["split"]) - {"train", "test", "database", "gallery"})
        if bad:
            raise DatasetError(f"dataset {name!r}: split column has unknown values {bad}; use train/test")
        df["split"] = df["split"].replace({"database": "train", "gallery": "train"})
    return df
