#!/usr/bin/env python
"""Client-side cost of ``medsam2-hpc submit``: expand + submit N tasks, and expansion alone, as JSON.

    python benchmarks/bench_submit.py --tasks 1000 --profiles 4 --expand 10000

The submission goes through the real launcher and submitit's SlurmExecutor; ``sbatch`` and
``srun`` are stand-in scripts put first on PATH (no Slurm needed): the sbatch stand-in records
each call and answers "Submitted batch job N". Reported: ``sbatch_calls`` (must equal the number
of resource profiles: one array each), ``submit_seconds`` (load + validate + expand + pickle +
submit, client side), ``expand_seconds`` for ``--expand`` tasks (validation and expansion only).
Nothing is trained: every task has its own run directory under a temporary output root.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import submitit

from medsam2_hpc import spec
from medsam2_hpc.hpc import launcher

SBATCH_STANDIN = """#!/bin/bash
# Stand-in for sbatch (benchmark, no Slurm): records the call, answers as sbatch does.
echo "$*" >> "$BENCH_LOG/sbatch.calls"
echo "Submitted batch job $(( 1000 + $(wc -l < "$BENCH_LOG/sbatch.calls") ))"
"""
SRUN_STANDIN = "#!/bin/bash\n# Stand-in for srun (benchmark): submitit only checks that it exists.\nexit 99\n"


def jobs_dict(n_tasks: int, n_profiles: int, data_path: str, output_root: str) -> dict:
    """A study of ``n_tasks`` tasks: one experiment per profile, seeds x a 2-point lr sweep."""
    per_profile = n_tasks // n_profiles
    experiments = []
    for p in range(n_profiles):
        count = per_profile + (1 if p < n_tasks % n_profiles else 0)
        experiments.append({
            "model": "resnet", "variants": ["resnet50"], "dataset": "refuge", "data_path": data_path,
            "profile": f"p{p}", "seeds": list(range(p * 100_000, p * 100_000 + count)),
            "hparams": {"epochs": 1},
        })
    return {
        "output_root": output_root, "executor": "slurm",
        "profiles": {f"p{p}": {"gpus": 1, "cpus": 4, "mem": "16G", "time": "4:00:00",
                               "array_parallelism": 16} for p in range(n_profiles)},
        "studies": {"bench": {"experiments": experiments}},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1000, help="tasks to expand and submit")
    p.add_argument("--profiles", type=int, default=4, help="resource profiles (= expected sbatch calls)")
    p.add_argument("--expand", type=int, default=10_000, help="tasks to expand without submitting")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "data").mkdir()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name, text in (("sbatch", SBATCH_STANDIN), ("srun", SRUN_STANDIN)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        os.environ["BENCH_LOG"] = tmp
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"

        jobs = jobs_dict(args.tasks, args.profiles, str(tmp_path / "data"), str(tmp_path / "runs"))
        t0 = time.perf_counter()
        study = spec.from_dict(jobs, base=tmp_path)
        expand_submit = time.perf_counter() - t0
        launch = launcher.submit(study, out=io.StringIO())
        submit_seconds = time.perf_counter() - t0
        calls = (tmp_path / "sbatch.calls").read_text().splitlines()

        big = jobs_dict(args.expand, args.profiles, str(tmp_path / "data"), str(tmp_path / "runs"))
        t0 = time.perf_counter()
        expanded = spec.from_dict(big, base=tmp_path)
        expand_seconds = time.perf_counter() - t0

    record = {
        "benchmark": "submit",
        "python": platform.python_version(),
        "submitit": submitit.__version__,
        "tasks": len(study.tasks),
        "profiles": args.profiles,
        "sbatch_calls": len(calls),
        "sbatch_calls_equal_profiles": len(calls) == args.profiles,
        "submitted": launch.n_to_run,
        "submit_seconds": round(submit_seconds, 3),
        "validate_expand_seconds": round(expand_submit, 3),
        "submit_ms_per_task": round(1000 * submit_seconds / max(len(study.tasks), 1), 3),
        "expand_tasks": len(expanded.tasks),
        "expand_seconds": round(expand_seconds, 3),
        "expand_us_per_task": round(1e6 * expand_seconds / max(len(expanded.tasks), 1), 1),
    }
    json.dump(record, sys.stdout, indent=2)
    print()
    if not record["sbatch_calls_equal_profiles"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
