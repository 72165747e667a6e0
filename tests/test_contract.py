"""metrics.json: what trainers build is what the validator (and the collector) accepts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from medsam2_hpc import contract
from medsam2_hpc.contract import (
    REQUIRED_KEYS,
    RunCost,
    Selection,
    build_metrics,
    checkpoint_record,
    validate_metrics,
)
from medsam2_hpc.scoring import Scores
from medsam2_hpc.task import Task


def _metrics(**extra):
    task = Task(model="sam2-3d", variant="hiera_t", dataset="btcv", data_path="/d", study="s",
                prompt="bbox")
    scores = Scores(0.5, {"spleen": 0.5, "liver": float("nan")},
                    {"img0035": {"spleen": 0.5, "liver": float("nan")}}, "mm")
    return build_metrics(
        task, split="test", scores=scores, cost=RunCost(2, 1.0, 0.5, 38.9), hparams={"lr": 1e-4},
        selection=Selection("val", ["img0002", "img0001"], 0.4, checkpoint_record("best", 2, True)), **extra,
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


def test_selection_fields_are_checked_by_name():
    metrics = _metrics(dice_mean_per_slice=0.6)
    assert metrics["selection_cases"] == ["img0001", "img0002"]  # sorted: a set of case ids
    assert metrics["checkpoint"] == {"select": "best", "epoch": 2, "validated": True}
    bad = dict(metrics, hd95_unit="cm", checkpoint={"select": "first", "epoch": "2", "validated": 1},
               selection_cases=[3])
    assert validate_metrics(bad) == [
        "hd95_unit 'cm' is not one of ('mm', 'px')",
        "selection_cases should be a list of case ids (strings)",
        "checkpoint.select 'first' is not one of ('best', 'last', 'given')",
        "checkpoint.epoch should be int or null, got str",
        "checkpoint.validated should be true or false",
    ]
    never = dict(metrics, checkpoint=checkpoint_record("best", None, False), selection_dice=None)
    assert validate_metrics(never) == []


def test_validator_accepts_the_edges_of_the_dice_range():
    metrics = _metrics(dice_mean_per_slice=0.6)
    metrics["per_case"] = {"a": {"spleen": 0, "liver": 1.0}, "b": {"spleen": 0.0, "liver": None}, "c": {}}
    metrics["per_class"] = {"spleen": 1, "liver": None}
    assert validate_metrics(metrics) == []


def test_provenance_inside_an_image_comes_from_what_the_build_and_the_launcher_passed(monkeypatch):
    monkeypatch.setenv("MEDSAM2_GIT_SHA", "0123abc")
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/m.sif")
    monkeypatch.setenv("MEDSAM2_IMAGE_DIGEST", "sha256:" + "ab" * 32)
    metrics = _metrics(dice_mean_per_slice=0.6)
    assert metrics["git_sha"] == "0123abc"
    assert metrics["container"] == {"image": "/images/m.sif", "digest": "sha256:" + "ab" * 32}
    assert validate_metrics(metrics) == []
    assert validate_metrics(dict(metrics, container={"image": "/images/m.sif", "digest": "md5:1"})) == [
        "container.digest 'md5:1' is not 'sha256:' and 64 hex digits, or null"]


def test_git_sha_without_a_checkout_is_the_stamped_one_or_null(tmp_path):
    """The image's copy of the package has no .git: MEDSAM2_GIT_SHA, else null (never a guess)."""
    shutil.copytree(Path(contract.__file__).parent, tmp_path / "medsam2_hpc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    probe = [sys.executable, "-c", "from medsam2_hpc.contract import git_sha; print(git_sha())"]
    env = {k: v for k, v in os.environ.items() if k not in ("MEDSAM2_GIT_SHA", "GIT_DIR")}
    env["PYTHONPATH"] = str(tmp_path)
    run = partial(subprocess.run, probe, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert run(env={**env, "MEDSAM2_GIT_SHA": "0123abc"}).stdout.strip() == "0123abc"
    assert run(env=env).stdout.strip() == "None"


def test_extra_keys_cannot_overwrite_built_ones():
    with pytest.raises(ValueError, match=r"\['dice_mean', 'iou_mean'\] would overwrite"):
        _metrics(dice_mean=0.9, iou_mean=0.1)
    assert _metrics(image_size=64)["image_size"] == 64
