"""The comparison tables, each as numbers (for CSV) and as formatted text (Markdown, LaTeX).

Every table is built from :class:`~medsam2_hpc.report.collect.Study` alone. Means are over
seeds (runs) of one group (dataset, model, variant, prompt, hyper-parameter set); ``std`` is the
sample standard deviation over those seeds (blank for a single seed). HD95 has one column per
unit (mm, px, not recorded): no column mixes units. Published numbers are extra rows whose model
reads ``published: <method> (<source>)``, added only when asked for, only for datasets with runs
and only in columns of their own metric (``published.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from ..data.organs import ORGANS
from ..registry import dataset_kind
from . import published
from .collect import GROUP, Study
from .labels import model_label, setting_labels, sort_rows
from .provenance import HD95_UNITS, NONE, UNKNOWN

__all__ = ["Table", "SECTIONS", "headline", "btcv_organs", "btcv_per_slice", "refuge", "per_class", "paired",
           "incomplete", "fmt", "fmt_p"]

_NAMES = {"dataset": "Dataset", "model": "Model", "variant": "Variant", "prompt": "Prompt",
          "setting": "Hyper-parameters", "n_runs": "n runs"}
# HD95 column per unit recorded in metrics.json; runs that predate hd95_unit get their own column.
HD95_COLUMNS = {**{unit: f"hd95_{unit}" for unit in HD95_UNITS}, UNKNOWN: "hd95_unit_unknown"}
_HD95_TITLES = {**{unit: f"HD95 ({unit})" for unit in HD95_UNITS}, UNKNOWN: "HD95 (unit not recorded)"}


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
    """Rows in table order (``labels.sort_rows``), each labelled with its varying hyper-parameters."""
    if "setting" not in frame:
        frame = frame.assign(setting=setting_labels(frame) if not frame.empty else "")
    return sort_rows(frame)


def _checkpoints(runs: pd.DataFrame) -> pd.DataFrame:
    """Per group: where the checkpoint was selected, how, and how many runs never validated."""
    def joined(values: pd.Series) -> str:
        return "/".join(sorted(set(values.astype(str))))

    return runs.groupby(GROUP, sort=False, dropna=False).agg(
        selection_split=("selection_split", joined), checkpoint=("checkpoint", joined),
        n_unvalidated=("validated", lambda v: int(v.eq(False).sum())))


def _groups(study: Study, dataset: str | None = None) -> pd.DataFrame:
    runs = study.scored
    if dataset is not None:
        runs = runs[runs["dataset"] == dataset]
    runs = runs.assign(**{column: runs["hd95"].where(runs["hd95_unit"] == unit)
                          for unit, column in HD95_COLUMNS.items()})
    agg = runs.groupby(GROUP, sort=False, dropna=False).agg(
        n_runs=("run", "size"), dice_mean=("dice", "mean"), dice_std=("dice", "std"),
        dice_per_slice=("dice_per_slice", "mean"), **{c: (c, "mean") for c in HD95_COLUMNS.values()},
        params_m=("params_m", "mean"), train_hours=("train_hours", "mean"), throughput=("throughput", "mean"),
        selection_dice=("selection_dice", "mean"),
    )
    return _sorted(agg.join(_checkpoints(runs)).reset_index())


def _display(data: pd.DataFrame, columns: dict[str, Callable[[pd.Series], str]],
             optional: dict[str, str] | None = None) -> pd.DataFrame:
    """Format each column with its function; drop an optional column (shown -> source) no row fills."""
    out = {}
    for column, render in columns.items():
        source = (optional or {}).get(column)
        if source is not None and (data[source].isna() | data[source].eq("")).all():
            continue
        out[column] = data.apply(render, axis=1) if not data.empty else pd.Series(dtype=str)
    frame = pd.DataFrame(out)
    return frame.rename(columns=lambda c: _NAMES.get(c, c))


def _text(column: str) -> Callable[[pd.Series], str]:
    return lambda row: "" if pd.isna(row[column]) else str(row[column])


def _model(row: pd.Series) -> str:
    return model_label(row["model"])


def _num(column: str, digits: int = 3) -> Callable[[pd.Series], str]:
    return lambda row: fmt(row[column], digits)


def _checkpoint_text(row: pd.Series) -> str:
    """How the group's checkpoints were chosen; runs that never validated are called out."""
    if row["published"]:
        return ""
    select, split = str(row["checkpoint"]), str(row["selection_split"])
    if select == UNKNOWN and split == UNKNOWN:
        text = "not recorded"
    elif select == "last":
        text = "last epoch"
    elif select == "given":
        text = "given weights"
    else:
        text = f"{select} on {split}" if split not in (NONE, UNKNOWN) else f"{select} (split not recorded)"
    if row["n_unvalidated"]:
        text += f"; never validated: {int(row['n_unvalidated'])} of {int(row['n_runs'])} runs"
    return text


