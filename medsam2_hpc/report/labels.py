"""Row order and row labels shared by the tables and the figures.

Rows run dataset, model kind, size (the registry's order of each kind's variants: SAM2 Hiera
T < S < B+ < L, YOLO n < s < m < l < x), prompt, hyper-parameter set. A sweep's rows are told
apart by the hyper-parameters that vary within their (dataset, model, variant, prompt):
``lr=0.0001, batch_size=2``.
"""

from __future__ import annotations

import json

import pandas as pd

from ..errors import InputError
from ..registry import model_kind, model_names

__all__ = ["NOT_RECORDED", "model_label", "variant_rank", "sort_rows", "setting_labels", "row_label"]

NOT_RECORDED = "hparams not recorded"
_BASE = ["dataset", "model", "variant", "prompt"]


def model_label(model: str) -> str:
    """How the shown tables (Markdown, LaTeX) and the figures name a model kind: its registry
    ``label`` (ResNet, YOLO); the CSV keeps the kind's name. Published rows and kinds this process
    does not know are shown as they are."""
    try:
        return model_kind(str(model)).label
    except InputError:
        return str(model)


def variant_rank(model: str, variant: str) -> tuple[int, str]:
    """A sort key putting sizes in the registry's order (SAM2 T < S < B+ < L), not alphabetical
    (which puts B+ first); variants the registry does not know come last, alphabetically."""
    try:
        variants = model_kind(str(model)).variants
    except InputError:  # a published row, or a kind registered in another process
        variants = ()
    return (variants.index(variant), "") if variant in variants else (len(variants), str(variant))


def sort_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Dataset, model kind in the project's order, size order, prompt, then the hyper-parameter label."""
    if frame.empty:
        return frame.reset_index(drop=True)
    kinds = {name: i for i, name in enumerate(model_names())}  # the registry's order
    keys = pd.DataFrame({
        "dataset": frame["dataset"].astype(str),
        "model": frame["model"].map(kinds).fillna(len(kinds)),
        "variant": [variant_rank(m, v) for m, v in zip(frame["model"], frame["variant"], strict=True)],
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
    parts = [model_label(row[c]) if c == "model" else str(row[c])
             for c in ("model", "variant", "prompt", "setting")
             if c in row and isinstance(row[c], str) and row[c] not in ("", "none")]
    return separator.join(parts)
