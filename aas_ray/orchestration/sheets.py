"""Static HTML pages with thumbnails (the contact sheet of a run's individuals, the matches of
new photos): small JPEG files in a folder next to the page, made once per page. Every name
and path a page shows is untrusted data and is escaped; images are referred to by number,
never by their path."""

from __future__ import annotations

import html
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from aas_ray.data.images import ImageLoadError, thumbnail

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em} p.note{color:#555;margin:.2em 0 1em}
table{border-collapse:collapse} td{vertical-align:top;padding:6px 8px;border-bottom:1px solid #ddd}
td.who{width:10em;font-size:.9em;color:#333} td.who b{font-size:1.15em;color:#000}
figure{display:inline-block;margin:0 4px 4px 0;text-align:center;font-size:.7em;color:#555;max-width:104px;
 vertical-align:top;overflow:hidden}
figure img,figure .gone{display:block;height:96px;max-width:104px;object-fit:contain;background:#eee;
 border:2px solid transparent;border-radius:3px}
figure .gone{width:96px;line-height:96px;color:#999}
figure.confirmed img{border-color:#2a9d3a} figure.best img{border-color:#1f6fd1}
figure.query img{height:128px;max-width:160px} figure.query{max-width:164px}
figcaption{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.card{display:inline-block;vertical-align:top;margin:0 10px 6px 0;padding:4px 6px;background:#fff;
 border:1px solid #ddd;border-radius:4px} .card .head{font-size:.8em;margin-bottom:3px}
.new{color:#b3261e;font-weight:bold} .known{color:#1f6a2a;font-weight:bold}
.grid figure{margin-bottom:8px}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def make_thumbnails(items: list[tuple[str, object]], folder: Path, prefix: str, max_side: int = 192,
                    progress: bool = True) -> list[str | None]:
    """A JPEG thumbnail of each (path, bbox) in ``folder`` as ``<prefix><i>.jpg``; returns the
    file names relative to the folder's parent (None where the image could not be read,
    with a warning naming the first few)."""
    folder.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> tuple[str | None, str | None]:
        path, bbox = items[i]
        try:
            im = thumbnail(Path(path), bbox, max_side)
        except ImageLoadError as err:
            return None, str(err)
        im.save(folder / f"{prefix}{i}.jpg", "JPEG", quality=85)
        return f"{folder.name}/{prefix}{i}.jpg", None

    # PIL releases the GIL while decoding and resizing: threads use every core.
    with ThreadPoolExecutor(max(1, len(os.sched_getaffinity(0)))) as pool:
        made = list(tqdm(pool.map(one, range(len(items))), total=len(items), desc="thumbnails", disable=not progress,
                         leave=False))
    failed = [err for _, err in made if err is not None]
    for msg in failed[:5]:
        log.warning("no thumbnail: %s", msg)
    if len(failed) > 5:
        log.warning("no thumbnail for %d images in all", len(failed))
    return [name for name, _ in made]


def figure(src: str | None, caption: str, title: str, css: str = "") -> str:
    """One thumbnail with its caption; a grey box when the image could not be read."""
    cls = f' class="{esc(css)}"' if css else ""
    img = (f'<img src="{esc(src)}" loading="lazy" alt="{esc(caption)}">' if src is not None
           else '<span class="gone">unreadable</span>')
    return f'<figure{cls} title="{esc(title)}">{img}<figcaption>{esc(caption)}</figcaption></figure>'


def write_page(path: Path, title: str, body: list[str]) -> Path:
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
                    f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>", encoding="utf-8")
    return path
