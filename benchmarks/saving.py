"""Where a benchmark's figures land: ``benchmarks/results/<name>-<stamp>.txt`` and ``.json``,
one time stamp for both, so a table and its raw numbers stay paired."""

from __future__ import annotations

import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save_results(name: str, text: str | None = None, data=None, out: str | Path = RESULTS) -> str:
    """Write the report ``text`` and/or the JSON of ``data``; returns the stamp used."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if text is not None:
        (out / f"{name}-{stamp}.txt").write_text(text if text.endswith("\n") else text + "\n")
    if data is not None:
        (out / f"{name}-{stamp}.json").write_text(json.dumps(data, indent=1))
    return stamp
