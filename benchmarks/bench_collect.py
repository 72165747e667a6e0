"""Collect a fabricated study of many runs: seconds and peak memory, as JSON on stdout.

The study mixes BTCV runs (6 test cases x 13 organs, volumetric + per-slice) and REFUGE runs
(400 test images x cup/disc), with a few failed and malformed runs, over every model kind.
Usage: ``python benchmarks/bench_collect.py [--runs 10000] [--formats md,csv,tex] [--keep DIR]
[--workers N]`` (N: collector processes; default automatic, 1: serial). Goal (issue 8): 10,000 runs
in under 5 s. ``collect_cpu_workers_s`` / ``max_rss_mb_worker``: CPU and peak memory of the
collector's worker processes, which ``collect_cpu_s`` / ``max_rss_mb`` (this process) leave out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ORGANS = ("spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
          "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland",
          "left adrenal gland")
GROUPS = (
    [("sam2-3d", v, "btcv", p) for v in ("hiera_t", "hiera_s", "hiera_b+", "hiera_l")
     for p in ("bbox", "click")]
    + [("resnet", v, d, "none") for v in ("resnet18", "resnet50") for d in ("btcv", "refuge")]
    + [("yolo", v, d, "none") for v in ("yolo11n-seg", "yolo11l-seg") for d in ("btcv", "refuge")]
    + [("sam2-2d", v, "refuge", "click") for v in ("hiera_t", "hiera_s", "hiera_b+", "hiera_l")]
)


def _metrics(model: str, variant: str, dataset: str, prompt: str, seed: int,
             rng: np.random.Generator) -> dict:
    level = {"sam2-3d": 0.85, "sam2-2d": 0.82, "resnet": 0.75, "yolo": 0.7}[model]
    if dataset == "btcv":
        classes, cases = ORGANS, [f"img{35 + i:04d}" for i in range(6)]
    else:
        classes, cases = ("cup", "disc"), [f"T{i:04d}" for i in range(400)]
    scores = np.clip(level + rng.normal(0, 0.05, (len(cases), len(classes))), 0, 1).round(4)
    per_case = {c: dict(zip(classes, row.tolist(), strict=True))
                for c, row in zip(cases, scores, strict=True)}
    per_class = dict(zip(classes, scores.mean(0).round(4).tolist(), strict=True))
    task_id = f"{model}_{variant}_{dataset}_{prompt}_s{seed}"
    data = {
        "schema_version": 1, "task_id": task_id, "study": "bench", "model": model, "variant": variant,
        "dataset": dataset, "split": "test", "seed": seed, "prompt": prompt,
        "dice_mean": float(scores.mean()), "per_class": per_class, "per_case": per_case, "hd95_mean": 6.0,
        "n_cases": len(cases), "epochs_completed": 100, "train_seconds": 3600.0 * rng.uniform(1, 10),
        "eval_seconds": 60.0, "peak_gpu_mem_gb": 20.0, "params_m": 38.9, "git_sha": "0" * 40,
        "container": None, "created_at": "2025-01-01T00:00:00+0000", "throughput": 10.0,
        "selection_split": "val", "selection_cases": [f"V{i:04d}" for i in range(4)],
        "selection_dice": round(level + rng.normal(0, 0.02), 4),
        "hd95_unit": "mm" if dataset == "btcv" else "px", "hparams": {"lr": 1e-4, "epochs": 100},
        "checkpoint": {"select": "best", "epoch": 90, "validated": True},
    }
    if dataset == "btcv":
        data["dice_mean_per_slice"] = min(1.0, data["dice_mean"] + 0.04)
        data["per_class_per_slice"] = {k: min(1.0, v + 0.04) for k, v in per_class.items()}
    return data


def fabricate(study: Path, n_runs: int) -> None:
    """``n_runs`` run dirs: 97% completed, 2% failed (no metrics), 1% malformed metrics.json."""
    rng = np.random.default_rng(0)
    combos = itertools.cycle(GROUPS)
    for i in range(n_runs):
        model, variant, dataset, prompt = next(combos)
        seed = i // len(GROUPS)
        run = study / f"{model}_{variant}_{dataset}_{prompt}_s{seed}"
        run.mkdir(parents=True)
        task = {"model": model, "variant": variant, "dataset": dataset, "prompt": prompt, "seed": seed,
                "data_path": f"./data/{dataset}", "output_root": str(study.parent), "study": "bench"}
        (run / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
        if i % 50 == 7:
            state = {"state": "failed", "attempts": 1,
                     "error": "Traceback...\nRuntimeError: CUDA out of memory"}
            (run / "status.json").write_text(json.dumps(state))
            continue
        metrics = _metrics(model, variant, dataset, prompt, seed, rng)
        if i % 100 == 11:
            del metrics["per_case"]
        (run / "metrics.json").write_text(json.dumps(metrics))
        (run / "status.json").write_text(json.dumps({"state": "completed", "attempts": 1}))


def _max_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or its largest finished child) so far; Linux reports KiB."""
    return resource.getrusage(who).ru_maxrss / 1024


def _children_cpu_s() -> float:
    """CPU seconds of finished child processes: the collector's reading workers, for large studies."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--formats", default="md,csv,tex")
    parser.add_argument("--keep", type=Path, help="fabricate here and keep it (default: a temp dir)")
    parser.add_argument("--workers", type=int, help="collector processes (default: automatic; 1: serial)")
    args = parser.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench_collect_"))
    study = tmp / "bench"
    try:
        t0 = time.perf_counter()
        if not study.exists():
            fabricate(study, args.runs)
        fabricate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        from medsam2_hpc.report import collect_study

        import_s = time.perf_counter() - t0
        rss_before = _max_rss_mb()
        t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu_s()
        report = collect_study(study, tmp / "out", args.formats, with_published=True, workers=args.workers)
        collect_s, collect_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        children_cpu_s = _children_cpu_s() - k0
        result = {
            "benchmark": "bench_collect", "runs": args.runs, "formats": args.formats,
            "workers": report.workers,
            "runs_in_tables": int(report.study.runs["ok"].sum()), "warnings": len(report.warnings),
            "case_scores": sum(len(ids) for ids, _ in report.study.cases.values()),
            "class_rows": len(report.study.classes),
            "fabricate_s": round(fabricate_s, 2), "import_s": round(import_s, 2),
            "collect_s": round(collect_s, 2),
            "collect_cpu_s": round(collect_cpu_s, 2), "collect_cpu_workers_s": round(children_cpu_s, 2),
            "torch_imported": "torch" in sys.modules, "load_avg_1m": round(os.getloadavg()[0], 2),
            "max_rss_mb_before_collect": round(rss_before, 1), "max_rss_mb": round(_max_rss_mb(), 1),
            "max_rss_mb_worker": round(_max_rss_mb(resource.RUSAGE_CHILDREN), 1),
            "goal_s": 5.0, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        }
        json.dump(result, sys.stdout, indent=2)
        print()
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
