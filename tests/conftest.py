"""Shared fixtures, and the guard that keeps the suite away from a user's checkout and jobs.

Datasets: small synthetic ones in the real on-disk layouts, made once per session. Each fixture
returns the root directory to pass to the loaders (and to ``-data_path``). Sizes are small on
purpose (128 px REFUGE images, 20 x 96 x 96 BTCV volumes) so every test file can use them on a
shared CPU.

The guard (tests/README.md): every test runs in its own temporary working directory; for the
whole session, each cluster command found on PATH (sbatch, scancel, ..., apptainer) is shadowed
by a stand-in that records the call and refuses, except that a Slurm command runs for real
against the test cluster of tests/slurm/conftest.py; at the end, the session fails when a call
was recorded or when the checkout changed (``git status`` before and after).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from medsam2_hpc.data import synthetic

from . import real_apptainer as real_apptainer_host

ROOT = Path(__file__).resolve().parents[1]
# Programs that could touch a user's jobs or start a long build; daemons are started only by
# tests/slurm/conftest.py, in its own directory.
SLURM_COMMANDS = ("sbatch", "srun", "salloc", "squeue", "scancel", "scontrol", "sacct", "sinfo")
# No test may reach an image runtime found on PATH; the `apptainer` tests use their own, hosted in
# a root of its own and run as an unprivileged user (tests/real_apptainer.py), put on PATH per test.
IMAGE_COMMANDS = ("apptainer", "singularity")
TEST_CLUSTER = "medsam2test"  # ClusterName of the test cluster (tests/slurm/conftest.py)
IGNORED_PARTS = frozenset((".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"))

GUARD_STANDIN = """#!/bin/bash
# Stand-in for {name}, first on PATH for the whole test session (tests/conftest.py, the guard).
# It records the call for the end-of-session check and refuses, so no test reaches a real
# cluster or image build{passthrough_note}.
{passthrough}printf '%s\\n' "{name} $* (cwd $PWD)" >> {log}
echo "{name}: refused by the test guard: called outside the test sandbox (see tests/README.md)" >&2
exit 1
"""
# Slurm commands only: the real one runs when SLURM_CONF names the test cluster.
PASSTHROUGH = """if [ -n "$SLURM_CONF" ] && grep -qx 'ClusterName={cluster}' "$SLURM_CONF" 2>/dev/null; then
    exec {real} "$@"
fi
"""


def _checkout_state(root: Path) -> set[str] | None:
    """``git status`` lines of the checkout, ignored paths included, caches and .venv left out.

    None when this is not a git checkout (an unpacked sdist): nothing to compare against.
    """
    if shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all",
                          "--ignored=matching"], capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        return None
    return {line for line in out.stdout.splitlines()
            if not IGNORED_PARTS & set(Path(line[3:].strip('"').rstrip("/")).parts)}


def install_guard(guard_dir: Path, path: str) -> tuple[str, Path]:
    """Stand-ins for the cluster commands on ``path``; returns the new PATH and the calls log."""
    bin_dir = guard_dir / "bin"
    bin_dir.mkdir(parents=True)
    log = guard_dir / "calls.log"
    for name in SLURM_COMMANDS + IMAGE_COMMANDS:
        real = shutil.which(name, path=path)
        if real is None:  # nothing to protect; a test that needs it sees it missing, as before
            continue
        slurm = name in SLURM_COMMANDS
        passthrough = PASSTHROUGH.format(real=shlex.quote(real), cluster=TEST_CLUSTER) if slurm else ""
        note = " (the real one runs only where SLURM_CONF names the test cluster)" if slurm else ""
        standin = bin_dir / name
        standin.write_text(GUARD_STANDIN.format(name=name, passthrough=passthrough, passthrough_note=note,
                                                log=shlex.quote(str(log))))
        standin.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{path}", log


def pytest_sessionstart(session: pytest.Session) -> None:
    guard_dir = Path(tempfile.mkdtemp(prefix="medsam2-test-guard-"))
    os.environ["PATH"], log = install_guard(guard_dir, os.environ.get("PATH", os.defpath))
    session.config.stash[_GUARD] = (guard_dir, log, _checkout_state(ROOT))


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `apptainer` run last, and the image they need starts building in the
    background now (`python -m tests.real_apptainer`; half an hour when its dependency layer is
    not cached), so that the build overlaps the rest of the suite instead of adding to it."""
    image_tests = [item for item in items if item.get_closest_marker("apptainer")]
    if not image_tests or config.option.collectonly:
        return
    items[:] = [item for item in items if not item.get_closest_marker("apptainer")] + image_tests
    if os.geteuid() != 0 or real_apptainer_host.missing_host_tools():
        return  # the fixtures say why: a skip, or with CI=true a failure
    fd, log = tempfile.mkstemp(prefix="medsam2-image-build-", suffix=".log")
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.real_apptainer"], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    config.stash[_IMAGE_BUILD] = (proc, Path(log))


