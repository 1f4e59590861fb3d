"""Plots logged as artifacts."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def save_figure(fig, path: Path, title: str | None = None, dpi: int = 110) -> Path:
    """Title, tight layout, write, close: every figure the orchestration layer logs ends here."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def map_vs_budget(evals: dict[str, pd.DataFrame], path: Path, title: str = "") -> Path:
    """mAP against utilised budget (% of all pairs), one line per strategy."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, df in evals.items():
        if len(df):
            ax.plot(100 * df["utilised_budget"], 100 * df["mAP"], marker="o", label=name)
    ax.set_xlabel("utilised budget (% of all pairs)")
    ax.set_ylabel("mAP (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
