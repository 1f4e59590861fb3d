"""``aas-ray match <run> <folder or CSV>``: who is in new photos (docs/method.md §16). Each
photo is embedded with the run's network and preprocessing (through the image cache), its
most similar individuals of the run are ranked, and it is called a new individual when even
the best scores below the threshold the run chose on its own open-set evaluation."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.checks import InputError
from aas_ray.config import load_config
from aas_ray.data.catalogue import Catalogue
from aas_ray.eval.individuals import Ranking, rank_individuals
from aas_ray.experiment.individuals import RunOutputs, read_run_outputs
from aas_ray.experiment.prepare import checked_catalogue
from aas_ray.experiment.run_folder import CONFIG, WEIGHTS, RunFolder
from aas_ray.models import extract_features, load_trained, resolve_device
from aas_ray.orchestration.sheets import esc, figure, make_thumbnails, plural, write_page

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def photo_catalogue(source: str | Path) -> Catalogue:
    """New photos: every image file under a folder (recursively, by suffix), or the ``path``
    column of a CSV (relative paths from the CSV's folder). Identities are unknown."""
    src = Path(source).expanduser()
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"no photos in {src}: no file under it ends in {' '.join(IMAGE_SUFFIXES)}")
        root, paths = src, [str(p.relative_to(src)) for p in files]
    elif src.is_file():
        try:
            df = pd.read_csv(src, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read {src} as a CSV: {str(err).splitlines()[0]}") from None
        if "path" not in df.columns:
            raise InputError(f"{src} has no 'path' column (its columns: {list(df.columns)})")
        paths = [p for p in df["path"] if p.strip()]
        if not paths:
            raise InputError(f"{src} lists no photos: its 'path' column is empty")
        root = src.parent
    else:
        raise InputError(f"no photos to match at {src}: give a folder of images or a CSV with a 'path' column")
    frame = pd.DataFrame({"image_id": [str(i) for i in range(len(paths))], "identity": "", "path": paths})
    return Catalogue(str(src), root, frame)


def embed_photos(run_dir: Path, cat: Catalogue, device: str | None, progress: bool) -> tuple[Catalogue, np.ndarray]:
    """The readable photos and their embeddings by the run's network, prepared as in training
    (unreadable ones are dropped with a warning naming them)."""
    folder = RunFolder(run_dir)
    cfg = load_config(folder.file(CONFIG))
    readable = checked_catalogue(cat, cfg, skip_bad=True, progress=progress)
    model = load_trained(cfg.model, folder.file(WEIGHTS))
    feats = extract_features(model, readable, cfg.model.image_size, cfg.model.batch_size, cfg.model.workers,
                             resolve_device(device or cfg.model.device), progress, desc="embedding photos")
    return readable, feats


def matches_frame(photos: list[str], ranking: Ranking, run: RunOutputs, threshold: float) -> pd.DataFrame:
    """One row per photo and rank: the individual, its score, its most similar image, and
    whether the photo is called a new individual (its best score below the threshold)."""
    m, k = ranking.score.shape
    new = ranking.score[:, 0] < threshold if math.isfinite(threshold) else np.zeros(m, dtype=bool)
    sizes = run.individuals.groupby("individual").size()
    ind = ranking.individual.ravel()
    return pd.DataFrame({
        "photo": np.repeat(photos, k), "rank": np.tile(np.arange(1, k + 1), m), "individual": ind,
        "score": np.round(ranking.score.ravel().astype(np.float64), 6), "new_individual": np.repeat(new, k),
        "best_image": run.individuals["image_id"].to_numpy()[ranking.best_image.ravel()],
        "individual_images": sizes.loc[ind].to_numpy(),
    })


def match_page(out: Path, run_name: str, photos: Catalogue, table: pd.DataFrame, ranking: Ranking, run: RunOutputs,
               threshold: float, skipped: list[str], per_match: int = 3, max_rows: int = 500,
               progress: bool = True) -> Path:
    """``matches.html``: each photo beside its top individuals (the image that matched first,
    framed, then the individual's images nearest its medoid); thumbnails in ``matches_files/``."""
    ind = run.individuals.assign(row=np.arange(len(run.individuals)))
    members = {i: g.sort_values(["distance_to_medoid", "row"])["row"].to_numpy() for i, g in ind.groupby("individual")}
    n = min(len(photos), max_rows)
    shown_rows = sorted({int(r) for q in range(n) for c in range(ranking.score.shape[1])
                         for r in [ranking.best_image[q, c], *members[ranking.individual[q, c]][:per_match]]})
    boxes = ind["bbox"] if "bbox" in ind else [None] * len(ind)
    gallery = dict(zip(shown_rows, make_thumbnails([(ind["path"].iloc[r], boxes[r]) for r in shown_rows],
                                                   out / "matches_files", "t", progress=progress)))
    queries = make_thumbnails([(p, None) for p in photos.abs_paths()[:n]], out / "matches_files", "q",
                              progress=progress)
    rule = (f"new individual below {threshold:.3f} (Youden's J on the run's open-set evaluation)"
            if math.isfinite(threshold) else "no threshold: the run's evaluation could not tell known from unknown")
    skipped_note = f" {plural(len(skipped), 'unreadable photo')} skipped." if skipped else ""
    body = [f"<h1>{plural(len(photos), 'photo')} matched against run {esc(run_name)}</h1>",
            f"<p class='note'>Score: cosine similarity to the individual's most similar image (framed blue); "
            f"{esc(rule)}.{skipped_note}</p><table>"]
    photo_names = photos.df["path"].tolist()
    for q in range(n):
        best = table.iloc[q * ranking.score.shape[1]]
        verdict = ("<span class='new'>new individual?</span>" if best["new_individual"]
                   else f"<span class='known'>#{esc(best['individual'])}</span>")
        cards = []
        for c in range(ranking.score.shape[1]):
            i, hit = ranking.individual[q, c], int(ranking.best_image[q, c])
            rows = [hit] + [r for r in members[i] if r != hit][:per_match - 1]
            figs = "".join(figure(gallery[r], ind["image_id"].iloc[r],
                                  f"{ind['image_id'].iloc[r]} — {ind['path'].iloc[r]}", "best" if r == hit else "")
                           for r in rows)
            cards.append(f"<div class='card'><div class='head'><b>#{esc(i)}</b> · {ranking.score[q, c]:.3f} · "
                         f"{plural(len(members[i]), 'image')}</div>{figs}</div>")
        body.append(f"<tr><td class='who'>{figure(queries[q], photo_names[q], photo_names[q], 'query')}{verdict}</td>"
                    f"<td>{''.join(cards)}</td></tr>")
    body.append("</table>")
    if len(photos) > n:
        body.append(f"<p class='note'>{n} of {len(photos)} photos shown; all are in matches.csv.</p>")
    if skipped:
        body.append("<h1>Skipped (unreadable)</h1><ul>" + "".join(f"<li>{esc(p)}</li>" for p in skipped) + "</ul>")
    return write_page(out / "matches.html", "aas-ray matches", body)


def match(run_dir: Path, source: str | Path, out: Path | None = None, top_k: int = 5, device: str | None = None,
          progress: bool = True) -> tuple[pd.DataFrame, list[str], Path]:
    """Match new photos against a finished run: (matches, skipped photos, output folder)."""
    if top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")
    run = read_run_outputs(run_dir)
    cat = photo_catalogue(source)
    out = Path(out) if out else Path(run_dir) / f"match-{Path(source).stem or 'photos'}"
    out.mkdir(parents=True, exist_ok=True)
    readable, feats = embed_photos(Path(run_dir), cat, device, progress)
    skipped = cat.df.loc[~cat.df["image_id"].isin(readable.df["image_id"]), "path"].tolist()
    pd.DataFrame({"photo": skipped}).to_csv(out / "skipped.csv", index=False)
    if skipped:
        log.warning("skipped %d unreadable photo(s), listed in %s: %s%s", len(skipped), out / "skipped.csv",
                    ", ".join(skipped[:5]), " ..." if len(skipped) > 5 else "")
    ranking = rank_individuals(feats, run.embeddings, run.individuals["individual"].to_numpy(), top_k)
    threshold = float(run.open_set.get("threshold", float("nan")))
    if not math.isfinite(threshold):
        log.warning("run %s has no new-individual threshold (its evaluation had no known or no unknown queries, or "
                    "could not tell them apart): no photo is called new", Path(run_dir).name)
    table = matches_frame(readable.df["path"].tolist(), ranking, run, threshold)
    table.to_csv(out / "matches.csv", index=False)
    match_page(out, Path(run_dir).name, readable, table, ranking, run, threshold, skipped, progress=progress)
    return table, skipped, out


def match_cli(args) -> int:
    from aas_ray.orchestration.run import find_run_dir

    run_dir = find_run_dir(args.run, args.output_dir, what="run")
    table, skipped, out = match(run_dir, args.photos, Path(args.out) if args.out else None, args.top_k, args.device)
    run = read_run_outputs(run_dir, with_embeddings=False)
    o = run.open_set
    top = table[table["rank"] == 1]
    print(f"{len(top)} photos matched against run {run_dir.name} "
          f"({run.individuals['individual'].nunique()} individuals, singletons included)")
    if math.isfinite(o["threshold"]):
        print(f"new individual: best score below {o['threshold']:.4f}, chosen by Youden's J on the run's open-set "
              f"evaluation ({o['known_accepted']:.0%} of {o['known_queries']} known queries kept, "
              f"{o['unknown_flagged']:.0%} of {o['unknown_queries']} unknown ones flagged)")
    for r in top.head(20).itertuples():
        verdict = "new individual?" if r.new_individual else f"#{r.individual}"
        print(f"  {r.photo:40s} {verdict:16s} best #{r.individual} score {r.score:.3f}")
    if len(top) > 20:
        print(f"  ... {len(top) - 20} more in matches.csv")
    print(f"known individuals: {int((~top['new_individual']).sum())}, new: {int(top['new_individual'].sum())}, "
          f"skipped (unreadable): {len(skipped)}")
    print(f"matches: {out / 'matches.csv'}\npage: {out / 'matches.html'}")
    return 0
