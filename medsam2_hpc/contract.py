"""metrics.json: the one file the collector reads (ARCHITECTURE.md section 3).

Trainers call :func:`build_metrics` with their :class:`~medsam2_hpc.scoring.Scores`, a
:class:`Selection` and a :class:`RunCost`; the collector and the tests call
:func:`validate_metrics`. NaN (an organ absent from a case) is written as ``null``.

Schema 2 (issue 14) says where the checkpoint was chosen, so a reader can tell an honest
held-out score from one picked on the cases it reports: ``selection_split`` and
``selection_cases`` (the validation cases), ``selection_dice`` (Dice of the chosen checkpoint
there, null when not measured in Dice), ``checkpoint`` ({select: best|last, epoch,
validated}: a run that never validated says so), ``hd95_unit`` (mm | px) and ``hparams``
(the resolved hyper-parameters, so sweep points stay apart).

Provenance: ``git_sha`` (inside the image: the commit ``container build`` stamped) and
``container`` ({image, digest}: the image Apptainer ran and its ``sha256:`` digest, which the
launcher computed on the submitting host; null outside a container).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .registry import dataset_kind, dataset_names, model_names
from .task import PROMPTS, Task

if TYPE_CHECKING:  # scoring needs torch; the collector reads metrics without it
    from .scoring import Scores

__all__ = ["SCHEMA_VERSION", "GIT_SHA_ENV", "DIGEST_ENV", "REQUIRED_KEYS", "HD95_UNITS", "SELECT",
           "checkpoint_record", "Selection", "RunCost", "build_metrics", "validate_metrics", "git_sha"]

SCHEMA_VERSION = 2
GIT_SHA_ENV = "MEDSAM2_GIT_SHA"
DIGEST_ENV = "MEDSAM2_IMAGE_DIGEST"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
HD95_UNITS = ("mm", "px")
SELECT = ("best", "last", "given")  # given: weights from outside the run (inference)
REQUIRED_KEYS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "task_id": (str,),
    "study": (str,),
    "model": (str,),
    "variant": (str,),
    "dataset": (str,),
    "split": (str,),
    "seed": (int,),
    "prompt": (str,),
    "dice_mean": (float, int, type(None)),
    "per_class": (dict,),
    "per_case": (dict,),
    "hd95_mean": (float, int, type(None)),
    "n_cases": (int,),
    "epochs_completed": (int,),
    "train_seconds": (float, int),
    "eval_seconds": (float, int),
    "peak_gpu_mem_gb": (float, int, type(None)),
    "params_m": (float, int),
    "git_sha": (str, type(None)),
    "container": (dict, str, type(None)),
    "created_at": (str,),
    "selection_split": (str,),
    "selection_cases": (list,),
    "selection_dice": (float, int, type(None)),
    "hd95_unit": (str,),
    "hparams": (dict,),
    "checkpoint": (dict,),
}


def _clean(value: Any) -> Any:
    """NaN/inf -> None recursively, numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def git_sha() -> str | None:
    """The commit the image was built from (``MEDSAM2_GIT_SHA``, stamped by ``container build``:
    the image's copy has no .git), else the commit of the source tree, else None."""
    if os.environ.get(GIT_SHA_ENV):
        return os.environ[GIT_SHA_ENV]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def container_info() -> dict[str, Any] | None:
    """Image path (Apptainer's own record) and digest (``MEDSAM2_IMAGE_DIGEST``, passed by the
    launcher: hpc/image.py) when running inside Apptainer or Singularity."""
    image = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if not image:
        return None
    return {"image": image, "digest": os.environ.get(DIGEST_ENV) or None}


def checkpoint_record(select: str, epoch: int | None, validated: bool) -> dict[str, Any]:
    """The ``checkpoint`` entry: which rule picked the scored weights, from which epoch (1-based)."""
    return {"select": select, "epoch": None if epoch is None else int(epoch), "validated": bool(validated)}


