"""``medsam2-hpc collect <study dir>``: comparison tables, plots and MODEL_COMPARISON.md.

Warnings (malformed metrics.json, unreadable status.json) go to stderr; the run summary and
headline table to stdout. Exit 2 when the study dir or a format is wrong, nothing written then.
"""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from medsam2_hpc.report import collect_study

    report = collect_study(args.study_dir, args.out, args.format, args.with_published)
    for warning in report.warnings:
        print(f"medsam2-hpc collect: warning: {warning}", file=sys.stderr)
    print(report)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="collect a study's runs into comparison tables and plots",
                       description=__doc__.splitlines()[0])
    p.add_argument("study_dir", help="directory holding one sub-directory per run (<output_root>/<study>)")
    p.add_argument("--out", help="output directory (default: STUDY_DIR/comparison)")
    p.add_argument("--format", default="md,csv,tex", help="table formats, comma separated: md,csv,tex")
    p.add_argument("--with-published", action="store_true",
                   help="add published Dice numbers (Medical SAM 2, nnU-Net, ...) as labelled extra rows")
    p.set_defaults(func=run)
