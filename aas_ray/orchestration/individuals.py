"""``aas-ray individuals <run>``: which of the training photos are the same animal, as the run
ended (docs/method.md §16): a summary, and a contact sheet with one row per individual for a
person to check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.al import Answer
from aas_ray.experiment.journal import effective
from aas_ray.experiment.individuals import read_run_outputs
from aas_ray.experiment.run_folder import RunFolder
from aas_ray.orchestration.sheets import esc, figure, make_thumbnails, write_page


def size_bins(sizes: np.ndarray) -> list[tuple[str, int]]:
    """How many individuals have 1, 2-3, 4-7, 8-15, ... images."""
    out, lo = [], 1
    while lo <= sizes.max():
        hi = 2 * lo - 1
        out.append((f"{lo}" if lo == hi else f"{lo}-{hi}", int(((sizes >= lo) & (sizes <= hi)).sum())))
        lo *= 2
    return out


def summarise(run_dir: Path, df: pd.DataFrame) -> dict:
    """Counts a person wants first: individuals, their sizes and the answers behind them."""
    sizes = df.groupby("individual").size().to_numpy()
    answers = effective(RunFolder(run_dir).journal.read())
    kinds = [a.answer for a in answers]
    confirmed = df[df["confirmed_by_person"].astype(bool)]
    return {"images": len(df), "individuals": int((sizes > 1).sum()), "singletons": int((sizes == 1).sum()),
            "images_in_individuals": int(sizes[sizes > 1].sum()), "median_size": float(np.median(sizes[sizes > 1]))
            if (sizes > 1).any() else 0.0, "largest": int(sizes.max()), "bins": size_bins(sizes),
            "same_answers": kinds.count(Answer.MUST_LINK), "different_answers": kinds.count(Answer.CANNOT_LINK),
            "unsure_answers": kinds.count(Answer.UNSURE), "confirmed_images": len(confirmed),
            "confirmed_individuals": int(confirmed["individual"].nunique())}


def summary_text(name: str, s: dict) -> str:
    bins = " | ".join(f"{label}: {n}" for label, n in s["bins"])
    return "\n".join([
        f"run {name}: {s['images']} training images",
        f"  individuals: {s['individuals']} with 2 or more images ({s['images_in_individuals']} images), "
        f"{s['singletons']} singletons (seen once)",
        f"  images per individual: {bins}  (median {s['median_size']:g}, largest {s['largest']})",
        f"  links confirmed ('same' answers): {s['same_answers']} (and {s['different_answers']} 'different', "
        f"{s['unsure_answers']} 'unsure'); they touch {s['confirmed_images']} images in "
        f"{s['confirmed_individuals']} individuals",
    ])


def contact_sheet(run_dir: Path, df: pd.DataFrame, s: dict, per_row: int = 12, max_rows: int = 500,
                  progress: bool = True) -> Path:
    """``individuals.html``: one row per individual of 2+ images (largest first, its images
    nearest the medoid first), then the singletons; thumbnails in ``individuals_files/``."""
    df = df.assign(row=np.arange(len(df))).sort_values(["individual", "distance_to_medoid", "row"])
    groups = [g for _, g in df.groupby("individual", sort=True)]
    rows = [g for g in groups if len(g) > 1][:max_rows]
    singles = pd.concat([g for g in groups if len(g) == 1] or [df.iloc[:0]]).head(max_rows)
    shown = pd.concat([g.head(per_row) for g in rows] + [singles])
    boxes = shown["bbox"] if "bbox" in shown else [None] * len(shown)
    thumbs = dict(zip(shown["row"], make_thumbnails(list(zip(shown["path"], boxes)), run_dir / "individuals_files",
                                                    "t", progress=progress)))

    def fig(r, number: bool = False) -> str:
        caption = f"{f'#{r.individual} ' if number else ''}{r.image_id}{' ✓' if r.confirmed_by_person else ''}"
        return figure(thumbs[r.row], caption, f"{r.image_id} — {r.path} — distance to medoid "
                      f"{r.distance_to_medoid:.3f}", "confirmed" if r.confirmed_by_person else "")

    body = [f"<h1>Individuals of run {esc(run_dir.name)}</h1>",
            f"<p class='note'>{s['individuals']} individuals of 2 or more images, {s['singletons']} singletons, "
            f"{s['images']} images. Green frame and ✓: a 'same' answer links the image to another "
            f"({s['confirmed_images']} images). "
            f"Each row starts at the individual's medoid; hover for the path and the distance to it.</p><table>"]
    for g in rows:
        more = len(g) - per_row
        body.append(f"<tr><td class='who'><b>#{esc(g['individual'].iloc[0])}</b><br>{len(g)} images<br>"
                    f"{int(g['confirmed_by_person'].astype(bool).sum())} confirmed"
                    f"{f'<br>+{more} not shown' if more > 0 else ''}</td><td>"
                    + "".join(fig(r) for r in g.head(per_row).itertuples()) + "</td></tr>")
    body.append("</table>")
    if s["individuals"] > len(rows):
        body.append(f"<p class='note'>{len(rows)} of {s['individuals']} individuals shown, the largest.</p>")
    if len(singles):
        body.append(f"<h1>Singletons ({s['singletons']})</h1><p class='note'>Images the run grouped with no other, "
                    "each an individual of its own (its number first).</p><div class='grid'>"
                    + "".join(fig(r, number=True) for r in singles.itertuples()) + "</div>")
    return write_page(run_dir / "individuals.html", f"aas-ray individuals {run_dir.name}", body)


def individuals_cli(args) -> int:
    from aas_ray.orchestration.run import find_run_dir

    run_dir = find_run_dir(args.run, args.output_dir, what="run")
    df = read_run_outputs(run_dir, with_embeddings=False).individuals
    s = summarise(run_dir, df)
    print(summary_text(run_dir.name, s))
    page = contact_sheet(run_dir, df, s, args.per_row, args.max_rows)
    print(f"individuals: {run_dir / 'individuals.csv'}\ncontact sheet: {page}")
    return 0