@dataclass(frozen=True)
class Selection:
    """Where the scored weights were chosen (schema 2): the ``split`` and its ``cases``, the
    chosen weights' ``dice`` there (None when not measured in Dice) and the ``checkpoint`` record."""

    split: str
    cases: Sequence[str]
    dice: float | None
    checkpoint: dict[str, Any]

    @classmethod
    def given(cls) -> Selection:
        """Weights from outside the run (inference): nothing was selected here."""
        return cls("none", (), None, checkpoint_record("given", None, False))


@dataclass(frozen=True)
class RunCost:
    """What the run spent: epochs trained, seconds of training and scoring, model size, GPU memory."""

    epochs_completed: int
    train_seconds: float
    eval_seconds: float
    params_m: float
    peak_gpu_mem_gb: float | None = None


def build_metrics(task: Task, *, split: str, scores: Scores, selection: Selection, cost: RunCost,
                  hparams: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Assemble a contract-complete metrics dict; ``extra`` keys (e.g. image_size) ride along.

    ``scores`` are those of ``split`` (its ``per_case`` keys are the scored cases) from
    ``scoring.Scorer.summary``; ``hparams`` is the trainer's resolved configuration (defaults
    filled in), not the raw ``task.hparams``.

    Raises:
        ValueError: an ``extra`` key would overwrite a built one.
    """
    fields = scores.fields()
    per_case = fields.pop("per_case")
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "task_id": task.task_id,
        "study": task.study,
        "model": task.model,
        "variant": task.variant,
        "dataset": task.dataset,
        "split": split,
        "seed": int(task.seed),
        "prompt": task.prompt,
        "dice_mean": fields.pop("dice_mean"),
        "per_class": fields.pop("per_class"),
        "per_case": per_case,
        "hd95_mean": fields.pop("hd95_mean"),
        "n_cases": len(per_case),
        "epochs_completed": int(cost.epochs_completed),
        "train_seconds": float(cost.train_seconds),
        "eval_seconds": float(cost.eval_seconds),
        "peak_gpu_mem_gb": cost.peak_gpu_mem_gb,
        "params_m": float(cost.params_m),
        "git_sha": git_sha(),
        "container": container_info(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "selection_split": selection.split,
        "selection_cases": sorted(str(c) for c in selection.cases),
        "selection_dice": selection.dice,
        "hd95_unit": fields.pop("hd95_unit"),
        "hparams": hparams,
        "checkpoint": selection.checkpoint,
    }
    clash = sorted(set(extra) & (set(metrics) | set(fields)))
    if clash:
        raise ValueError(f"build_metrics: extra keys {clash} would overwrite built ones")
    return _clean({**metrics, **fields, **extra})


_SCORE_TYPES = frozenset((float, int, type(None)))  # None: a class absent from the case


def _scores_ok(values: list[Any]) -> bool:
    """All numbers in [0, 1] or None; one pass of C-level ``map`` and numpy, no Python loop."""
    if not set(map(type, values)) <= _SCORE_TYPES:
        return False
    array = np.array(values, dtype=float)  # None -> NaN: an absent class, allowed
    return not ((array < 0.0) | (array > 1.0)).any()


def _score_problems(name: str, scores: Any) -> list[str]:
    """Why the Dice values in ``scores`` (class -> Dice or None) break the contract, by entry."""
    if not isinstance(scores, dict):
        return [f"{name} should map class -> Dice, got {type(scores).__name__}"]
    problems = []
    for cls, value in scores.items():
        if type(value) not in _SCORE_TYPES:
            problems.append(f"{name}[{cls!r}] = {value!r} is not a number or null")
        elif value is not None and not 0.0 <= value <= 1.0:
            problems.append(f"{name}[{cls!r}] = {value} is outside [0, 1]")
    return problems


def _per_case_problems(per_case: dict[str, Any]) -> list[str]:
    """A study holds millions of case scores: check them all at once, and only a table that
    fails is walked again in Python to name the offending entries."""
    tables = list(per_case.values())
    if set(map(type, tables)) <= {dict} and _scores_ok(list(chain.from_iterable(map(dict.values, tables)))):
        return []
    return [p for case, classes in per_case.items() for p in _score_problems(f"per_case[{case!r}]", classes)]


def validate_metrics(data: Any) -> list[str]:
    """Every way ``data`` breaks the contract, as readable lines (empty list: valid).

    All problems are collected, not the first: a file with a missing key and an out-of-range
    Dice names both, so one fix is enough. Values are checked wherever their key is well typed.
    """
    if not isinstance(data, dict):
        return ["metrics.json is not a JSON object"]
    problems = []
    ok: dict[str, Any] = {}  # the keys present with the right type
    for key, types in REQUIRED_KEYS.items():
        if key not in data:
            problems.append(f"missing key {key!r}")
        elif isinstance(data[key], bool) or not isinstance(data[key], types):
            names = "/".join(t.__name__ for t in types)
            problems.append(f"key {key!r} should be {names}, got {type(data[key]).__name__}")
        else:
            ok[key] = data[key]
    if "schema_version" in ok and ok["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version {ok['schema_version']} is not {SCHEMA_VERSION}")
    if "model" in ok and ok["model"] not in model_names():
        problems.append(f"model {ok['model']!r} is not one of {model_names()}")
    if "dataset" in ok and ok["dataset"] not in dataset_names():
        problems.append(f"dataset {ok['dataset']!r} is not one of {dataset_names()}")
    if "prompt" in ok and ok["prompt"] not in PROMPTS:
        problems.append(f"prompt {ok['prompt']!r} is not one of {PROMPTS}")
    if "hd95_unit" in ok and ok["hd95_unit"] not in HD95_UNITS:
        problems.append(f"hd95_unit {ok['hd95_unit']!r} is not one of {HD95_UNITS}")
    if "selection_cases" in ok and not all(isinstance(c, str) for c in ok["selection_cases"]):
        problems.append("selection_cases should be a list of case ids (strings)")
    if "checkpoint" in ok:
        problems += _checkpoint_problems(ok["checkpoint"])
    if isinstance(ok.get("container"), dict):
        problems += _container_problems(ok["container"])
    d = ok.get("dice_mean")
    if d is not None and not 0.0 <= d <= 1.0:
        problems.append(f"dice_mean {d} is outside [0, 1]")
    if "per_class" in ok:
        problems += _score_problems("per_class", ok["per_class"])
    if "per_case" in ok:
        problems += _per_case_problems(ok["per_case"])
    if ok.get("dataset") in dataset_names() and dataset_kind(ok["dataset"]).volumetric:
        if "dice_mean_per_slice" not in data:
            problems.append("3D metrics need 'dice_mean_per_slice' beside the volumetric dice_mean")
    return problems


def _checkpoint_problems(ckpt: dict[str, Any]) -> list[str]:
    problems = []
    if ckpt.get("select") not in SELECT:
        problems.append(f"checkpoint.select {ckpt.get('select')!r} is not one of {SELECT}")
    epoch = ckpt.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        problems.append(f"checkpoint.epoch should be int or null, got {type(epoch).__name__}")
    if not isinstance(ckpt.get("validated"), bool):
        problems.append("checkpoint.validated should be true or false")
    return problems


def _container_problems(container: dict[str, Any]) -> list[str]:
    """``container``: {image: path, digest: "sha256:<64 hex>" or null (not known at launch)}."""
    problems = []
    if not isinstance(container.get("image"), str):
        problems.append("container.image should be the image path")
    digest = container.get("digest")
    if digest is not None and not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
        problems.append(f"container.digest {digest!r} is not 'sha256:' and 64 hex digits, or null")
    return problems