def _delta_text(row: pd.Series) -> str:
    if pd.isna(row["mean_diff"]):
        return "" if row.get("published", False) or pd.isna(row["note"]) else "n/a"
    ci = ("n/a" if math.isnan(row["ci_low"]) else f"{row['ci_low']:+.3f}, {row['ci_high']:+.3f}")
    return f"{row['mean_diff']:+.3f} [{ci}]"


def headline(study: Study, tests: pd.DataFrame, with_published: bool = False) -> Table:
    """One row per model, size, prompt and hyper-parameter set on a dataset, and how it compares."""
    data = _groups(study)
    data = data.merge(tests[[*GROUP, "mean_diff", "ci_low", "ci_high", "p_value", "p_holm", "note"]],
                      on=GROUP, how="left")
    best = {(r["dataset"], r["baseline"], r["baseline_hparams"])
            for _, r in tests.iterrows() if r["baseline"]}
    data["published"] = False
    if with_published:  # after our rows of the same dataset
        data = pd.concat([data, _published_rows(set(data["dataset"]))], ignore_index=True)
        data = data.sort_values(["dataset", "published"], kind="stable").reset_index(drop=True)

    def p_text(row: pd.Series) -> str:
        key = (row["dataset"], "/".join(str(row[c]) for c in ("model", "variant", "prompt")), row["hparams"])
        if key in best:
            return "best baseline (chosen on val)"
        return "" if pd.isna(row["note"]) else fmt_p(row["p_holm"], row["note"])

    hd95 = {_HD95_TITLES[unit]: column for unit, column in HD95_COLUMNS.items()}
    display = _display(data, {
        "dataset": _text("dataset"), "model": _model, "variant": _text("variant"),
        "prompt": _text("prompt"), "setting": _text("setting"),
        "n_runs": lambda r: "" if r["published"] else str(int(r["n_runs"])),
        "Checkpoint": _checkpoint_text,
        "Dice (mean ± std)": lambda r: _mean_std(r["dice_mean"], r["dice_std"], r["n_runs"]),
        "Dice per-slice": _num("dice_per_slice"), **{title: _num(c, 2) for title, c in hd95.items()},
        "Params (M)": _num("params_m", 1), "Train (h)": _num("train_hours", 2),
        "Samples/s": _num("throughput", 1), "ΔDice vs best baseline [95% CI]": _delta_text,
        "p (Holm)": p_text,
    }, optional={"setting": "setting", "Dice per-slice": "dice_per_slice", "Samples/s": "throughput", **hd95})
    data = data.drop(columns="note")
    return Table("headline", "Headline: mean Dice per model, size, prompt and hyper-parameters", data,
                 display,
                 "Dice: volumetric for BTCV (per case and organ), mean over seeds ± sample std, on the test "
                 "split. Checkpoint: how each run's checkpoint was chosen (on val, never on the scored "
                 "cases). ΔDice: mean over test cases of the paired difference to the dataset's best "
                 "baseline (ResNet/YOLO with the highest Dice on its selection split), with a 95% BCa "
                 "bootstrap interval over test cases. p: paired Wilcoxon signed-rank test over test cases, "
                 "Holm-corrected across the comparisons of this table.")


