"""The dataset registry: one name -> one way of building a :class:`Catalogue`."""

from __future__ import annotations

import logging
from pathlib import Path

from aas_ray.data.catalogue import Catalogue, DatasetError
from aas_ray.data.sources import (
    PAPER_DATASETS,
    Source,
    read_csv_catalogue,
    read_folder,
    read_wildlife_class,
    read_wildlifereid10k,
    wildlife_datasets_available,
)
from aas_ray.data.synthetic import synthetic_dataset

log = logging.getLogger(__name__)

REGISTRY: dict[str, Source] = {}


def register(source: Source) -> None:
    REGISTRY[source.name] = source


register(Source("synthetic", "synthetic", description="embedded default: procedurally generated individuals"))
register(Source("folder", "folder", description="root/<identity>/<img> or root/<split>/<identity>/<img>"))
register(Source("csv", "csv", description="a CSV catalogue (image_id, identity, path[, split, ...]) via data.csv"))
register(Source("wildlifereid10k", "wr10k", description="WildlifeReID-10k metadata.csv, filtered by data.members"))
register(Source(
    "LionData", "wildlife", wildlife_class="LionData",
    subdir="wildlife_reidentification-main/Lion_Data_Zero", ignore_split=True,
    description="94 lions, 740 crops (Dlamini & van Zyl 2020)",
))
register(Source(
    "NyalaData", "wildlife", wildlife_class="NyalaData",
    subdir="wildlife_reidentification-main/Nyala_Data_Zero", ignore_split=True,
    description="237 nyala, 1942 photos (Dlamini & van Zyl 2020)",
))
for _name in PAPER_DATASETS:
    register(Source(_name, "wr10k", members=[_name], description="docs/method.md §12 benchmark set (WildlifeReID-10k)"))


def _root(cfg_root: str | None, source: Source) -> Path:
    if cfg_root is None:
        raise DatasetError(f"dataset {source.name!r} needs data.root: the folder it was downloaded to")
    return Path(cfg_root).expanduser()


def load_catalogue(data_cfg, progress: bool = True) -> Catalogue:
    """Build the catalogue for ``data_cfg`` (a :class:`aas_ray.config.DataConfig`)."""
    name = data_cfg.name
    source = REGISTRY.get(name)
    if source is None and wildlife_datasets_available():
        source = Source(name, "wildlife", wildlife_class=name)
    if source is None:
        raise DatasetError(
            f"unknown dataset {name!r}; registered: {sorted(REGISTRY)} "
            "(any wildlife_datasets class also works when that package is installed)"
        )
    if source.kind == "synthetic":
        root, df = synthetic_dataset(data_cfg.synthetic, data_cfg.cache_dir, progress)
        return Catalogue(name, root, df)
    if source.kind == "folder":
        root = _root(data_cfg.root, source)
        return Catalogue(name, root, read_folder(root, name))
    if source.kind == "csv":
        if not data_cfg.csv:
            raise DatasetError("dataset 'csv' needs data.csv (the catalogue file) and data.root (its image root)")
        csv = Path(data_cfg.csv).expanduser()
        root = Path(data_cfg.root).expanduser() if data_cfg.root else csv.parent
        return Catalogue(name, root, read_csv_catalogue(csv, name))
    if source.kind == "wr10k":
        root = _root(data_cfg.root, source)
        members = data_cfg.members or source.members
        return Catalogue(name, root, read_wildlifereid10k(root, members, name))
    # wildlife_datasets class; without that package, a fixed folder layout still reads it.
    root = _root(data_cfg.root, source)
    if wildlife_datasets_available():
        return Catalogue(name, root, read_wildlife_class(source.wildlife_class, root, name))
    if source.subdir is None:
        read_wildlife_class(source.wildlife_class, root, name)  # raises the install hint
    folder = root / source.subdir
    if not folder.is_dir():
        raise DatasetError(
            f"dataset {name!r}: expected its images under {folder} (the layout wildlife_datasets."
            f"{source.wildlife_class} downloads); set data.root to the folder that contains "
            f"{source.subdir.split('/')[0]}/"
        )
    df = read_folder(folder, name)
    df["path"] = [f"{source.subdir}/{p}" for p in df["path"]]
    if source.ignore_split:
        df = df.drop(columns=["split"], errors="ignore")
    return Catalogue(name, root, df)


def describe_datasets(data_root: Path | None, cfg_factory) -> list[dict]:
    """One row per registered dataset: source, whether present locally, image/identity counts.

    ``data_root/<name>`` is where each is looked for (the synthetic one is always present).
    """
    rows = []
    for name, source in sorted(REGISTRY.items()):
        row = {"name": name, "kind": source.kind, "present": False, "images": None, "identities": None,
               "root": None, "description": source.description}
        if source.kind in ("folder", "csv"):
            row["present"] = "-"
            rows.append(row)
            continue
        root = None
        if source.kind == "wr10k" and data_root is not None:
            root = data_root / "WildlifeReID-10k"
        elif data_root is not None:
            root = data_root / name
        try:
            cat = load_catalogue(cfg_factory(name, str(root) if root else None), progress=False)
            row.update(present=True, images=len(cat), identities=cat.n_identities, root=str(cat.root))
        except DatasetError as err:
            row["root"] = str(root) if root else None
            log.debug("dataset %s not present: %s", name, err)
        rows.append(row)
    return rows
