"""The three figures of the comparison, as PNG (matplotlib, Agg: no display on cluster nodes).

* ``dice_boxplot.png``: per dataset, each model's Dice over test cases (seed-averaged per case);
* ``btcv_organ_heatmap.png``: the volumetric per-organ table as a heat map;
* ``dice_vs_time.png``: every run's mean Dice against its training hours.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..atomic import atomic_write  # noqa: E402
from .collect import GROUP  # noqa: E402
from .tables import Table  # noqa: E402

__all__ = ["draw_plots", "dice_boxplot", "organ_heatmap", "dice_vs_time"]


def _save(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)  # layout="constrained": one draw, unlike bbox_inches="tight"
    plt.close(fig)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def _label(row: pd.Series | tuple) -> str:
    parts = [str(row[c]) for c in GROUP[1:] if isinstance(row[c], str) and row[c] not in ("", "none")]
    return "\n".join(parts)


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def dice_boxplot(cases: pd.DataFrame, path: Path) -> Path | None:
    """One panel per dataset, one box per (model, variant, prompt) over its test cases."""
    if cases.empty:
        return None
    datasets = sorted(cases["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(5, 2.2 * cases.groupby(GROUP).ngroups), 4.5),
                             squeeze=False, layout="constrained")
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = cases[cases["dataset"] == dataset]
        groups = list(part.groupby(GROUP[1:], sort=True)["score"])
        ax.boxplot([g.to_numpy() for _, g in groups], showmeans=True)
        ax.set_xticks(range(1, len(groups) + 1),
                      [_label(dict(zip(GROUP[1:], key, strict=True))) for key, _ in groups], fontsize=8)
        ax.set_title(f"{dataset}: Dice per test case")
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def organ_heatmap(table: Table, path: Path) -> Path | None:
    """Rows: models; columns: organs; colour and number: volumetric Dice."""
    data, organs = table.data, table.classes
    if data.empty or not organs:
        return None
    values = data[organs].to_numpy(dtype=float)
    labels = [_short(_label(row).replace("\n", " / ")) for _, row in data.iterrows()]
    fig, ax = plt.subplots(figsize=(3.0 + 0.75 * len(organs), 1.6 + 0.45 * len(labels)), layout="constrained")
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(organs)), organs, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.6 else "white")
    fig.colorbar(image, ax=ax, label="Dice")
    ax.set_title("BTCV per organ (volumetric Dice)")
    return _save(fig, path)


def dice_vs_time(runs: pd.DataFrame, path: Path) -> Path | None:
    """Each run a point; colour: model kind, marker: dataset."""
    runs = runs.dropna(subset=["dice", "train_hours"])
    if runs.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    markers = dict(zip(sorted(runs["dataset"].unique()), "os^Dv", strict=False))
    for (model, dataset), part in runs.groupby(["model", "dataset"], sort=True):
        ax.scatter(part["train_hours"], part["dice"], marker=markers[dataset], alpha=0.7, s=24,
                   label=f"{model} ({dataset})")
    ax.set_xlabel("training time (h)")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Dice against training time (one point per run)")
    return _save(fig, path)


def draw_plots(runs: pd.DataFrame, cases: pd.DataFrame, organs: Table | None, out_dir: Path,
               pool: Executor | None = None) -> Callable[[], list[Path]]:
    """Start every figure that has data under ``out_dir``; the returned call waits for their paths.

    With a process pool the figures (a fifth of a large study's collect time) are drawn while the
    caller writes its tables. ``runs``: the scored runs (only model, dataset, dice, train_hours are
    sent to a worker).
    """
    runs = runs[["model", "dataset", "dice", "train_hours"]]
    jobs: list[tuple[Callable[..., Path | None], tuple]] = [
        (dice_boxplot, (cases, out_dir / "dice_boxplot.png"))]
    if organs is not None:
        jobs.append((organ_heatmap, (organs, out_dir / "btcv_organ_heatmap.png")))
    jobs.append((dice_vs_time, (runs, out_dir / "dice_vs_time.png")))
    if pool is None:
        made = [draw(*args) for draw, args in jobs]
        return lambda: [p for p in made if p is not None]
    futures = [pool.submit(draw, *args) for draw, args in jobs]
    return lambda: [p for p in (f.result() for f in futures) if p is not None]