def _published_rows(datasets: set[str]) -> pd.DataFrame:
    """The literature's numbers for ``datasets``, each in the column of its own metric."""
    rows = [{"dataset": p.dataset, "model": p.label, "variant": "", "prompt": "", "setting": "",
             "n_runs": math.nan, "dice_mean": math.nan, "dice_per_slice": math.nan, p.metric: p.dice,
             "dice_std": math.nan, "published": True}
            for p in published.HEADLINE if p.dataset in datasets]
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
    groups = _groups(study, dataset)[[*GROUP, "setting", "n_runs", mean_column]]
    data = _sorted(groups.merge(wide, on=GROUP, how="inner" if names else "left"))
    data = data[[*GROUP, "setting", "n_runs", *names, mean_column]].rename(columns={mean_column: "mean"})
    return data, names


def _with_published(data: pd.DataFrame, pub: published.Published, names: list[str], classes: dict,
                    mean: float) -> pd.DataFrame:
    """``data`` with ``pub`` as a last row, its per-class numbers under the columns of ``names`` it has."""
    row = {"dataset": pub.dataset, "model": pub.label, "variant": "", "prompt": "", "setting": "",
           "n_runs": math.nan, **{classes[k]: v for k, v in pub.per_class.items() if classes[k] in names},
           "mean": mean}
    return pd.concat([data, pd.DataFrame([row])], ignore_index=True)


