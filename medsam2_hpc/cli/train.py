"""``medsam2-hpc train`` / ``python train.py --model X``: one local run of any model kind.

The local fallback of the original README (`python train.py --model yolo`). It builds the
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
from medsam2_hpc.registry import dataset_kind, dataset_names, model_kind, model_names
from medsam2_hpc.task import PROMPTS, Task

__all__ = ["add_arguments", "task_from_args", "main", "register"]


def add_arguments(parser: argparse.ArgumentParser, models: Sequence[str] | None = None) -> None:
    """Flags of a local run; choices and defaults come from the registry (each model kind's defaults)."""
    models = list(models or model_names())
    variants = "; ".join(f"{m}: {'|'.join(model_kind(m).variants)}" for m in models)
    paths = ", ".join(f"{d}: {dataset_kind(d).default_path}" for d in dataset_names())
    parser.add_argument("--model", required=True, choices=models, help="model kind to train")
    parser.add_argument("--variant", help=f"size ({variants}; default per model)")
    parser.add_argument("--dataset", type=str.lower, choices=list(dataset_names()), help="default per model")
    parser.add_argument("--data-path", help=f"dataset root (default {paths})")
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
    kind = model_kind(args.model)
    dataset = args.dataset or kind.datasets[0]
    hparams = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                 ("image_size", args.image_size), ("lr", args.lr)) if v is not None}
    hparams.update(_parse_set(args.set))
    return Task(
        model=args.model,
        variant=args.variant or kind.default_variant,
        dataset=dataset,
        data_path=args.data_path or dataset_kind(dataset).default_path,
        output_root=args.output_root,
        study=args.study,
        seed=args.seed,
        prompt=args.prompt or kind.default_prompt,
        hparams=hparams,
        name=args.name,
    )


def run(args: argparse.Namespace) -> int:
    from medsam2_hpc.runner import run_in_foreground

    return run_in_foreground(task_from_args(args), "train")


def main(argv: Sequence[str] | None = None, *, models: Sequence[str] | None = None,
         prog: str = "train.py") -> int:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(parser, models)
    args = parser.parse_args(argv)
    return guarded(lambda: run(args), prog)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model locally (no Slurm)")
    add_arguments(p)
    p.set_defaults(func=run)
