"""Each model against the best baseline of its dataset: mean ΔDice with a bootstrap CI, Wilcoxon, Holm.

Pairs are test cases: a case's score is its Dice averaged over classes and then over seeds,
so every model is compared with the baseline on exactly the same cases (cases only one side
scored are left out). The best baseline is the row of a baseline model kind (``baseline`` in the
registry: ResNet, YOLO; one hyper-parameter set) with the highest mean Dice on its *selection*
split (``selection_dice``), never on the test cases it is then compared on. The mean paired
difference carries a 95% BCa bootstrap confidence interval over test cases; the Wilcoxon
signed-rank p values of one table are Holm-corrected together.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, wilcoxon

from ..registry import model_names
from .collect import GROUP, Study

__all__ = ["MIN_PAIRS", "CONFIDENCE", "case_scores", "paired_tests", "holm", "mean_ci"]

# Below 6 pairs the exact two-sided test cannot reach p < 0.05 (the smallest p for n=5 is 1/16).
MIN_PAIRS = 6
CONFIDENCE = 0.95
_RESAMPLES = 9999
COLUMNS = [*GROUP, "baseline", "baseline_hparams", "n_pairs", "mean_diff", "ci_low", "ci_high", "statistic",
           "p_value", "p_holm", "note"]


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


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjustment; NaN entries (no test) are left out of the family and stay NaN.

    The i-th smallest of m p values becomes max over j <= i of min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def mean_ci(diff: np.ndarray) -> tuple[float, float]:
    """95% BCa bootstrap interval of the mean of paired differences (fixed seed: reproducible tables)."""
    if len(diff) < 2:
        return math.nan, math.nan
    if np.ptp(diff) == 0:  # every case moved by the same amount: no sampling spread
        return float(diff[0]), float(diff[0])
    with warnings.catch_warnings():  # BCa warns (and gives NaN) on degenerate resamples: percentile then
        warnings.simplefilter("ignore")
        result = bootstrap((diff,), np.mean, confidence_level=CONFIDENCE, n_resamples=_RESAMPLES,
                           method="BCa", rng=np.random.default_rng(0))
        low, high = result.confidence_interval
        if not (math.isfinite(low) and math.isfinite(high)):
            result = bootstrap((diff,), np.mean, confidence_level=CONFIDENCE, n_resamples=_RESAMPLES,
                               method="percentile", rng=np.random.default_rng(0))
            low, high = result.confidence_interval
    return float(low), float(high)


def _label(key: tuple) -> str:
    """model/variant/prompt of a group key (its hyper-parameters travel in their own column)."""
    return "/".join(str(k) for k in key[1:4])


def paired_tests(study: Study, cases: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per non-baseline group: the comparison with its dataset's best baseline (chosen on val)."""
    cases = case_scores(study) if cases is None else cases
    scored = study.scored
    selection = scored.groupby(GROUP, sort=True, dropna=False)["selection_dice"].mean()
    rows = []
    baseline_kinds = model_names(baseline=True)
    for dataset in sorted(scored["dataset"].dropna().unique()):
        in_dataset = selection[selection.index.get_level_values("dataset") == dataset]
        is_baseline = in_dataset.index.get_level_values("model").isin(baseline_kinds)
        candidates = in_dataset[is_baseline].dropna()
        for key in in_dataset.index[~is_baseline]:
            if not is_baseline.any():
                rows.append(_row(key, None, 0, note="no baseline run on this dataset"))
            elif candidates.empty:
                rows.append(_row(key, None, 0, note="no baseline recorded a selection Dice to choose on"))
            else:
                rows.append(_test(key, candidates.idxmax(), cases))
    tests = pd.DataFrame(rows, columns=COLUMNS)
    tests["p_holm"] = holm(tests["p_value"].to_numpy(dtype=float))
    return tests


def _scores_of(cases: pd.DataFrame, key: tuple) -> pd.Series:
    mask = pd.Series(True, index=cases.index)
    for column, value in zip(GROUP, key, strict=True):
        mask &= cases[column] == value
    return cases.loc[mask].set_index("case")["score"]


def _test(key: tuple, best: tuple, cases: pd.DataFrame) -> dict:
    both = pd.concat([_scores_of(cases, key), _scores_of(cases, best)], axis=1, join="inner").dropna()
    n = len(both)
    diff = (both.iloc[:, 0] - both.iloc[:, 1]).to_numpy()
    mean_diff = float(diff.mean()) if n else math.nan
    low, high = mean_ci(diff)
    if n < MIN_PAIRS:
        return _row(key, best, n, mean_diff=mean_diff, ci=(low, high),
                    note=f"n/a: {n} paired cases (< {MIN_PAIRS})")
    if (diff == 0).all():
        return _row(key, best, n, mean_diff=0.0, ci=(low, high), note="n/a: identical scores on every case")
    with warnings.catch_warnings():  # scipy warns when ties force the normal approximation
        warnings.simplefilter("ignore", UserWarning)
        result = wilcoxon(both.iloc[:, 0], both.iloc[:, 1])
    return _row(key, best, n, mean_diff=mean_diff, ci=(low, high), statistic=float(result.statistic),
                p_value=float(result.pvalue))


def _row(key: tuple, best: tuple | None, n: int, *, mean_diff: float = math.nan,
         ci: tuple[float, float] = (math.nan, math.nan), statistic: float = math.nan,
         p_value: float = math.nan, note: str = "") -> dict:
    return {**dict(zip(GROUP, key, strict=True)), "baseline": "" if best is None else _label(best),
            "baseline_hparams": "" if best is None else best[4], "n_pairs": n, "mean_diff": mean_diff,
            "ci_low": ci[0], "ci_high": ci[1], "statistic": statistic, "p_value": p_value,
            "p_holm": math.nan, "note": note}
