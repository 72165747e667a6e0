"""Model kinds and datasets: the one list of each (STYLE.md item 11, timm's ``register_model``).

An entry is registered where its package is defined (``trainers/sam2``, ``trainers/baselines``,
``data``), and every "which ones exist?" question is answered from here: CLI choices, jobs.yaml
validation, the metrics contract, the collector's tables, the demo's data, ``medsam2-hpc data``
and ``slurm/train_slurm.sh``. Entries hold metadata and dotted paths only, so asking costs no
torch or Ultralytics import; a trainer module is imported when a task runs (``runner``).

    python -m medsam2_hpc.registry models|datasets      one name per line, for shell scripts
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .options import suggest

__all__ = ["ModelKind", "DatasetKind", "register_model", "register_dataset", "model_kind", "dataset_kind",
           "model_names", "dataset_names", "load_entry", "MODEL_KINDS", "DATASET_KINDS"]

# Packages whose import registers the built-in entries (each in its __init__.py).
BUILTIN_PACKAGES = ("medsam2_hpc.data", "medsam2_hpc.trainers.sam2", "medsam2_hpc.trainers.baselines")
PROMPT_KINDS = ("bbox", "click", "mask")


@dataclass(frozen=True)
class ModelKind:
    """One model kind, as jobs.yaml, metrics.json and the tables name it.

    Args:
        name: e.g. ``sam2-2d``; the value of ``model:`` in jobs.yaml and ``--model``.
        trainer: dotted module with ``check(task)`` (raise InputError, write nothing) and
            ``train(task, run) -> metrics dict``; imported only when a task runs.
        variants: the sizes it builds; ``default_variant`` is what a bare ``train.py --model`` trains.
        datasets: the datasets its trainer reads; the first is ``train.py``'s default.
        prompts: the prompt kinds it takes, the first being the default; empty: it takes none.
        multi_gpu: a multi-GPU profile runs it as one process per GPU that trains one model (its
            trainer uses the engine's TrainLoop.step and epoch_loader); False: such a profile is refused.
        baseline: the paired tests compare every other model with the best baseline of a dataset.
        label: its name in the shown tables and figures (``report.labels.model_label``; the CSV
            keeps ``name``), default ``name``.
    """

    name: str
    trainer: str
    variants: tuple[str, ...]
    default_variant: str
    datasets: tuple[str, ...]
    prompts: tuple[str, ...] = ()
    multi_gpu: bool = False
    baseline: bool = False
    label: str = ""

    def __post_init__(self) -> None:
        if self.default_variant not in self.variants:
            raise ValueError(f"model kind {self.name}: default_variant {self.default_variant!r} "
                             f"is not one of its variants")
        if not self.datasets or set(self.prompts) - set(PROMPT_KINDS):
            raise ValueError(f"model kind {self.name}: needs datasets; prompts are among {PROMPT_KINDS}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def default_prompt(self) -> str:
        return self.prompts[0] if self.prompts else "none"

    def check(self, task: Any) -> None:
        """InputError when ``task``'s dataset or prompt is not one this kind takes."""
        if task.dataset not in self.datasets:
            raise InputError(f"dataset {task.dataset!r}: {self.name} trains on {_either(self.datasets)}")
        if self.prompts and task.prompt not in self.prompts:
            raise InputError(f"prompt {task.prompt!r}: {self.name} needs {_either(self.prompts)}")
        if not self.prompts and task.prompt != "none":
            raise InputError(f"prompt {task.prompt!r}: {self.name} takes no prompt")


@dataclass(frozen=True)
class DatasetKind:
    """One dataset: its classes, where it lives by default, how to fake it and how it is reported.

    Args:
        name: e.g. ``btcv``; the value of ``dataset:`` in jobs.yaml and ``--dataset``.
        classes: class names in table column order.
        default_path: ``train.py``'s default ``--data-path``.
        loader: ``module:callable``. 2D: ``(root, split, image_size, out_size, classes)`` -> a torch
            Dataset of ``{"image", "mask", "name"}`` with ``.classes`` (``RefugeDataset``); volumetric:
            ``(root)`` -> ``{"train", "val", "test": volumes}`` (``btcv.training_volumes``). Either
            has ``.hd95_unit`` (mm | px): the unit depends on the files read (BTCV: mm for NIfTI,
            px for the slices layout), so the loaded data says it, not this entry.
        layouts: the on-disk layouts its loader reads; the first is ``data synth``'s default.
        synthetic: ``module:function(out, layout, *, n_train, n_test, size, seed, **kw) -> root``
            writing small learnable data in a real layout (the demo and the tests use it).
        demo: keyword arguments of ``synthetic`` for the demo study.
        summary: ``module:function(path, **options) -> dict``: decode every file, for ``data check``.
        splits: the splits its loader knows, in order (train first, the scored split last); the
            baselines' pre-flight decodes the first item of each.
        volumetric: 3D volumes: Dice per case and class over the whole volume, with the per-slice
            mean stored beside it as ``dice_mean_per_slice``.
        sections: the collector's tables for it (names in ``report.tables.SECTIONS``).
    """

    name: str
    classes: tuple[str, ...]
    default_path: str
    loader: str
    layouts: tuple[str, ...]
    synthetic: str
    summary: str
    splits: tuple[str, ...] = ("train", "test")
    demo: Mapping[str, Any] = field(default_factory=dict)
    volumetric: bool = False
    sections: tuple[str, ...] = ("per_class",)

    def __post_init__(self) -> None:
        if not self.layouts or not self.classes:
            raise ValueError(f"dataset {self.name}: needs classes and layouts")


# Filled by register_*; read them through model_kind()/model_names() and their dataset twins,
# which load the built-in entries first.
MODEL_KINDS: dict[str, ModelKind] = {}
DATASET_KINDS: dict[str, DatasetKind] = {}
_loaded = False


def register_model(kind: ModelKind) -> ModelKind:
    """Add ``kind`` to the list (at import time of the package that defines it)."""
    if kind.name in MODEL_KINDS:
        raise ValueError(f"model kind {kind.name!r} is registered twice")
    MODEL_KINDS[kind.name] = kind
    return kind


def register_dataset(kind: DatasetKind) -> DatasetKind:
    if kind.name in DATASET_KINDS:
        raise ValueError(f"dataset {kind.name!r} is registered twice")
    DATASET_KINDS[kind.name] = kind
    return kind


def _builtins() -> None:
    """Import the packages that register the built-in entries, once (they import this module)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for package in BUILTIN_PACKAGES:
            importlib.import_module(package)


def model_names(*, baseline: bool | None = None) -> tuple[str, ...]:
    """Models first, then baselines, each by name (the order of every list and table); only the
    baselines (or only the others) when ``baseline`` is given."""
    _builtins()
    names = sorted(MODEL_KINDS, key=lambda name: (MODEL_KINDS[name].baseline, name))
    return tuple(n for n in names if baseline is None or MODEL_KINDS[n].baseline == baseline)


def dataset_names() -> tuple[str, ...]:
    _builtins()
    return tuple(DATASET_KINDS)


def model_kind(name: str, what: str = "model") -> ModelKind:
    """The registered kind ``name``, or InputError naming ``what`` with the near miss."""
    names = model_names()
    if name not in MODEL_KINDS:
        raise InputError(f"{what} {name!r} is not one of {', '.join(names)}{suggest(str(name), names)}")
    return MODEL_KINDS[name]


def dataset_kind(name: str, what: str = "dataset") -> DatasetKind:
    names = dataset_names()
    if name not in DATASET_KINDS:
        raise InputError(f"{what} {name!r} is not one of {', '.join(names)}{suggest(str(name), names)}")
    return DATASET_KINDS[name]


def _either(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def load_entry(path: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (imported now, not at registration)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str]) -> int:
    """``python -m medsam2_hpc.registry models|datasets``: the names, one a line."""
    lists = {"models": model_names, "datasets": dataset_names}
    if len(argv) != 1 or argv[0] not in lists:
        print("usage: python -m medsam2_hpc.registry models|datasets", file=sys.stderr)
        return 2
    print("\n".join(lists[argv[0]]()))
    return 0


if __name__ == "__main__":
    from medsam2_hpc.registry import main as _main  # the imported module is the one that holds the entries

    sys.exit(_main(sys.argv[1:]))
