"""metrics.json: what trainers build is what the validator (and the collector) accepts."""

from __future__ import annotations

import json

from medsam2_hpc.contract import REQUIRED_KEYS, build_metrics, validate_metrics
from medsam2_hpc.task import Task


def _metrics(**extra):
    task = Task(model="sam2-3d", variant="hiera_t", dataset="btcv", data_path="/d", study="s",
                prompt="bbox")
    return build_metrics(
        task, split="val", dice_mean=0.5, per_class={"spleen": 0.5, "liver": float("nan")},
        per_case={"img0035": {"spleen": 0.5, "liver": float("nan")}}, epochs_completed=2,
        train_seconds=1.0, eval_seconds=0.5, params_m=38.9, **extra,
    )


def test_built_metrics_validate_and_serialise_nan_as_null():
    metrics = _metrics(dice_mean_per_slice=0.6)
    assert validate_metrics(metrics) == []
    assert set(REQUIRED_KEYS) <= set(metrics)
    text = json.dumps(metrics)
    assert "NaN" not in text and json.loads(text)["per_class"]["liver"] is None
    assert metrics["n_cases"] == 1


def test_validator_names_every_problem_at_once():
    metrics = _metrics()  # 3D without the per-slice number beside the volumetric one
    assert validate_metrics(metrics) == [
        "3D metrics need 'dice_mean_per_slice' beside the volumetric dice_mean"]
    broken = dict(metrics, dice_mean=1.5, dice_mean_per_slice=0.1, model="sam3", n_cases="1")
    del broken["seed"]
    broken["per_class"] = {"spleen": 0.5, "liver": -0.25}
    broken["per_case"] = {"img0035": {"spleen": "0.5", "liver": None}, "img0036": {"spleen": 1.25},
                          "img0037": {"spleen": True}, "img0038": [0.5]}
    assert validate_metrics(broken) == [
        "missing key 'seed'",
        "key 'n_cases' should be int, got str",
        "model 'sam3' is not one of ('sam2-2d', 'sam2-3d', 'resnet', 'yolo')",
        "dice_mean 1.5 is outside [0, 1]",
        "per_class['liver'] = -0.25 is outside [0, 1]",
        "per_case['img0035']['spleen'] = '0.5' is not a number or null",
        "per_case['img0036']['spleen'] = 1.25 is outside [0, 1]",
        "per_case['img0037']['spleen'] = True is not a number or null",
        "per_case['img0038'] should map class -> Dice, got list",
    ]
    assert validate_metrics([]) == ["metrics.json is not a JSON object"]


def test_validator_accepts_the_edges_of_the_dice_range():
    metrics = _metrics(dice_mean_per_slice=0.6)
    metrics["per_case"] = {"a": {"spleen": 0, "liver": 1.0}, "b": {"spleen": 0.0, "liver": None}, "c": {}}
    metrics["per_class"] = {"spleen": 1, "liver": None}
    assert validate_metrics(metrics) == []
