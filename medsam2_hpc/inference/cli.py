"""``python inference_3d.py``: predict every case of a BTCV split with SAM2 over whole volumes.

Flags follow the reference (``-checkpoint -sam_config -data_path -dataset -prompt -output_dir
-save_vis``) plus ``-split -prompt_file -prompt_freq -image_size -gpu_device -postprocess``.
``-checkpoint`` is one of our training checkpoints (``best.pt``, ``Model/best_dice_epoch.pth``)
or a plain Meta checkpoint for zero-shot SAM2. ``-postprocess meta`` predicts as Meta's
``build_sam2_video_predictor`` does (its dynamic multimask fallback, binarised prompt masks in
memory, hole filling; see ``VideoPropagator``), ``none`` as the model trains; the default is
``meta`` for a plain Meta checkpoint (zero-shot SAM2 as Meta ships it) and ``none`` otherwise,
recorded in metrics.json as ``postprocess``. Everything is checked (checkpoint against config, prompt file
against the cases, labels for ground-truth prompts) before anything is written.

Ground-truth prompts (the default, the evaluation protocol) need labels for every case of the
split. With ``-prompt_file`` (real use) the split is read with labels optional and only the
cases the file names are predicted: scans without labels (dataset_0.json's "test" list in
imagesTs/, a Test/image/<case>/ without masks, a bare folder of scans) are predicted but not
scored; labelled ones are scored as usual.

Writes into ``-output_dir``: ``<case>.npy`` label volumes (organ ids), ``<case>.nii.gz`` on the
source grid for NIfTI input, ``predictions.json`` (case -> files, prompts used, scored or not),
``dice.csv`` and ``metrics.json`` when at least one case was scored, and
``vis/<case>_slice<k>.png`` with ``-save_vis`` (image | truth | prediction; image | prediction
without truth).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsam2_hpc.atomic import write_json
from medsam2_hpc.cli.compat.common import CompatParser, nonneg_int, positive_int
from medsam2_hpc.contract import RunCost, Selection, build_metrics
from medsam2_hpc.data.btcv import ORGANS, BTCVVolumes, Volume, write_prediction
from medsam2_hpc.engine.checkpoint import load_checkpoint
from medsam2_hpc.engine.runtime import count_params_m, peak_memory_gb, pick_device, reset_peak_memory
from medsam2_hpc.errors import InputError
from medsam2_hpc.inference.files import load_prompt_file, prompt_records, save_vis, write_dice_csv
from medsam2_hpc.inference.predict import EvalSettings, VolumePrompts, evaluate, protocol
from medsam2_hpc.inputs import check_output_dir
from medsam2_hpc.models.sam2 import CONFIGS, POSTPROCESS, build_sam2_model, resolve_config, variant_of
from medsam2_hpc.models.sam2_video import VideoPropagator
from medsam2_hpc.options import look_up
from medsam2_hpc.task import Task

__all__ = ["build_parser", "run", "main"]


def build_parser(prog: str = "inference_3d.py") -> CompatParser:
    p = CompatParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("-checkpoint", required=True,
                   help="our checkpoint (best.pt) or Meta's sam2_hiera_*.pt; 'none' = random weights")
    p.add_argument("-sam_config", default=None,
                   help=f"one of {', '.join(CONFIGS)} (default: the one our checkpoint was trained with)")
    p.add_argument("-data_path", required=True, help="BTCV root (either layout)")
    p.add_argument("-dataset", default="btcv", help="btcv")
    p.add_argument("-split", default="test", help="train | val | test")
    p.add_argument("-prompt", default="bbox", help="bbox | click | mask (ground-truth prompts)")
    p.add_argument("-prompt_freq", type=positive_int, default=2,
                   help="ground-truth prompt on every k-th slice")
    p.add_argument("-prompt_file", default=None,
                   help="JSON prompts (case, slice, organ, box|points): predicts the cases it names; "
                        "labels optional")
    p.add_argument("-image_size", type=positive_int, default=None,
                   help="model input side (default: the checkpoint's, else 1024)")
    p.add_argument("-output_dir", default="inference_3d_output")
    p.add_argument("-save_vis", action="store_true",
                   help="write image | truth | prediction PNGs (image | prediction without truth)")
    p.add_argument("-gpu_device", type=nonneg_int, default=None, help="CUDA device index (default: auto)")
    p.add_argument("-amp", default="bf16", help="bf16 | fp16 | none (CUDA only)")
    p.add_argument("-max_cond_frames", type=int, default=4,
                   help="prompted slices each slice attends to, closest first (-1 = all)")
    p.add_argument("-postprocess", default=None,
                   help="meta | none: Meta's video-predictor post-processing or none (default: meta for a "
                        "plain Meta checkpoint, none for ours)")
    p.add_argument("-no_hd95", action="store_true", help="skip HD95 (the slow score)")
    p.add_argument("-seed", type=nonneg_int, default=0, help="seed of the ground-truth click sampling")
    return p


def _load(args: argparse.Namespace) -> tuple[torch.nn.Module, str, int, str]:
    """(model, config, image size, checkpoint kind) with the checkpoint checked against the config."""
    extra: dict[str, Any] = {}
    kind = "random"
    if str(args.checkpoint).lower() != "none":
        ckpt = load_checkpoint(args.checkpoint, what="-checkpoint")
        extra = ckpt.get("extra") or {}
        kind = "ours" if "loop" in ckpt else "meta"
    trained = extra.get("sam_config")
    config = resolve_config(args.sam_config) if args.sam_config else trained
    if config is None:
        raise InputError(f"-sam_config: needed for {args.checkpoint} (one of {', '.join(CONFIGS)})")
    if trained and trained != config:
        raise InputError(f"-checkpoint {args.checkpoint}: trained with -sam_config {trained}, not {config}")
    image_size = args.image_size or int(extra.get("image_size", 1024))
    model = build_sam2_model(config, None if kind == "random" else args.checkpoint, image_size=image_size,
                             allow_random=kind == "random")
    return model, config, image_size, kind


def _cases(args: argparse.Namespace) -> tuple[list[Volume], dict[str, VolumePrompts] | None]:
    """The volumes to predict (decoded now: bad files fail before anything is written) and the
    file prompts, if any. Only a prompt file makes labels optional (see the module docstring)."""
    volumes = BTCVVolumes(args.data_path, args.split, labels="optional" if args.prompt_file else "required")
    if not args.prompt_file:
        return list(volumes), None
    file_prompts = load_prompt_file(args.prompt_file, volumes)
    return [volumes.get(case) for case in volumes.cases if case in file_prompts], file_prompts


def _index_entry(args: argparse.Namespace, volume: Volume, files: list[Path],
                 file_prompts: dict[str, VolumePrompts] | None) -> dict[str, Any]:
    """predictions.json entry: the files written and the prompts the prediction came from."""
    if file_prompts is not None:
        prompts: Any = prompt_records(file_prompts[volume.case])
    else:
        prompts = {"from": "ground truth", "prompt": args.prompt, "prompt_freq": args.prompt_freq,
                   "seed": args.seed, "organs": [ORGANS[int(o)] for o in np.unique(volume.label) if o]}
    return {"files": [f.name for f in files], "scored": volume.label is not None, "prompts": prompts}


def run(args: argparse.Namespace) -> int:
    look_up(str(args.dataset).lower(), ("btcv",), "-dataset")
    look_up(args.prompt, ("bbox", "click", "mask"), "-prompt")
    look_up(args.amp, ("bf16", "fp16", "none"), "-amp")
    if args.postprocess is not None:
        look_up(args.postprocess, POSTPROCESS, "-postprocess")
    if args.max_cond_frames != -1 and args.max_cond_frames < 2:
        raise InputError(f"-max_cond_frames {args.max_cond_frames}: must be -1 or >= 2")
    if not Path(args.data_path).is_dir():
        raise InputError(f"-data_path {args.data_path}: no such directory")
    check_output_dir(args.output_dir, "-output_dir")
    cases, file_prompts = _cases(args)
    model, config, image_size, kind = _load(args)
    device = pick_device(None if args.gpu_device is None else str(args.gpu_device))
    model.to(device).eval()
    postprocess = args.postprocess or ("meta" if kind == "meta" else "none")
    propagator = VideoPropagator(model, max_cond_frames=args.max_cond_frames, postprocess=postprocess)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {}

    def write(volume: Volume, pred: Any) -> None:
        index[volume.case] = _index_entry(args, volume, write_prediction(volume, pred, out), file_prompts)
        if args.save_vis:
            save_vis(volume, pred, out / "vis")
        print(f"[inference_3d] {volume.case}: {tuple(pred.shape)} -> {out}", file=sys.stderr, flush=True)

    reset_peak_memory(device)
    t0 = time.perf_counter()
    settings = EvalSettings(args.prompt, args.prompt_freq, image_size, device, args.amp,
                            "mm" if all(v.affine is not None for v in cases) else "px", args.seed,
                            hd95=not args.no_hd95)
    result = evaluate(propagator, cases, settings, file_prompts=file_prompts, on_case=write)
    seconds = time.perf_counter() - t0
    write_json(out / "predictions.json", {"data_path": str(args.data_path), "split": args.split,
                                          "prompt_file": args.prompt_file, "cases": index})
    unscored = [v.case for v in cases if v.label is None]
    summary = f"[inference_3d] {len(cases)} case(s) -> {out}"
    if unscored:
        summary += f"; unscored (no labels): {', '.join(unscored)}"
    if not result.kept("dice"):
        print(f"{summary}; nothing scored, so no dice.csv or metrics.json", file=sys.stderr)
        return 0
    write_dice_csv(out / "dice.csv", result.kept("dice"), result.kept("per_slice"), result.kept("hd95"))
    s = result.summary()
    task = Task(model="sam2-3d", variant=variant_of(config), dataset="btcv", data_path=str(args.data_path),
                output_root=str(out), seed=args.seed, prompt=args.prompt, name="inference_3d")
    metrics = build_metrics(
        task, split=args.split, scores=s, selection=Selection.given(),
        cost=RunCost(0, 0.0, seconds, count_params_m(model), peak_memory_gb(device)),
        hparams={"prompt_freq": args.prompt_freq, "image_size": image_size},
        checkpoint_path=str(args.checkpoint), checkpoint_kind=kind, postprocess=postprocess,
        image_size=image_size, protocol=protocol(args.prompt, args.prompt_freq, args.prompt_file),
        cases=list(s.per_case), unscored_cases=unscored)
    write_json(out / "metrics.json", metrics)
    print(f"{summary}; dice_mean={metrics['dice_mean']} over {metrics['n_cases']} scored", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "inference_3d.py") -> int:
    from medsam2_hpc.errors import guarded

    return guarded(lambda: run(build_parser(prog).parse_args(argv)), prog)
