"""Paired Wilcoxon signed-rank test of each model against the best baseline, per dataset.

Pairs are test cases: a case's score is its Dice averaged over classes and then over seeds,
so every model is compared with the baseline on exactly the same cases (cases only one side
scored are left out). The best baseline is the row of a baseline model kind (``baseline`` in the
registry: ResNet, YOLO) with the highest mean Dice.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from ..registry import model_names
from .collect import GROUP, Study

__all__ = ["MIN_PAIRS", "case_scores", "paired_tests"]

# Below 6 pairs the exact two-sided test cannot reach p < 0.05 (the smallest p for n=5 is 1/16).
MIN_PAIRS = 6
COLUMNS = [*GROUP, "baseline", "n_pairs", "mean_diff", "statistic", "p_value", "note"]


def case_scores(study: Study) -> pd.DataFrame:
    """Per group and case: the case's Dice averaged over seeds (columns GROUP + case, score)."""
    frames = []
    for key, runs in study.scored.groupby(GROUP, sort=False, dropna=False)["run"]:
        entries = [study.cases[run] for run in runs if run in study.cases]
        if entries:
            frames.append(_seed_mean(entries).assign(**dict(zip(GROUP, key, strict=True))))
    if not frames:
        return pd.DataFrame(columns=[*GROUP, "case", "score"])
    return pd.concat(frames, ignore_index=True)[[*GROUP, "case", "score"]].dropna(subset=["score"])


def _seed_mean(entries: list[tuple[tuple[str, ...], np.ndarray]]) -> pd.DataFrame:
    """Case -> mean score over the seeds that scored it (seeds share a test set: one numpy mean)."""
    ids = entries[0][0]
    if all(other is ids or other == ids for other, _ in entries):
        with warnings.catch_warnings():  # a case no seed scored stays NaN and is dropped
            warnings.simplefilter("ignore", RuntimeWarning)
            score = np.nanmean(np.vstack([s for _, s in entries]), axis=0)
        return pd.DataFrame({"case": ids, "score": score})
    long = pd.DataFrame({"case": [case for ids, _ in entries for case in ids],
                         "score": np.concatenate([s for _, s in entries])})
    return long.groupby("case", sort=False)["score"].mean().reset_index()


def _label(key: tuple) -> str:
    return "/".join(str(k) for k in key[1:])


def paired_tests(study: Study, cases: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per non-baseline group: the test against its dataset's best baseline."""
    cases = case_scores(study) if cases is None else cases
    scored = study.scored
    means = scored.groupby(GROUP, sort=True, dropna=False)["dice"].mean()
    rows = []
    baseline_kinds = model_names(baseline=True)
    for dataset in sorted(scored["dataset"].dropna().unique()):
        in_dataset = means[means.index.get_level_values("dataset") == dataset]
        baselines = in_dataset[in_dataset.index.get_level_values("model").isin(baseline_kinds)].dropna()
        for key in in_dataset.index:
            if key[1] in baseline_kinds:
                continue
            if baselines.empty:
                rows.append(_row(key, "", 0, note="no baseline run on this dataset"))
                continue
            best = baselines.idxmax()
            rows.append(_test(key, best, cases))
    return pd.DataFrame(rows, columns=COLUMNS)


def _scores_of(cases: pd.DataFrame, key: tuple) -> pd.Series:
    mask = pd.Series(True, index=cases.index)
    for column, value in zip(GROUP, key, strict=True):
        mask &= cases[column] == value
    return cases.loc[mask].set_index("case")["score"]


def _test(key: tuple, best: tuple, cases: pd.DataFrame) -> dict:
    both = pd.concat([_scores_of(cases, key), _scores_of(cases, best)], axis=1, join="inner").dropna()
    n = len(both)
    if n < MIN_PAIRS:
        return _row(key, _label(best), n, note=f"n/a: {n} paired cases (< {MIN_PAIRS})")
    diff = both.iloc[:, 0] - both.iloc[:, 1]
    if (diff == 0).all():
        return _row(key, _label(best), n, mean_diff=0.0, note="n/a: identical scores on every case")
    with warnings.catch_warnings():  # scipy warns when ties force the normal approximation
        warnings.simplefilter("ignore", UserWarning)
        result = wilcoxon(both.iloc[:, 0], both.iloc[:, 1])
    return _row(key, _label(best), n, mean_diff=float(diff.mean()), statistic=float(result.statistic),
                p_value=float(result.pvalue))


def _row(key: tuple, baseline: str, n: int, *, mean_diff: float = math.nan, statistic: float = math.nan,
         p_value: float = math.nan, note: str = "") -> dict:
    return {**dict(zip(GROUP, key, strict=True)), "baseline": baseline, "n_pairs": n, "mean_diff": mean_diff,
            "statistic": statistic, "p_value": p_value, "note": note}
