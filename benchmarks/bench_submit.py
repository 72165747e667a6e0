#!/usr/bin/env python
"""Client-side cost of ``medsam2-hpc submit`` and ``status`` on a large study, as JSON.

    python benchmarks/bench_submit.py --tasks 10000 --profiles 4 --max-array-size 1001

A jobs.yaml of ``--tasks`` ResNet tasks over ``--profiles`` resource profiles (seeds x an lr
sweep) on a small synthetic REFUGE copy goes through the real CLI in a fresh process
(``medsam2-hpc submit``: load, validate, expand, every task's trainer check with the data check
shared per dataset, pickle, submit), then ``medsam2-hpc status`` reads it back with every task
marked running. ``sbatch``, ``srun``, ``squeue`` and ``sacct`` are stand-in scripts first on PATH
(no Slurm needed): sbatch records each call and answers as sbatch does; squeue and sacct list
every submitted element as RUNNING, which is what they print on a busy cluster.
Reported: ``submit_seconds`` and ``status_seconds`` (wall time of each command, python start-up
and imports included; goals 5 s and 3 s on this machine), their ``*_cpu_seconds`` (user + system:
what the wall time would be on an idle machine, give or take I/O waits) with the load average,
``sbatch_calls`` against ``arrays_needed`` (one per profile and per MaxArraySize elements).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import submitit
import yaml

from medsam2_hpc.data import synthetic

STANDINS = {
    "sbatch": """#!/bin/bash
# Stand-in for sbatch (benchmark, no Slurm): records the call and the array size, answers as sbatch does.
n=$(( 1000 + $(cat "$BENCH_LOG/sbatch.calls" 2>/dev/null | wc -l) + 1 ))
echo "$n $(grep -m1 -o -- '--array=[^ ]*' "${@: -1}")" >> "$BENCH_LOG/sbatch.calls"
echo "Submitted batch job $n"
""",
    "srun": "#!/bin/bash\n# Stand-in for srun (benchmark): submitit only checks that it exists.\nexit 99\n",
    "squeue": """#!/bin/bash
# Stand-in for squeue (benchmark): every submitted element is running.
while read -r job array; do
  last=${array#--array=0-}; last=${last%%%*}
  for ((i = 0; i <= last; i++)); do echo "${job}_${i}|RUNNING|None|1:00:00"; done
done < "$BENCH_LOG/sbatch.calls"
""",
    "sacct": """#!/bin/bash
# Stand-in for sacct (benchmark): accounting agrees with squeue.
while read -r job array; do
  last=${array#--array=0-}; last=${last%%%*}
  for ((i = 0; i <= last; i++)); do echo "${job}_${i}|RUNNING|None|01:00:00"; done
done < "$BENCH_LOG/sbatch.calls"
""",
}


def jobs_dict(n_tasks: int, n_profiles: int, max_array_size: int) -> dict:
    """``n_tasks`` ResNet tasks: one experiment per profile, seeds x a 4-point lr sweep."""
    experiments = []
    for p in range(n_profiles):
        count = n_tasks // n_profiles + (1 if p < n_tasks % n_profiles else 0)
        experiments.append({
            "model": "resnet", "variants": ["resnet50"], "dataset": "refuge", "data_path": "data/REFUGE",
            "profile": f"p{p}", "seeds": list(range(p * 100_000, p * 100_000 + count // 4)),
            "sweep": {"lr": [1e-3, 3e-4, 1e-4, 3e-5][: max(1, min(4, count))]},
            "hparams": {"epochs": 1, "image_size": 64},
        })
    profile = {"gpus": 1, "cpus": 4, "mem": "16G", "time": "4:00:00", "array_parallelism": 16,
               "max_array_size": max_array_size}
    return {"output_root": "runs", "executor": "slurm", "container": {"runtime": "none"},
            "profiles": {f"p{p}": dict(profile) for p in range(n_profiles)},
            "studies": {"bench": {"experiments": experiments}}}


def _timed(argv: list[str], cwd: Path, env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds (user + system, the command and its children), result). On a
    shared machine the wall time grows with the others' load; the CPU time much less."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"{' '.join(argv)} -> {out.returncode}: {out.stderr[-2000:]}")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10_000, help="tasks to submit (a multiple of 4 per profile)")
    p.add_argument("--profiles", type=int, default=4, help="resource profiles")
    p.add_argument("--max-array-size", type=int, default=1001, help="the cluster's MaxArraySize")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthetic.make_refuge(root / "data" / "REFUGE", n_train=4, n_test=2, size=64)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        for name, text in STANDINS.items():
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        (root / "jobs.yaml").write_text(yaml.safe_dump(jobs_dict(args.tasks, args.profiles,
                                                                 args.max_array_size)))
        env = {**os.environ, "BENCH_LOG": tmp, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        cli = [sys.executable, "-m", "medsam2_hpc.cli"]
        submit_seconds, submit_cpu, _ = _timed([*cli, "submit", "jobs.yaml"], root, env)
        calls = (root / "sbatch.calls").read_text().splitlines()
        study_dir = root / "runs" / "bench"
        task_ids = [tid for sub in json.loads((study_dir / "submissions.json").read_text())["submissions"]
                    for tid in sub["tasks"]]
        for task_id in task_ids:  # what a running study looks like: every run has its status.json
            (study_dir / task_id).mkdir(parents=True, exist_ok=True)
            (study_dir / task_id / "status.json").write_text(json.dumps({"state": "running", "attempts": 1}))
        status_seconds, status_cpu, status = _timed([*cli, "status", "jobs.yaml"], root, env)
        counts = status.stdout.strip().splitlines()[-1]

    per_profile = [args.tasks // args.profiles + (1 if i < args.tasks % args.profiles else 0)
                   for i in range(args.profiles)]
    arrays_needed = sum(math.ceil(n / args.max_array_size) for n in per_profile)
    record = {
        "benchmark": "submit",
        "python": platform.python_version(),
        "submitit": submitit.__version__,
        "cpus": os.cpu_count(),
        "tasks": len(task_ids),
        "profiles": args.profiles,
        "max_array_size": args.max_array_size,
        "trainer_checks": True,
        "submit_seconds": round(submit_seconds, 3),
        "submit_cpu_seconds": round(submit_cpu, 3),
        "submit_goal_seconds": 5,
        "sbatch_calls": len(calls),
        "arrays_needed": arrays_needed,
        "status_seconds": round(status_seconds, 3),
        "status_cpu_seconds": round(status_cpu, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "status_goal_seconds": 3,
        "status_summary": counts.split(": ", 1)[-1],
    }
    json.dump(record, sys.stdout, indent=2)
    print()
    if len(calls) != arrays_needed or len(task_ids) != args.tasks:
        sys.exit(1)


if __name__ == "__main__":
    main()
