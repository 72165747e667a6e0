"""The session guard of tests/conftest.py, on an inner pytest session in a throwaway git checkout.

The inner checkout holds a copy of tests/conftest.py (so its ROOT is that checkout) and the
repository's .gitignore. The cluster command it guards is a stand-in "real" scancel (named so)
that records its calls: the guard must keep the inner tests from reaching it, except with
SLURM_CONF naming the test cluster, whatever Slurm this machine has or lacks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INNER_TESTS = '''
import os
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def test_cancels_a_job_of_the_user():
    subprocess.run(["scancel", "4242"], check=False)


def test_writes_a_run_into_the_checkout():
    (CHECKOUT / "runs" / "main").mkdir(parents=True)


def test_talks_to_the_test_cluster(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=medsam2test\\n")
    subprocess.run(["scancel", "1"], env={**os.environ, "SLURM_CONF": str(conf)}, check=True)


def test_stays_in_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.undo()  # the test's own patches only
    assert Path.cwd() == tmp_path
    Path("runs").mkdir()
'''


def _git(checkout: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(checkout), "-c", "user.name=test", "-c", "user.email=test@localhost",
                    *args], check=True, capture_output=True, timeout=60)


def _inner_session(tmp_path: Path, *select: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    checkout = tmp_path / "checkout"
    (checkout / "tests").mkdir(parents=True)
    for name in ("__init__.py", "conftest.py", "real_apptainer.py"):  # conftest imports its sibling
        shutil.copy2(ROOT / "tests" / name, checkout / "tests" / name)
    shutil.copy2(ROOT / ".gitignore", checkout / ".gitignore")
    (checkout / "tests" / "test_inner.py").write_text(INNER_TESTS)
    _git(checkout, "init", "-q")
    _git(checkout, "add", "-A")
    _git(checkout, "commit", "-q", "-m", "inner")
    real_bin, real_calls = tmp_path / "real-bin", tmp_path / "real.calls"
    real_bin.mkdir()
    (real_bin / "scancel").write_text(f"#!/bin/bash\n# Stand-in for the real scancel (tests/test_guard.py)\n"
                                      f"echo \"scancel $*\" >> '{real_calls}'\n")
    (real_bin / "scancel").chmod(0o755)
    env = {**os.environ, "PATH": f"{real_bin}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SLURM_CONF", None)  # as on a login node: the site's cluster
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"--basetemp={tmp_path / 'basetemp'}", "tests/test_inner.py", *select],
                         cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
    return out, (real_calls.read_text().splitlines() if real_calls.exists() else [])


def test_guard_fails_a_passing_session_that_cancels_a_job_or_changes_the_checkout(tmp_path):
    out, real_calls = _inner_session(tmp_path)
    assert "4 passed" in out.stdout, out.stdout[-3000:]
    assert out.returncode == 1, out.stdout[-3000:]
    guard = sorted(line for line in out.stdout.splitlines() if line.startswith("test guard: "))
    assert guard == ["test guard: checkout changed by the tests: !! runs/",
                     f"test guard: cluster command called outside the test sandbox: scancel 4242 "
                     f"(cwd {tmp_path / 'basetemp' / 'test_cancels_a_job_of_the_user0'})"], out.stdout[-3000:]
    assert real_calls == ["scancel 1"]  # only the call against the test cluster went through


def test_guard_passes_a_session_that_stays_in_its_sandbox(tmp_path):
    out, real_calls = _inner_session(tmp_path, "-k", "test_cluster or own_directory")
    assert out.returncode == 0 and "2 passed" in out.stdout, out.stdout[-3000:]
    assert "test guard" not in out.stdout and real_calls == ["scancel 1"]
