"""Row order and row labels shared by the tables and the figures.

Rows run dataset, model kind, size (SAM2 Hiera T < S < B+ < L, YOLO n < s < m < l < x, numbers
numerically), prompt, hyper-parameter set. A sweep's rows are told apart by the hyper-parameters
that vary within their (dataset, model, variant, prompt): ``lr=0.0001, batch_size=2``.
"""

from __future__ import annotations

import json
import re

import pandas as pd

__all__ = ["NOT_RECORDED", "variant_rank", "sort_rows", "setting_labels", "row_label"]

NOT_RECORDED = "hparams not recorded"
_MODEL_ORDER = {"sam2-2d": 0, "sam2-3d": 1, "resnet": 2, "yolo": 3}
_SIZES = {"t": 0, "s": 1, "b+": 2, "l": 3}  # SAM2 Hiera tiny, small, base-plus, large
_YOLO_SIZES = {size: i for i, size in enumerate("nsmlx")}
_HIERA = re.compile(r"hiera_(t|s|b\+|l)$")
_YOLO = re.compile(r"yolo\w*?(\d+)([nsmlx])(-\w+)?$")
_BASE = ["dataset", "model", "variant", "prompt"]


def variant_rank(variant: str) -> tuple:
    """A sort key putting model sizes in size order, not alphabetical (which puts B+ first)."""
    variant = str(variant)
    if match := _HIERA.search(variant):
        return (variant[: match.start()], _SIZES[match.group(1)], "")
    if match := _YOLO.match(variant):
        return ("yolo" + match.group(1), _YOLO_SIZES[match.group(2)], match.group(3) or "")
    digits = re.search(r"\d+", variant)  # resnet18 < resnet34 < resnet50 < resnet101
    if digits:
        return (variant[: digits.start()], int(digits.group()), variant[digits.end():])
    return (variant, -1, "")


def sort_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Dataset, model kind in the project's order, size order, prompt, then the hyper-parameter label."""
    if frame.empty:
        return frame.reset_index(drop=True)
    keys = pd.DataFrame({
        "dataset": frame["dataset"].astype(str),
        "model": frame["model"].map(_MODEL_ORDER).fillna(len(_MODEL_ORDER)),
        "variant": frame["variant"].map(variant_rank),
        "prompt": frame["prompt"].astype(str),
        "setting": frame["setting"].astype(str) if "setting" in frame else "",
    }, index=frame.index)
    order = sorted(frame.index, key=lambda i: tuple(keys.loc[i]))
    return frame.loc[order].reset_index(drop=True)


def _value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def setting_labels(frame: pd.DataFrame) -> pd.Series:
    """Per row: the hyper-parameters that differ between the rows sharing its dataset/model/variant/prompt.

    ``hparams`` holds canonical JSON; "" (a run that did not record them) reads ``NOT_RECORDED``;
    a missing value (a published row) reads "". A key present in one set and absent in another
    is shown as ``key=-`` where it is absent.
    """
    labels = pd.Series("", index=frame.index, dtype=object)
    for _, part in frame.groupby(_BASE, sort=False, dropna=False):
        recorded = {i: json.loads(h) for i, h in part["hparams"].items() if isinstance(h, str) and h}
        for i, h in part["hparams"].items():
            if isinstance(h, str) and not h:
                labels[i] = NOT_RECORDED
        keys = sorted({k for sets in recorded.values() for k in sets})
        varying = [k for k in keys if len({_value(s.get(k, "-")) for s in recorded.values()}) > 1]
        for i, sets in recorded.items():
            labels[i] = ", ".join(f"{k}={_value(sets.get(k, '-'))}" for k in varying)
    return labels


def row_label(row: pd.Series | dict, separator: str = "\n") -> str:
    """model, variant, prompt (unless none) and setting of one row, for figure axes."""
    parts = [str(row[c]) for c in ("model", "variant", "prompt", "setting")
             if c in row and isinstance(row[c], str) and row[c] not in ("", "none")]
    return separator.join(parts)