def _class_display(data: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    columns = {"model": _model, **{c: _text(c) for c in ("variant", "prompt", "setting")}}
    columns["n_runs"] = lambda r: "" if pd.isna(r["n_runs"]) else str(int(r["n_runs"]))
    columns.update({n: _num(n) for n in names})
    columns["Mean"] = _num("mean")
    return _display(data, columns, optional={"setting": "setting"})


def btcv_organs(study: Study) -> Table:
    """The 13 organs, volumetric Dice (per case, then mean over cases and seeds); no published row,
    since the published per-organ numbers are per-slice Dice (they are in ``btcv_per_slice``)."""
    data, names = _class_table(study, "btcv", "dice", "dice_mean")
    return Table("btcv_organs", "BTCV per organ: volumetric Dice", data, _class_display(data, names),
                 "Volumetric Dice per case and organ, averaged over test cases (organs absent from a case "
                 "are left out) and then over seeds. Mean: the runs' dice_mean.", names)


def btcv_per_slice(study: Study, with_published: bool = False) -> Table:
    """The per-slice numbers Medical-SAM2 reports (and its paper's per-organ row), apart from volumetric."""
    data, names = _class_table(study, "btcv", "per_slice", "dice_per_slice")
    data = data[data["mean"].notna() | data[names].notna().any(axis=1)] if names else \
        data[data["mean"].notna()]
    data = data.reset_index(drop=True)
    if with_published and not study.scored[study.scored["dataset"] == "btcv"].empty:
        data = _with_published(data, published.BTCV_ORGANS_MEDICAL_SAM2, names, ORGANS,
                               published.BTCV_ORGANS_MEDICAL_SAM2.dice)
    return Table("btcv_per_slice", "BTCV per-slice Dice (not volumetric)", data, _class_display(data, names),
                 "Mean 2D Dice over the slices that contain the organ (the number Medical-SAM2 reports). "
                 "It ignores false positives on other slices and runs higher than the volumetric Dice.",
                 names)


def refuge(study: Study, with_published: bool = False) -> Table:
    """Optic cup (and disc where the challenge layout provides it)."""
    data, names = _class_table(study, "refuge", "dice", "dice_mean")
    if with_published and not data.empty:  # cup only: not comparable with our cup/disc mean
        data = _with_published(data, published.REFUGE_CUP, names, {0: "cup"}, math.nan)
    return Table("refuge", "REFUGE: Dice per structure", data, _class_display(data, names),
                 "Dice per test image, averaged over images and seeds.", names)


def per_class(study: Study, dataset: str, with_published: bool = False) -> Table:
    """Any dataset: Dice per class (the section a dataset gets unless it names its own)."""
    data, names = _class_table(study, dataset, "dice", "dice_mean")
    return Table(dataset, f"{dataset}: Dice per class", data, _class_display(data, names),
                 "Dice per test case, averaged over cases and seeds.", names)


# Table sections a dataset can name in the registry: (study, dataset, with_published) -> Table.
SECTIONS: dict[str, Callable[[Study, str, bool], Table]] = {
    "btcv_organs": lambda study, dataset, with_published: btcv_organs(study),
    "btcv_per_slice": lambda study, dataset, with_published: btcv_per_slice(study, with_published),
    "refuge": lambda study, dataset, with_published: refuge(study, with_published),
    "per_class": per_class,
}


def paired(tests: pd.DataFrame, settings: pd.DataFrame) -> Table:
    """Each model against its dataset's best baseline over the same test cases.

    ``settings``: GROUP + ``setting`` of every row of the headline, to label the baseline's
    hyper-parameter set the way the headline does.
    """
    data = _sorted(tests)
    labels = {tuple(row[c] for c in GROUP): row["setting"] for _, row in settings.iterrows()}

    def baseline(row: pd.Series) -> str:
        if not row["baseline"]:
            return ""
        setting = labels.get((row["dataset"], *row["baseline"].split("/"), row["baseline_hparams"]), "")
        return f"{row['baseline']} ({setting})" if setting else row["baseline"]

    display = _display(data, {
        "dataset": _text("dataset"), "model": _model, "variant": _text("variant"),
        "prompt": _text("prompt"), "setting": _text("setting"), "Best baseline (chosen on val)": baseline,
        "Pairs": _text("n_pairs"), "Mean ΔDice [95% CI]": _delta_text,
        "W": _num("statistic", 1), "p": lambda r: fmt_p(r["p_value"], r["note"]),
        "p (Holm)": lambda r: fmt_p(r["p_holm"], r["note"]),
    }, optional={"setting": "setting"})
    return Table("paired_tests", "Paired comparisons with the best baseline: ΔDice, Wilcoxon, Holm", data,
                 display,
                 "Pairs: test cases scored by both (case Dice = mean over classes, then over seeds). "
                 "ΔDice: mean paired difference with a 95% BCa bootstrap interval over test cases. "
                 "p: Wilcoxon signed-rank; p (Holm): Holm-corrected across every comparison in this table. "
                 "n/a: too few pairs, no difference, or no baseline with a selection Dice.")


def incomplete(study: Study) -> Table:
    """Runs left out of the tables or worth a second look, with state and the last error line."""
    runs = study.runs
    data = runs[~runs["ok"] | (runs["note"] != "")]
    data = data[["run", "state", "status", "attempts", "model", "variant", "dataset", "seed", "note",
                 "error"]].reset_index(drop=True)
    display = _display(data, {
        "Run": _text("run"), "State": _text("state"), "model": _model, "variant": _text("variant"),
        "dataset": _text("dataset"), "Seed": lambda r: "" if pd.isna(r["seed"]) else str(int(r["seed"])),
        "Attempts": lambda r: "" if pd.isna(r["attempts"]) else str(int(r["attempts"])),
        "Note": _text("note"),
        "Error (last line)": lambda r: str(r["error"]).splitlines()[-1][-160:] if r["error"] else "",
    })
    return Table("incomplete_runs", "Runs not in the tables (failed, missing, running, preempted, malformed, "
                 "selected on scored cases)",
                 data, display)
