"""The comparison tables, each as numbers (for CSV) and as formatted text (Markdown, LaTeX).

Every table is built from :class:`~medsam2_hpc.report.collect.Study` alone. Means are over
seeds (runs) of one group (dataset, model, variant, prompt); ``std`` is the sample standard
deviation over those seeds (blank for a single seed). Published numbers are extra rows whose
model reads ``published: <method> (<source>)``, added only when asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from ..data.organs import ORGANS
from ..registry import dataset_kind, model_names
from . import published
from .collect import GROUP, Study

__all__ = ["Table", "SECTIONS", "headline", "btcv_organs", "btcv_per_slice", "refuge", "per_class", "paired",
           "incomplete", "fmt", "fmt_p"]

_NAMES = {"dataset": "Dataset", "model": "Model", "variant": "Variant", "prompt": "Prompt",
          "n_runs": "n runs"}


@dataclass
class Table:
    """One table: ``data`` holds numbers (written to CSV), ``display`` the strings shown in md/tex."""

    name: str
    title: str
    data: pd.DataFrame
    display: pd.DataFrame
    caption: str = ""
    classes: list[str] = field(default_factory=list)  # the per-class columns, in order

    @property
    def empty(self) -> bool:
        return self.data.empty


def fmt(value: float, digits: int = 3) -> str:
    """A number as shown in the tables; missing values are an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def fmt_p(p: float, note: str = "") -> str:
    if p is None or math.isnan(p):
        return "n/a" if note.startswith("n/a") or not note else note
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _mean_std(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return ""
    return fmt(mean) if n < 2 or math.isnan(std) else f"{fmt(mean)} ± {fmt(std)}"


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    """Dataset, then model kind in the project's order, then variant and prompt."""
    if frame.empty:
        return frame
    kinds = {name: i for i, name in enumerate(model_names())}  # the registry's order
    order = frame["model"].map(kinds).fillna(len(kinds))
    return (frame.assign(_order=order).sort_values(["dataset", "_order", "variant", "prompt"])
            .drop(columns="_order").reset_index(drop=True))


def _groups(study: Study, dataset: str | None = None) -> pd.DataFrame:
    runs = study.scored
    if dataset is not None:
        runs = runs[runs["dataset"] == dataset]
    agg = runs.groupby(GROUP, sort=False, dropna=False).agg(
        n_runs=("run", "size"), dice_mean=("dice", "mean"), dice_std=("dice", "std"),
        dice_per_slice=("dice_per_slice", "mean"), hd95_mm=("hd95", "mean"), params_m=("params_m", "mean"),
        train_hours=("train_hours", "mean"), throughput=("throughput", "mean"),
    )
    return _sorted(agg.reset_index())


def _display(data: pd.DataFrame, columns: dict[str, Callable[[pd.Series], str]],
             optional: dict[str, str] | None = None) -> pd.DataFrame:
    """Format each column with its function; drop an optional column (shown -> source) no row fills."""
    out = {}
    for column, render in columns.items():
        source = (optional or {}).get(column)
        if source is not None and data[source].isna().all():
            continue
        out[column] = data.apply(render, axis=1) if not data.empty else pd.Series(dtype=str)
    frame = pd.DataFrame(out)
    return frame.rename(columns=lambda c: _NAMES.get(c, c))


def _text(column: str) -> Callable[[pd.Series], str]:
    return lambda row: "" if pd.isna(row[column]) else str(row[column])


def _num(column: str, digits: int = 3) -> Callable[[pd.Series], str]:
    return lambda row: fmt(row[column], digits)


def headline(study: Study, tests: pd.DataFrame, with_published: bool = False) -> Table:
    """Model x variant x dataset: Dice mean ± std over seeds, n, HD95, params, hours, throughput."""
    data = _groups(study)
    data = data.merge(tests[[*GROUP, "p_value", "note"]].rename(columns={"p_value": "p_vs_baseline"}),
                      on=GROUP, how="left")
    best = {(r["dataset"], r["baseline"]) for _, r in tests.iterrows() if r["baseline"]}
    data["published"] = False
    if with_published:  # after our rows of the same dataset
        data = pd.concat([data, _published_rows()], ignore_index=True)
        data = data.sort_values(["dataset", "published"], kind="stable").reset_index(drop=True)

    def p_text(row: pd.Series) -> str:
        if (row["dataset"], "/".join(str(row[c]) for c in GROUP[1:])) in best:
            return "best baseline"
        return "" if pd.isna(row["note"]) else fmt_p(row["p_vs_baseline"], row["note"])

    display = _display(data, {
        "dataset": _text("dataset"), "model": _text("model"), "variant": _text("variant"),
        "prompt": _text("prompt"), "n_runs": lambda r: "" if r["published"] else str(int(r["n_runs"])),
        "Dice (mean ± std)": lambda r: _mean_std(r["dice_mean"], r["dice_std"], r["n_runs"]),
        "Dice per-slice": _num("dice_per_slice"), "HD95 (mm)": _num("hd95_mm", 2),
        "Params (M)": _num("params_m", 1), "Train (h)": _num("train_hours", 2),
        "Samples/s": _num("throughput", 1), "p vs best baseline": p_text,
    }, optional={"Dice per-slice": "dice_per_slice", "HD95 (mm)": "hd95_mm", "Samples/s": "throughput"})
    data = data.drop(columns="note")
    return Table("headline", "Headline: mean Dice per model, size and dataset", data, display,
                 "Dice: volumetric for BTCV (per case and organ), mean over seeds ± sample std. "
                 "p: paired Wilcoxon signed-rank test over test cases against the dataset's best "
                 "baseline (ResNet/YOLO).")


def _published_rows() -> pd.DataFrame:
    rows = [{"dataset": p.dataset, "model": p.label, "variant": "", "prompt": "", "n_runs": math.nan,
             "dice_mean": p.dice, "dice_std": math.nan, "published": True} for p in published.HEADLINE]
    return pd.DataFrame(rows)


def _per_class(study: Study, dataset: str, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """Group rows with per-class means over seeds; classes in their column order."""
    runs = study.scored[study.scored["dataset"] == dataset][["run", *GROUP]]
    classes = study.classes[study.classes["metric"] == metric].merge(runs, on="run")
    if classes.empty:
        return pd.DataFrame(columns=GROUP), []
    wide = classes.pivot_table(index=GROUP, columns="cls", values="value", aggfunc="mean", dropna=False)
    return wide.reset_index(), list(wide.columns)


def _class_table(study: Study, dataset: str, metric: str, mean_column: str) -> tuple[pd.DataFrame, list[str]]:
    order = {name: i for i, name in enumerate(dataset_kind(dataset).classes)}  # the registry's column order
    wide, names = _per_class(study, dataset, metric)
    names = sorted(names, key=lambda n: (order.get(n, len(order)), n))
    groups = _groups(study, dataset)[[*GROUP, "n_runs", mean_column]]
    data = _sorted(groups.merge(wide, on=GROUP, how="inner" if names else "left"))
    data = data[[*GROUP, "n_runs", *names, mean_column]].rename(columns={mean_column: "mean"})
    return data, names


def _class_display(data: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    columns = {c: _text(c) for c in ("model", "variant", "prompt")}
    columns["n_runs"] = lambda r: "" if pd.isna(r["n_runs"]) else str(int(r["n_runs"]))
    columns.update({n: _num(n) for n in names})
    columns["Mean"] = _num("mean")
    return _display(data, columns)


def btcv_organs(study: Study, with_published: bool = False) -> Table:
    """The 13 organs, volumetric Dice (per case, then mean over cases and seeds)."""
    data, names = _class_table(study, "btcv", "dice", "dice_mean")
    if with_published and not data.empty:
        pub = published.BTCV_ORGANS_MEDICAL_SAM2
        row = {"dataset": "btcv", "model": pub.label, "variant": "", "prompt": "", "n_runs": math.nan,
               **{ORGANS[k]: v for k, v in pub.per_class.items() if ORGANS[k] in names}, "mean": pub.dice}
        data = pd.concat([data, pd.DataFrame([row])], ignore_index=True)
    return Table("btcv_organs", "BTCV per organ: volumetric Dice", data, _class_display(data, names),
                 "Volumetric Dice per case and organ, averaged over test cases (organs absent from a case "
                 "are left out) and then over seeds. Mean: the runs' dice_mean.", names)


def btcv_per_slice(study: Study) -> Table:
    """The per-slice numbers Medical-SAM2 reports, kept apart from the volumetric table."""
    data, names = _class_table(study, "btcv", "per_slice", "dice_per_slice")
    data = data[data["mean"].notna() | data[names].notna().any(axis=1)] if names else \
        data[data["mean"].notna()]
    return Table("btcv_per_slice", "BTCV per-slice Dice (not volumetric)", data.reset_index(drop=True),
                 _class_display(data, names),
                 "Mean 2D Dice over the slices that contain the organ (the number Medical-SAM2 reports). "
                 "It ignores false positives on other slices and runs higher than the volumetric Dice.",
                 names)


def refuge(study: Study, with_published: bool = False) -> Table:
    """Optic cup (and disc where the challenge layout provides it)."""
    data, names = _class_table(study, "refuge", "dice", "dice_mean")
    if with_published and not data.empty:
        pub = published.REFUGE_CUP
        row = {"dataset": "refuge", "model": pub.label, "variant": "", "prompt": "", "n_runs": math.nan,
               "cup": pub.per_class[0], "mean": math.nan}
        data = pd.concat([data, pd.DataFrame([row])], ignore_index=True)
    return Table("refuge", "REFUGE: Dice per structure", data, _class_display(data, names),
                 "Dice per test image, averaged over images and seeds.", names)


def per_class(study: Study, dataset: str, with_published: bool = False) -> Table:
    """Any dataset: Dice per class (the section a dataset gets unless it names its own)."""
    data, names = _class_table(study, dataset, "dice", "dice_mean")
    return Table(dataset, f"{dataset}: Dice per class", data, _class_display(data, names),
                 "Dice per test case, averaged over cases and seeds.", names)


# Table sections a dataset can name in the registry: (study, dataset, with_published) -> Table.
SECTIONS: dict[str, Callable[[Study, str, bool], Table]] = {
    "btcv_organs": lambda study, dataset, with_published: btcv_organs(study, with_published),
    "btcv_per_slice": lambda study, dataset, with_published: btcv_per_slice(study),
    "refuge": lambda study, dataset, with_published: refuge(study, with_published),
    "per_class": per_class,
}


def paired(tests: pd.DataFrame) -> Table:
    """Each model against its dataset's best baseline over the same test cases."""
    data = _sorted(tests)
    display = _display(data, {
        "dataset": _text("dataset"), "model": _text("model"), "variant": _text("variant"),
        "prompt": _text("prompt"), "Best baseline": _text("baseline"), "Pairs": _text("n_pairs"),
        "Mean ΔDice": lambda r: "" if math.isnan(r["mean_diff"]) else f"{r['mean_diff']:+.3f}",
        "W": _num("statistic", 1), "p": lambda r: fmt_p(r["p_value"], r["note"]),
    })
    return Table("paired_tests", "Paired Wilcoxon signed-rank tests against the best baseline", data, display,
                 "Pairs: test cases scored by both (case Dice = mean over classes, then over seeds). "
                 "n/a: too few pairs or no difference.")


def incomplete(study: Study) -> Table:
    """Runs left out of the tables or worth a second look, with state and the last error line."""
    runs = study.runs
    data = runs[~runs["ok"] | (runs["note"] != "")]
    data = data[["run", "state", "status", "attempts", "model", "variant", "dataset", "seed", "note",
                 "error"]].reset_index(drop=True)
    display = _display(data, {
        "Run": _text("run"), "State": _text("state"), "model": _text("model"), "variant": _text("variant"),
        "dataset": _text("dataset"), "Seed": lambda r: "" if pd.isna(r["seed"]) else str(int(r["seed"])),
        "Attempts": lambda r: "" if pd.isna(r["attempts"]) else str(int(r["attempts"])),
        "Note": _text("note"),
        "Error (last line)": lambda r: str(r["error"]).splitlines()[-1][-160:] if r["error"] else "",
    })
    return Table("incomplete_runs", "Runs not in the tables (failed, missing, running, preempted, malformed)",
                 data, display)
