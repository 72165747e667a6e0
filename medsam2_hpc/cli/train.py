"""``medsam2-hpc train`` / ``python train.py --model X``: one local run of any model kind.

The local fallback of the seed README (`python train.py --model yolo`). It builds the
same Task as jobs.yaml and the sbatch script, and calls the same run_task.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

from medsam2_hpc.cli.parser import Parser, name_arg, positive_float, positive_int, seed_int
from medsam2_hpc.errors import InputError, guarded
from medsam2_hpc.inputs import parse_yaml
from medsam2_hpc.task import MODELS, PROMPTS, Task

__all__ = ["DEFAULTS", "add_arguments", "task_from_args", "main", "register"]

# model -> (variant, dataset, data path, prompt): what a bare `--model X` trains.
DEFAULTS: dict[str, tuple[str, str, str, str]] = {
    "sam2-2d": ("hiera_s", "refuge", "./data/REFUGE", "click"),
    "sam2-3d": ("hiera_s", "btcv", "./data/btcv", "bbox"),
    "resnet": ("resnet50", "btcv", "./data/btcv", "none"),
    "yolo": ("yolo11l-seg", "btcv", "./data/btcv", "none"),
}
_DATA_PATHS = {"refuge": "./data/REFUGE", "btcv": "./data/btcv"}


def add_arguments(parser: argparse.ArgumentParser, models: Sequence[str] = MODELS) -> None:
    parser.add_argument("--model", required=True, choices=list(models), help="model kind to train")
    parser.add_argument("--variant", help="size: hiera_t|hiera_s|hiera_b+|hiera_l, resnet18|34|50, "
                        "yolo11n-seg..yolo11x-seg (default per model)")
    parser.add_argument("--dataset", type=str.lower, choices=["refuge", "btcv"], help="default per model")
    parser.add_argument("--data-path", help="dataset root (default ./data/REFUGE or ./data/btcv)")
    parser.add_argument("--prompt", choices=list(PROMPTS), help="SAM2 prompt kind (default per model)")
    parser.add_argument("--output-root", default="runs", help="runs go to OUTPUT_ROOT/STUDY/TASK_ID")
    parser.add_argument("--study", type=name_arg, default="local")
    parser.add_argument("--name", type=name_arg, help="run directory name (default: derived from the task)")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--epochs", type=positive_int)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--image-size", type=positive_int)
    parser.add_argument("--lr", type=positive_float)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any trainer hyper-parameter (value parsed as YAML), repeatable")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise InputError(f"--set {item[:60]!r}: expected KEY=VALUE with KEY a hyper-parameter name")
        out[key] = parse_yaml(raw, f"--set {key}") if raw else ""
    return out


def task_from_args(args: argparse.Namespace) -> Task:
    variant, dataset, data_path, prompt = DEFAULTS[args.model]
    dataset = args.dataset or dataset
    hparams = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                 ("image_size", args.image_size), ("lr", args.lr)) if v is not None}
    hparams.update(_parse_set(args.set))
    return Task(
        model=args.model,
        variant=args.variant or variant,
        dataset=dataset,
        data_path=args.data_path or _DATA_PATHS.get(dataset, data_path),
        output_root=args.output_root,
        study=args.study,
        seed=args.seed,
        prompt=args.prompt or prompt,
        hparams=hparams,
        name=args.name,
    )


def run(args: argparse.Namespace) -> int:
    from medsam2_hpc.runner import run_in_foreground

    return run_in_foreground(task_from_args(args), "train")


def main(argv: Sequence[str] | None = None, *, models: Sequence[str] | None = None,
         prog: str = "train.py") -> int:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(parser, models or MODELS)
    args = parser.parse_args(argv)
    return guarded(lambda: run(args), prog)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model locally (no Slurm)")
    add_arguments(p)
    p.set_defaults(func=run)
