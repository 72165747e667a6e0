"""`medsam2-hpc data`: write synthetic data in the real layouts, or check a downloaded copy.

    medsam2-hpc data synth --kind refuge|btcv --layout multirater|challenge|slices|nifti --out DIR
                           [--cases N] [--test-cases M] [--size S] [--seed K]
    medsam2-hpc data check --dataset refuge|btcv PATH [--window ct|none]

``check`` decodes every file of every split, so a corrupt or missing file is reported (one
line, exit 2) before a multi-hour job finds it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medsam2_hpc.cli.parser import positive_int, seed_int
from medsam2_hpc.errors import InputError
from medsam2_hpc.options import look_up

LAYOUTS = {"refuge": ("multirater", "challenge"), "btcv": ("slices", "nifti")}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="synthetic data in the real layouts; check a dataset copy")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    s = verbs.add_parser("synth", help="write small learnable data in a real REFUGE/BTCV layout")
    s.add_argument("--kind", required=True, help="refuge | btcv")
    s.add_argument("--layout", help="refuge: multirater (default) | challenge; "
                                    "btcv: slices (default) | nifti")
    s.add_argument("--out", required=True, type=Path, help="directory to create (must be empty or absent)")
    s.add_argument("--cases", type=positive_int, default=4, help="training cases (default 4)")
    s.add_argument("--test-cases", type=positive_int, default=None,
                   help="test cases (default: half of --cases, >= 1)")
    s.add_argument("--size", type=positive_int, default=None,
                   help="image side in px (default 128 REFUGE, 96 BTCV)")
    s.add_argument("--depth", type=positive_int, default=20, help="BTCV slices per volume (default 20)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.set_defaults(func=synth_command)
    c = verbs.add_parser("check", help="decode every file of a dataset copy and print a summary")
    c.add_argument("--dataset", required=True, help="refuge | btcv")
    c.add_argument("path", type=Path)
    c.add_argument("--window", default="ct", help="BTCV NIfTI intensity: ct (-175..250 HU) | none (min-max)")
    c.set_defaults(func=check_command)


def synth_command(args: argparse.Namespace) -> int:
    from medsam2_hpc.data import synthetic

    kind = look_up(str(args.kind).lower(), LAYOUTS, "--kind")
    layout = look_up(args.layout or LAYOUTS[kind][0], LAYOUTS[kind], f"--layout (for --kind {kind})")
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out: {out} exists and is not an empty directory")
    n_test = args.test_cases if args.test_cases is not None else max(1, args.cases // 2)
    if kind == "refuge":
        root = synthetic.make_refuge(out, layout, n_train=args.cases, n_test=n_test,
                                     size=args.size or 128, seed=args.seed)
    else:
        root = synthetic.make_btcv(out, layout, n_train=args.cases, n_test=n_test, depth=args.depth,
                                   size=args.size or 96, seed=args.seed)
    print(f"wrote synthetic {kind} ({layout}) to {root}: {args.cases} train + {n_test} test cases")
    return 0


def check_command(args: argparse.Namespace) -> int:
    from medsam2_hpc.data import check_dataset

    dataset = check_dataset(args.dataset, "--dataset")
    window = look_up(args.window, ("ct", "none"), "--window")
    summary = _check_refuge(args.path) if dataset == "refuge" else _check_btcv(args.path, window)
    print(json.dumps(summary, indent=2))
    return 0


def _check_refuge(path: Path) -> dict:
    from medsam2_hpc.data.refuge import RefugeDataset

    summary: dict = {"dataset": "refuge"}
    for split in ("train", "test"):
        ds = RefugeDataset(path, split, image_size=256, out_size=256)
        fractions = np.array([ds[i]["mask"].mean(dim=(1, 2)).numpy() for i in range(len(ds))])
        summary.update(layout=ds.layout, classes=list(ds.classes))
        means = [round(float(m), 4) for m in fractions.mean(0)]
        summary[split] = {"cases": len(ds), "mean_area_fraction": dict(zip(ds.classes, means, strict=True))}
    return summary


def _check_btcv(path: Path, window: str) -> dict:
    from medsam2_hpc.data.btcv import ORGANS, BTCVVolumes, labelled_slices
    from medsam2_hpc.data.nifti import CT_WINDOW

    summary: dict = {"dataset": "btcv"}
    for split in ("train", "val"):
        volumes = BTCVVolumes(path, split, window=CT_WINDOW if window == "ct" else None, cache_size=1)
        organs: set[int] = set()
        shapes, slices = [], 0
        for volume in volumes:
            shapes.append(list(volume.image.shape))
            organs.update(int(v) for v in np.unique(volume.label) if v)
            slices += len(labelled_slices(volume))
        summary["layout"] = volumes.layout
        summary["val/test" if split == "val" else split] = {
            "cases": volumes.cases, "shapes": shapes, "labelled_slices": slices,
            "organs": [ORGANS[o] for o in sorted(organs)]}
    return summary
