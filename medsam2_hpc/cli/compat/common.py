"""The Medical-SAM2 single-dash flags (``-net sam2 -exp_name X -b 4 ...``) parsed as users mean them.

``train_2d.py`` and ``train_3d.py`` share :func:`common_parser`; each adds its own flags, turns
the parsed flags into hyper-parameters with :func:`common_hparams` (+ its own keys) and builds
the Task with :func:`compat_task`. Defects of the reference are not reproduced (FACTS.md):
``-vis 0`` is off, ``-pretrain`` really loads, there is an ``-epoch`` flag. Bad values raise
InputError (one line, exit 2) instead of argparse's usage dump.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from medsam2_hpc.cli.parser import Parser, name_arg, nonneg_int, positive_float, positive_int, seed_int
from medsam2_hpc.errors import InputError
from medsam2_hpc.models.sam2 import CONFIGS, resolve_config, variant_of
from medsam2_hpc.options import look_up
from medsam2_hpc.task import Task

__all__ = ["COMPAT_OUTPUT_ROOT", "CompatParser", "common_parser", "common_hparams", "compat_task",
           "positive_int", "nonneg_int", "positive_float", "find_resume_dir", "timestamp"]

COMPAT_OUTPUT_ROOT = "logs"  # runs land in logs/<exp_name>_<timestamp>/ as Medical-SAM2's do


class CompatParser(Parser):
    """Parses inside ``guarded``: its errors are InputErrors (one line, exit 2) with the --help hint."""

    def error(self, message: str) -> NoReturn:
        raise InputError(f"{message} (see {self.prog} --help)")


def _bool(text: str) -> bool:
    """``-train_vis 1|0|true|false`` (the reference parsed bools so that '0' was true)."""
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not one of 1, 0, true, false")


def common_parser(prog: str, description: str, *, datasets: Sequence[str],
                  default_prompt: str = "click") -> CompatParser:
    """The flags train_2d.py and train_3d.py share (FACTS.md 'The commands users know')."""
    p = CompatParser(prog=prog, description=description)
    p.add_argument("-net", default="sam2", help="network; only sam2 is supported")
    p.add_argument("-exp_name", type=name_arg, default="sam2", help="runs go to logs/<exp_name>_<timestamp>/")
    p.add_argument("-dataset", default=datasets[0], help=f"one of {', '.join(datasets)}")
    p.add_argument("-data_path", required=True, help="dataset root")
    p.add_argument("-sam_config", default="sam2_hiera_s", help=f"one of {', '.join(CONFIGS)}")
    p.add_argument("-sam_ckpt", default=None,
                   help="Meta's checkpoint (default checkpoints/<file of -sam_config>); "
                        "'none' = random weights")
    p.add_argument("-pretrain", default=None, help="start from this fine-tuned checkpoint (strict load)")
    p.add_argument("-image_size", type=positive_int, default=1024, help="model input side (multiple of 32)")
    p.add_argument("-b", type=positive_int, default=1, help="batch size")
    p.add_argument("-lr", type=positive_float, default=1e-4)
    p.add_argument("-epoch", type=positive_int, default=100, help="epochs (the reference hard-codes 100)")
    p.add_argument("-val_freq", type=positive_int, default=5, help="validate every N epochs")
    p.add_argument("-vis", type=nonneg_int, default=0, help="save overlays every N batches; 0 = off")
    p.add_argument("-train_vis", type=_bool, nargs="?", const=True, default=False,
                   help="also save overlays of training batches")
    p.add_argument("-prompt", default=default_prompt, help="click | bbox")
    p.add_argument("-loss", default="bce", help="bce (pos_weight 2) | dicefocal")
    p.add_argument("-seed", type=seed_int, default=0)
    p.add_argument("-num_workers", type=nonneg_int, default=2)
    p.add_argument("-amp", default="bf16", help="bf16 | fp16 | none (CUDA only; the CPU runs fp32)")
    p.add_argument("-gpu_device", type=nonneg_int, default=None, help="CUDA device index (default: auto)")
    p.add_argument("-distributed", default="none",
                   help="'none'; multi-GPU runs go through jobs.yaml (medsam2-hpc submit)")
    p.add_argument("-resume", nargs="?", const="latest", default=None,
                   help="continue logs/<exp_name>_* (newest) or the given run directory")
    p.set_defaults(compat_datasets=tuple(datasets))
    return p


def common_hparams(args: argparse.Namespace) -> dict[str, Any]:
    """Task hyper-parameters from the shared flags (the keys jobs.yaml uses too)."""
    look_up(args.net, ("sam2",), "-net")
    look_up(args.prompt, ("click", "bbox"), "-prompt")
    look_up(args.loss, ("bce", "dicefocal"), "-loss")
    look_up(args.amp, ("bf16", "fp16", "none"), "-amp")
    resolve_config(args.sam_config)
    if str(args.distributed).lower() != "none":
        raise InputError(f"-distributed {args.distributed}: multi-GPU training goes through jobs.yaml "
                         "(resources.gpus) and `medsam2-hpc submit`; use -distributed none here")
    for flag in ("sam_ckpt", "pretrain"):
        value = getattr(args, flag)
        if value is not None and str(value).lower() != "none" and not Path(value).is_file():
            raise InputError(f"-{flag} {value}: no such file")
    return {
        "epochs": args.epoch, "batch_size": args.b, "lr": args.lr, "image_size": args.image_size,
        "val_freq": args.val_freq, "num_workers": args.num_workers, "amp": args.amp,
        "device": "auto" if args.gpu_device is None else str(args.gpu_device),
        "vis": args.vis, "train_vis": bool(args.train_vis), "loss": args.loss,
        "sam_config": resolve_config(args.sam_config), "sam_ckpt": args.sam_ckpt,
        "pretrain": args.pretrain, "compat_view": True,
    }


def timestamp() -> str:
    return time.strftime("%Y_%m_%d_%H_%M_%S")


def find_resume_dir(resume: str, exp_name: str, root: str | Path = COMPAT_OUTPUT_ROOT) -> Path:
    """The run directory ``-resume`` means: the newest ``<exp_name>_*`` run, or the path given."""
    if resume != "latest":
        path = Path(resume)
        if path.is_file():  # e.g. .../Model/latest_epoch.pth or .../checkpoints/last.pt
            path = path.parent.parent
        if not (path / "checkpoints" / "last.pt").is_file():
            raise InputError(f"-resume {resume}: no checkpoints/last.pt in {path}")
        return path
    runs = sorted(d for d in Path(root).glob(f"{exp_name}_*") if (d / "checkpoints" / "last.pt").is_file())
    if not runs:
        raise InputError(f"-resume: no run of -exp_name {exp_name} with checkpoints/last.pt under {root}/")
    return runs[-1]


def compat_task(args: argparse.Namespace, model: str, hparams: dict[str, Any]) -> Task:
    """The Task of a Medical-SAM2-compatible run: ``logs/<exp_name>_<timestamp>`` (or the resumed run)."""
    dataset = look_up(str(args.dataset).lower(), [d.lower() for d in args.compat_datasets], "-dataset")
    if not Path(args.data_path).is_dir():
        raise InputError(f"-data_path {args.data_path}: no such directory")
    name = f"{args.exp_name}_{timestamp()}"
    output_root = COMPAT_OUTPUT_ROOT
    if args.resume is not None:
        run = find_resume_dir(args.resume, args.exp_name)
        name, output_root = run.name, str(run.parent)
    return Task(model=model, variant=variant_of(hparams["sam_config"]), dataset=dataset,
                data_path=str(args.data_path), output_root=output_root, study="", seed=args.seed,
                prompt=args.prompt, hparams=hparams, name=name)