def _stop_image_build(config: pytest.Config) -> None:
    """A background build still running when the session ends (it stopped early): interrupt it
    (SIGINT, so that `container build` removes its scratch files from the checkout). Its log
    stays only when the build failed (the failing test names it)."""
    proc, log = config.stash.get(_IMAGE_BUILD, (None, None))
    if proc is None:
        return
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode == 0:
        log.unlink(missing_ok=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when a test called a cluster command outside its sandbox or changed
    the checkout; the lines say which."""
    _stop_image_build(session.config)
    if _GUARD not in session.config.stash:
        return
    guard_dir, log, before = session.config.stash[_GUARD]
    problems = [f"cluster command called outside the test sandbox: {line}"
                for line in (log.read_text().splitlines() if log.exists() else [])]
    after = _checkout_state(ROOT) if before is not None else None
    if before is not None and after is not None:
        problems += [f"checkout changed by the tests: {line}" for line in sorted(after - before)]
        problems += [f"checkout changed by the tests: {line} (gone)" for line in sorted(before - after)]
    shutil.rmtree(guard_dir, ignore_errors=True)
    session.config.stash[_PROBLEMS] = problems
    if problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The guard's findings, after the test summary (pytest_sessionfinish has run by then)."""
    problems = config.stash.get(_PROBLEMS, [])
    if problems:
        terminalreporter.section("test guard", sep="=", red=True)
        for line in problems:
            terminalreporter.write_line(f"test guard: {line}", red=True)


_GUARD = pytest.StashKey[tuple[Path, Path, "set[str] | None"]]()
_IMAGE_BUILD = pytest.StashKey[tuple[subprocess.Popen, Path]]()
_PROBLEMS = pytest.StashKey[list[str]]()


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path: Path) -> Iterator[None]:
    """Every test starts in its own temporary directory, so relative outputs (runs/, logs/,
    Ultralytics' runs/segment) land there. The checkout stays importable for the subprocesses
    tests start (``python -m`` from the checkout gave them that). A MonkeyPatch of its own, so a
    test's ``monkeypatch.undo()`` does not take the test back to the checkout."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
        yield


@pytest.fixture(scope="session")
def refuge_multirater(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """REFUGE multi-rater layout: 4 train + 2 test cases, 7 rater cup masks each."""
    return synthetic.make_refuge(tmp_path_factory.mktemp("refuge_multirater"), "multirater",
                                 n_train=4, n_test=2, size=128, seed=0)


@pytest.fixture(scope="session")
def refuge_challenge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """REFUGE challenge layout: 4 train + 2 validation images with 0/128/255 BMP masks."""
    return synthetic.make_refuge(tmp_path_factory.mktemp("refuge_challenge"), "challenge",
                                 n_train=4, n_test=2, size=128, seed=1)


@pytest.fixture(scope="session")
def btcv_slices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BTCV preprocessed layout: 4 Training + 2 Test cases of 20 slices, 96 px, organs 1, 2, 3, 6."""
    return synthetic.make_btcv(tmp_path_factory.mktemp("btcv_slices"), "slices",
                               n_train=4, n_test=2, depth=20, size=96, seed=0)


@pytest.fixture(scope="session")
def btcv_nifti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BTCV raw layout: imagesTr/labelsTr .nii.gz (LPS affine) + dataset_0.json, 4 train + 2 val."""
    return synthetic.make_btcv(tmp_path_factory.mktemp("btcv_nifti"), "nifti",
                               n_train=4, n_test=2, depth=20, size=96, seed=0)


# ---------------------------------------------------------------------------------------------
# A real Apptainer, and our image built with it (tests marked `apptainer`)


def _apptainer_unavailable(reason: str) -> None:
    """Skip outside CI; with CI=true a missing Apptainer fails the run instead of hiding it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"real Apptainer unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"real Apptainer unavailable: {reason}")


@pytest.fixture(scope="session")
def real_apptainer() -> real_apptainer_host.RealApptainer:
    """The real Apptainer 1.4.5 from Debian's archive, hosted in its own Debian-unstable root
    (tests/real_apptainer.py). Tests put it on PATH with :func:`apptainer_on_path`."""
    if os.geteuid() != 0:
        _apptainer_unavailable("hosting it needs root (debootstrap, unshare -m, pivot_root)")
    missing = real_apptainer_host.missing_host_tools()
    if missing:
        _apptainer_unavailable(f"not installed: {', '.join(missing)} (apt-get install debootstrap uidmap)")
    try:
        host = real_apptainer_host.ensure()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _apptainer_unavailable(str(exc))
    return host


@pytest.fixture()
def apptainer_on_path(real_apptainer, monkeypatch) -> real_apptainer_host.RealApptainer:
    """The hosted Apptainer first on PATH for one test (and the jobs it submits), without the
    checkout on PYTHONPATH: Apptainer passes the environment in, and the image must use its own
    medsam2_hpc."""
    monkeypatch.setenv("PATH", f"{real_apptainer.bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    return real_apptainer


@pytest.fixture(scope="session")
def medsam2_image(request: pytest.FixtureRequest, real_apptainer: real_apptainer_host.RealApptainer) -> Path:
    """containers/medsam2.def built by `medsam2-hpc container build`, in two layers: the
    dependencies (`--deps-only --bootstrap debootstrap`), then our package (`--base`).

    Both are cached outside the checkout by the hash of what goes in (tests/real_apptainer.py),
    so CI right after a session reuses them; usually only the package layer is built (minutes).
    """
    background = request.config.stash.get(_IMAGE_BUILD, None)
    if background is not None:  # started at collection (pytest_collection_modifyitems)
        proc, log = background
        if proc.wait() != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            pytest.fail(f"background image build failed ({log}):\n{tail}", pytrace=False)
    image = real_apptainer_host.image_path(real_apptainer)
    if not image.exists():
        log = image.with_suffix(".log")
        try:
            real_apptainer_host.build_image(real_apptainer, image, log)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
    return image
