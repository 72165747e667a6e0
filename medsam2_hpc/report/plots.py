"""The three figures of the comparison, each as PDF (for papers) and 200 dpi PNG (matplotlib, Agg).

* ``dice_boxplot``: per dataset, each row's Dice over test cases (seed-averaged per case), every
  case drawn as a point over its box (a box of six BTCV cases hides how few there are);
* ``btcv_organ_heatmap``: the volumetric per-organ table as a heat map (ours only: the published
  per-organ numbers are per-slice Dice);
* ``dice_vs_time``: every run's mean Dice against its training hours.
Rows are in the tables' order (sizes T < S < B+ < L) and labelled the same way.
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
from .labels import row_label, setting_labels, sort_rows  # noqa: E402
from .tables import Table  # noqa: E402

__all__ = ["draw_plots", "dice_boxplot", "organ_heatmap", "dice_vs_time"]


PNG_DPI = 200
# Above this many points in one scatter the PDF gets them as an image: thousands of vector markers
# make a PDF slow to write and to open, and nobody reads run 7,431 off a page.
VECTOR_POINTS = 1000


def _save(fig: plt.Figure, path: Path) -> list[Path]:
    """``path`` as PNG (200 dpi) and beside it as PDF, each written atomically."""
    written = []
    for suffix, kwargs in ((".png", {"dpi": PNG_DPI}), (".pdf", {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=suffix[1:], **kwargs)  # layout="constrained": one draw, no bbox "tight"
        data = buf.getvalue()
        written.append(atomic_write(path.with_suffix(suffix), lambda fh, data=data: fh.write(data)))
    plt.close(fig)
    return written


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _boxes(part: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """(label, case scores) per row of one dataset's panel, in table order."""
    keys = part[GROUP].drop_duplicates()
    keys = sort_rows(keys.assign(setting=setting_labels(keys)))
    scores = part.groupby(GROUP, sort=False, dropna=False)["score"]
    return [(row_label(row), scores.get_group(tuple(row[c] for c in GROUP)).to_numpy())
            for _, row in keys.iterrows()]


def dice_boxplot(cases: pd.DataFrame, path: Path) -> list[Path]:
    """One panel per dataset, one box per table row over its test cases, each case a jittered point."""
    if cases.empty:
        return []
    datasets = sorted(cases["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(5, 2.2 * cases.groupby(GROUP).ngroups), 4.5),
                             squeeze=False, layout="constrained")
    jitter = np.random.default_rng(0)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        boxes = _boxes(cases[cases["dataset"] == dataset])
        ax.boxplot([scores for _, scores in boxes], showmeans=True, showfliers=False)  # the points show them
        for i, (_, scores) in enumerate(boxes, start=1):
            ax.scatter(i + jitter.uniform(-0.15, 0.15, len(scores)), scores, s=8, alpha=0.5, color="tab:blue",
                       zorder=3, linewidths=0, rasterized=len(scores) > VECTOR_POINTS)
        ax.set_xticks(range(1, len(boxes) + 1), [label for label, _ in boxes], fontsize=8)
        ax.set_title(f"{dataset}: Dice per test case")
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def organ_heatmap(table: Table, path: Path) -> list[Path]:
    """Rows: models; columns: organs; colour and number: volumetric Dice."""
    data, organs = table.data, table.classes
    if data.empty or not organs:
        return []
    values = data[organs].to_numpy(dtype=float)
    labels = [_short(row_label(row, " / ")) for _, row in data.iterrows()]
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


def dice_vs_time(runs: pd.DataFrame, path: Path) -> list[Path]:
    """Each run a point; colour: model kind, marker: dataset."""
    runs = runs.dropna(subset=["dice", "train_hours"])
    if runs.empty:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    markers = dict(zip(sorted(runs["dataset"].unique()), "os^Dv", strict=False))
    for (model, dataset), part in runs.groupby(["model", "dataset"], sort=True):
        ax.scatter(part["train_hours"], part["dice"], marker=markers[dataset], alpha=0.7, s=24,
                   label=f"{model} ({dataset})", rasterized=len(part) > VECTOR_POINTS)
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
    jobs: list[tuple[Callable[..., list[Path]], tuple]] = [
        (dice_boxplot, (cases, out_dir / "dice_boxplot.png"))]
    if organs is not None:
        jobs.append((organ_heatmap, (organs, out_dir / "btcv_organ_heatmap.png")))
    jobs.append((dice_vs_time, (runs, out_dir / "dice_vs_time.png")))
    if pool is None:
        made = [draw(*args) for draw, args in jobs]
        return lambda: [p for paths in made for p in paths]
    futures = [pool.submit(draw, *args) for draw, args in jobs]
    return lambda: [p for f in futures for p in f.result()]
