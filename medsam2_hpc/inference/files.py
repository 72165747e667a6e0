"""What 3D inference reads and writes besides the label volumes: prompt files, Dice CSV, PNGs,
and the ``predictions.json`` index (case -> files written, prompts used).

Prompt file (JSON) for real use without ground truth: a list of entries (or ``{"prompts": [...]}``)
::

    {"case": "img0035", "slice": 41, "organ": "liver", "box": [x0, y0, x1, y1]}
    {"case": "img0035", "slice": 41, "organ": 1, "points": [[x, y], ...], "labels": [1, 0]}

``organ`` is a BTCV id (1..13) or name; ``slice`` indexes the volume as our loaders lay it out
(axial, inferior -> superior for NIfTI); coordinates are (x, y) = (column, row) pixels of that
slice. Every mistake is reported with the entry number and key. Only the cases a file names
are decoded, so a prompt file for two scans of a large unlabelled test set reads two scans.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medsam2_hpc.atomic import atomic_write, write_text
from medsam2_hpc.data.btcv import ORGANS, BTCVVolumes, Volume
from medsam2_hpc.errors import InputError
from medsam2_hpc.inference.predict import SlicePrompt, VolumePrompts
from medsam2_hpc.options import suggest

__all__ = ["load_prompt_file", "prompt_records", "write_dice_csv", "save_vis", "vis_slices", "PALETTE"]

# one colour per organ id 1..13 (index 0 unused)
PALETTE = np.array([[0, 0, 0], [255, 64, 64], [64, 200, 64], [64, 128, 255], [255, 220, 0],
                    [255, 0, 255], [0, 230, 230], [255, 140, 0], [160, 80, 255], [0, 140, 110],
                    [200, 200, 120], [255, 120, 180], [120, 60, 20], [150, 150, 255]], dtype=np.float32)
_NAMES = {name: oid for oid, name in ORGANS.items()}


def _organ(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in ORGANS:
        return value
    if isinstance(value, str) and value.strip().lower() in _NAMES:
        return _NAMES[value.strip().lower()]
    raise InputError(f"{where}.organ: {value!r} is not a BTCV organ id 1..13 or name"
                     f"{suggest(str(value), _NAMES)}")


def _numbers(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected numbers, got {value!r}") from None
    wrong = arr.ndim != len(shape) or any(s not in (-1, a) for s, a in zip(shape, arr.shape, strict=True))
    if wrong or not arr.size:
        raise InputError(f"{where}: expected shape {tuple('N' if s == -1 else s for s in shape)}, "
                         f"got {value!r}")
    if not np.isfinite(arr).all():
        raise InputError(f"{where}: values must be finite")
    return arr


def _entry(item: Any, where: str, volumes: BTCVVolumes) -> tuple[str, int, int, SlicePrompt]:
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected an object with case, slice, organ and box or points")
    unknown = sorted(set(item) - {"case", "slice", "organ", "box", "points", "labels"})
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r}")
    case = str(item.get("case", ""))
    if case not in volumes.cases:
        raise InputError(f"{where}.case: {case!r} is not a case of this split{suggest(case, volumes.cases)}")
    volume = volumes.get(case)
    depth, h, w = volume.image.shape
    t = item.get("slice")
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < depth:
        raise InputError(f"{where}.slice: {t!r} is not a slice of case {case} (0..{depth - 1})")
    organ = _organ(item.get("organ"), where)
    if ("box" in item) == ("points" in item):
        raise InputError(f"{where}: give exactly one of 'box' or 'points'")
    if "box" in item:
        x0, y0, x1, y1 = _numbers(item["box"], (4,), f"{where}.box")
        if not (0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h):
            raise InputError(f"{where}.box: {item['box']} is not x0 <= x1 < {w}, y0 <= y1 < {h}")
        return case, organ, t, SlicePrompt("box", box=(x0, y0, x1, y1))
    points = _numbers(item["points"], (-1, 2), f"{where}.points")
    labels = _numbers(item.get("labels", [1] * len(points)), (len(points),), f"{where}.labels")
    if not set(labels.tolist()) <= {0.0, 1.0} or 1.0 not in labels:
        raise InputError(f"{where}.labels: must be 1 (positive) or 0 (negative), at least one 1")
    if not ((points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)).all():
        raise InputError(f"{where}.points: outside the {w} x {h} slice")
    return case, organ, t, SlicePrompt("points", points=points.astype(np.float32),
                                       labels=labels.astype(np.int64))


def load_prompt_file(path: str | Path, volumes: BTCVVolumes) -> dict[str, VolumePrompts]:
    """``{case: {organ: {slice: SlicePrompt}}}`` from a JSON prompt file, checked against ``volumes``
    (decoding the cases it names, so a broken scan fails here, before anything is written)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"-prompt_file {path}: cannot be read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"-prompt_file {path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    items = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise InputError(f"-prompt_file {path}: expected a non-empty list of prompts")
    out: dict[str, VolumePrompts] = {}
    for i, item in enumerate(items):
        case, organ, t, prompt = _entry(item, f"-prompt_file {path}: entry {i}", volumes)
        slot = out.setdefault(case, {}).setdefault(organ, {})
        if t in slot:
            raise InputError(f"-prompt_file {path}: entry {i}: second prompt for organ {organ} on slice {t}")
        slot[t] = prompt
    return out


def prompt_records(prompts: VolumePrompts) -> list[dict[str, Any]]:
    """One case's file prompts (box or points) back in the prompt-file format, organ by name,
    sorted by slice: what ``predictions.json`` records as the prompts a prediction came from."""
    records = []
    for organ, slices in prompts.items():
        for t, p in slices.items():
            entry: dict[str, Any] = {"slice": int(t), "organ": ORGANS[organ]}
            if p.kind == "box":
                entry["box"] = [float(v) for v in p.box]
            else:
                entry["points"] = np.asarray(p.points, dtype=float).tolist()
                entry["labels"] = np.asarray(p.labels).astype(int).tolist()
            records.append(entry)
    return sorted(records, key=lambda e: (e["slice"], e["organ"]))


Scores = dict[str, dict[str, float]]


def write_dice_csv(path: str | Path, per_case: Scores, per_case_slice: Scores, per_case_hd95: Scores) -> Path:
    """One row per case and organ: volumetric Dice, per-slice Dice, HD95 (mm)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "organ", "dice", "dice_per_slice", "hd95_mm"])
    for case, scores in per_case.items():
        for organ, value in scores.items():
            writer.writerow([case, organ, f"{value:.6f}", _fmt(per_case_slice.get(case, {}).get(organ)),
                             _fmt(per_case_hd95.get(case, {}).get(organ))])
    return write_text(path, buf.getvalue())


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def vis_slices(label: np.ndarray, limit: int = 13) -> list[int]:
    """The slice with the largest area of each organ in ``label`` (D, H, W), at most ``limit``."""
    areas = np.stack([(label == o).reshape(label.shape[0], -1).sum(1) for o in ORGANS])  # (13, D)
    chosen = {int(a.argmax()) for a in areas if a.max() > 0}
    return sorted(chosen)[:limit]


def _colour(grey: np.ndarray, label: np.ndarray | None) -> np.ndarray:
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=2)
    if label is not None:
        on = label > 0
        rgb[on] = 0.45 * rgb[on] + 0.55 * PALETTE[np.minimum(label[on], len(PALETTE) - 1)]
    return rgb


def save_vis(volume: Volume, pred: np.ndarray, out_dir: str | Path) -> list[Path]:
    """PNG panels image | truth | prediction (image | prediction without truth) on slices that
    show each organ; written as ``<case>_slice<k>.png``."""
    truth = volume.label
    chosen = vis_slices(truth if truth is not None else pred)
    written = []
    for t in chosen:
        panels = [_colour(volume.image[t], None)]
        if truth is not None:
            panels.append(_colour(volume.image[t], truth[t]))
        panels.append(_colour(volume.image[t], pred[t]))
        gap = np.full((volume.image.shape[1], 4, 3), 255.0)
        row = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
        img = Image.fromarray(np.clip(row, 0, 255).astype(np.uint8))
        path = Path(out_dir) / f"{volume.case}_slice{t:03d}.png"
        written.append(atomic_write(path, lambda fh, im=img: im.save(fh, format="PNG")))
    return written
