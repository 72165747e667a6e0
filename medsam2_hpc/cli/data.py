"""`medsam2-hpc data`: write synthetic data in the real layouts, or check a downloaded copy.

    medsam2-hpc data synth --kind DATASET [--layout L] --out DIR [--cases N] [--test-cases M] [--size S]
                           [--seed K]
    medsam2-hpc data check --dataset DATASET PATH [--window ct|none]

The datasets, their layouts, generators and checks come from the registry (data/__init__.py).

``check`` decodes every file of every split, so a corrupt or missing file is reported (one
line, exit 2) before a multi-hour job finds it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medsam2_hpc.cli.parser import positive_int, seed_int
from medsam2_hpc.errors import InputError
from medsam2_hpc.options import look_up
from medsam2_hpc.registry import dataset_kind, dataset_names, load_entry


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="synthetic data in the real layouts; check a dataset copy")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    s = verbs.add_parser("synth", help="write small learnable data in a real REFUGE/BTCV layout")
    s.add_argument("--kind", required=True, help=" | ".join(dataset_names()))
    s.add_argument("--layout", help="; ".join(f"{d}: {' | '.join(dataset_kind(d).layouts)}"
                                            for d in dataset_names()) + " (default: the first)")
    s.add_argument("--out", required=True, type=Path, help="directory to create (must be empty or absent)")
    s.add_argument("--cases", type=positive_int, default=4, help="training cases (default 4)")
    s.add_argument("--test-cases", type=positive_int, default=None,
                   help="test cases (default: half of --cases, >= 1)")
    s.add_argument("--size", type=positive_int, default=None,
                   help="image side in px (default: the demo's size)")
    s.add_argument("--depth", type=positive_int, default=20,
                   help="slices per volume of a 3D dataset (default 20)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.set_defaults(func=synth_command)
    c = verbs.add_parser("check", help="decode every file of a dataset copy and print a summary")
    c.add_argument("--dataset", required=True, help=" | ".join(dataset_names()))
    c.add_argument("path", type=Path)
    c.add_argument("--window", default="ct", help="BTCV NIfTI intensity: ct (-175..250 HU) | none (min-max)")
    c.set_defaults(func=check_command)


def synth_command(args: argparse.Namespace) -> int:
    kind = dataset_kind(look_up(str(args.kind).lower(), dataset_names(), "--kind"))
    layout = look_up(args.layout or kind.layouts[0], kind.layouts, f"--layout (for --kind {kind.name})")
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out: {out} exists and is not an empty directory")
    n_test = args.test_cases if args.test_cases is not None else max(1, args.cases // 2)
    options = {"depth": args.depth} if kind.volumetric else {}
    size = args.size or kind.demo.get("size")
    if size:
        options["size"] = size
    root = load_entry(kind.synthetic)(out, layout, n_train=args.cases, n_test=n_test, seed=args.seed,
                                      **options)
    print(f"wrote synthetic {kind.name} ({layout}) to {root}: {args.cases} train + {n_test} test cases")
    return 0


def check_command(args: argparse.Namespace) -> int:
    from medsam2_hpc.data import check_dataset

    dataset = check_dataset(args.dataset, "--dataset")
    window = look_up(args.window, ("ct", "none"), "--window")
    summary = load_entry(dataset_kind(dataset).summary)(args.path, window=window)
    print(json.dumps(summary, indent=2))
    return 0
