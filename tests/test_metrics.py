"""Metrics on arrays small enough to check by eye, including every empty case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medsam2_hpc import metrics


def test_dice_and_iou_on_2x2() -> None:
    pred = np.array([[1, 1], [0, 0]])
    truth = np.array([[1, 0], [0, 0]])
    assert metrics.dice(pred, truth) == pytest.approx(2 * 1 / (2 + 1))
    assert metrics.iou(pred, truth) == pytest.approx(1 / 2)
    assert metrics.dice(truth, truth) == pytest.approx(1.0)


def test_dice_accepts_torch_and_4x4() -> None:
    truth = torch.zeros(4, 4)
    truth[:2, :2] = 1  # 4 pixels
    pred = torch.zeros(4, 4)
    pred[1:3, 1:3] = 1  # 4 pixels, 1 shared
    assert metrics.dice(pred, truth) == pytest.approx(2 * 1 / 8)
    assert metrics.iou(pred, truth) == pytest.approx(1 / 7)


@pytest.mark.parametrize("fn", [metrics.dice, metrics.iou])
def test_empty_cases(fn) -> None:
    empty, full = np.zeros((2, 2)), np.ones((2, 2))
    assert math.isnan(fn(empty, empty))  # absent in both: excluded from means
    assert fn(full, empty) == 0.0  # absent in truth but predicted: an error
    assert fn(empty, full) == 0.0  # missed entirely


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_probs_to_mask_applies_sigmoid_first() -> None:
    logits = torch.tensor([-1.0, 0.0, 0.2, 3.0])
    assert metrics.probs_to_mask(logits).tolist() == [False, False, True, True]
    # a raw-logit threshold of 0.5 would drop logit 0.2 (p = 0.55); p > 0.9 needs logit > 2.197
    assert metrics.probs_to_mask(np.array([0.2, 2.0, 2.3]), threshold=0.9).tolist() == [False, False, True]


def test_hd95_parallel_lines_with_anisotropic_spacing() -> None:
    truth = np.zeros((8, 8), bool)
    pred = truth.copy()
    truth[2, 1:7] = True
    pred[5, 1:7] = True  # 3 rows away; rows are 2 mm apart -> every surface point is 6 mm off
    assert metrics.hd95(pred, truth, spacing=(2.0, 0.5)) == pytest.approx(6.0, rel=1e-5)
    assert metrics.hd95(pred, truth) == pytest.approx(3.0, rel=1e-5)  # no spacing: voxels


def test_hd95_offset_slabs_3d_and_single_points() -> None:
    truth = np.zeros((6, 8, 8), bool)
    pred = truth.copy()
    truth[1, 2:6, 2:6] = True
    pred[4, 2:6, 2:6] = True  # 3 slices of 2.5 mm
    assert metrics.hd95(pred, truth, spacing=(2.5, 1.0, 1.0)) == pytest.approx(7.5, rel=1e-5)
    a, b = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    a[0, 0], b[3, 4] = True, True
    assert metrics.hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(math.hypot(6.0, 2.0), rel=1e-5)


def test_hd95_nan_when_either_side_is_empty() -> None:
    empty, one = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    one[1, 1] = True
    assert math.isnan(metrics.hd95(empty, one, (1.0, 1.0)))
    assert math.isnan(metrics.hd95(one, empty, (1.0, 1.0)))
    assert math.isnan(metrics.hd95(empty, empty, (1.0, 1.0)))


def test_summarise_skips_nan_and_none() -> None:
    per_case = {
        "c1": {"a": 0.8, "b": math.nan},
        "c2": {"a": 0.6, "b": 0.5},
        "c3": {"a": None, "b": 0.7, "c": math.nan},
    }
    per_class, mean = metrics.summarise(per_case)
    assert per_class["a"] == pytest.approx(0.7)
    assert per_class["b"] == pytest.approx(0.6)
    assert math.isnan(per_class["c"])
    assert mean == pytest.approx(0.65)  # mean over classes that were scored
    assert math.isnan(metrics.summarise({"c1": {"a": None}})[1])
