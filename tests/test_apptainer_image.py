"""Our image, built from containers/medsam2.def and run by the real Apptainer.

The Apptainer is the real 1.4.5 from Debian's archive, hosted in its own Debian-unstable root
because Debian 12 has none (tests/real_apptainer.py); the image is built with
``medsam2-hpc container build --bootstrap debootstrap`` (no Docker Hub here) once per input hash
and cached outside the checkout. Processes in the container run as that Apptainer's unprivileged
user, so the tests hand it their output directories and submit with an open umask, as a group
shares a study directory on a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from io import StringIO
from pathlib import Path

import pytest

from medsam2_hpc import __version__, spec
from medsam2_hpc.cli import main
from medsam2_hpc.contract import validate_metrics
from medsam2_hpc.hpc import containers, image, launcher

from . import real_apptainer as real_apptainer_host

pytestmark = [pytest.mark.apptainer, pytest.mark.slow]


def apptainer(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run from /: Apptainer's user must be able to open the working directory (a test's is 0700)."""
    return subprocess.run(["apptainer", *args], capture_output=True, text=True, timeout=timeout, cwd="/")


@contextmanager
def shared_umask():
    """Files and directories the host makes stay writable by the container's user."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_real_apptainer_is_the_hosted_1_4_5(apptainer_on_path):
    assert apptainer("--version").stdout.strip() == "apptainer version 1.4.5"


def test_built_image_passes_its_test_and_carries_our_labels(medsam2_image, apptainer_on_path):
    test = apptainer("test", str(medsam2_image))
    assert test.returncode == 0, test.stdout[-2000:] + test.stderr[-2000:]
    assert "imports ok" in test.stdout and "hiera-t ok (1, 256, 64, 64)" in test.stdout
    inspect = apptainer("inspect", "--labels", str(medsam2_image))
    labels = dict(line.split(": ", 1) for line in inspect.stdout.splitlines() if ": " in line)
    assert labels["org.opencontainers.image.version"] == __version__
    # the commit it was built from: HEAD, or an earlier one whose image sources are the same
    revision = real_apptainer_host.image_record(medsam2_image)["revision"]
    assert labels["org.opencontainers.image.revision"] == revision
    commit = revision.removesuffix("-dirty") + "^{commit}"
    git = subprocess.run(["git", "-C", str(containers.REPO_ROOT), "cat-file", "-e", commit],
                         capture_output=True)
    assert git.returncode == 0, f"label {revision!r} is no commit of this repository"
    assert labels["org.opencontainers.image.base.name"] == "debian:bookworm"  # the deps layer's
    definition = containers.DEF_PATH.read_text()
    assert labels[containers.DEPS_LABEL] == containers.deps_key(definition)  # built on today's deps layer
    probe = apptainer("exec", str(medsam2_image), "python", "-c",
                      "import medsam2_hpc, torch; print(medsam2_hpc.__file__); print(torch.version.cuda)")
    where, cuda = probe.stdout.split()
    assert where.startswith("/usr/local/lib/python3.11/dist-packages/medsam2_hpc/")  # the image's copy
    assert cuda != "None"  # PyPI's CUDA-enabled torch wheels


def test_package_layer_refuses_a_deps_image_of_another_definition(medsam2_image, apptainer_on_path,
                                                                   tmp_path, capsys):
    """`container build --base` reads the base's medsam2.deps label with the real `apptainer inspect`
    and stops before building when the definition's dependency part has changed since."""
    deps = Path(real_apptainer_host.image_record(medsam2_image)["deps"]["image"])
    changed = tmp_path / "repo" / "containers" / "medsam2.def"
    changed.parent.mkdir(parents=True)
    changed.write_text(containers.DEF_PATH.read_text().replace("export YOLO_OFFLINE=1",
                                                               "export YOLO_OFFLINE=1\n    export EXTRA=1"))
    out = tmp_path / "never.sif"
    assert main(["container", "build", "--fakeroot", "--base", str(deps), "--def", str(changed),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--base: {deps} was not built with --deps-only from this definition's requirements" in err
    assert f"{containers.DEPS_LABEL} {containers.deps_key(containers.DEF_PATH.read_text())}," in err
    assert not out.exists()


def shared_copy(data: Path, tmp_path: Path, host: real_apptainer_host.RealApptainer) -> Path:
    """A copy of a session data set that the container's user may read (pytest's dirs are 0700)."""
    copy = Path(shutil.copytree(data, tmp_path / "data"))
    host.share(copy)
    return copy


def write_study(tmp_path: Path, image: Path, data: Path, *, executor: str, hparams: dict,
                profile: str = "{cpus: 1, mem: 2G, time: 10}") -> spec.Study:
    runs = tmp_path / "runs"
    runs.mkdir()
    text = (f"output_root: {runs}\nexecutor: {executor}\n"
            f"container: {{runtime: apptainer, image: {image}}}\n"
            f"profiles:\n  cpu: {profile}\ndefaults: {{profile: cpu}}\n"
            "studies:\n  img:\n    experiments:\n"
            f"      - {{model: resnet, variants: [resnet18], dataset: refuge, data_path: {data},"
            f" seeds: [0], hparams: {json.dumps(hparams)}}}\n")
    (tmp_path / "jobs.yaml").write_text(text)
    return spec.load(tmp_path / "jobs.yaml")


HPARAMS = {"epochs": 1, "image_size": 64, "batch_size": 2, "num_workers": 0, "device": "cpu", "amp": "none"}


def test_image_runs_a_resnet_task_as_the_launcher_renders_it(
        medsam2_image, apptainer_on_path, refuge_multirater, tmp_path, monkeypatch):
    data = shared_copy(refuge_multirater, tmp_path, apptainer_on_path)
    study = write_study(tmp_path, medsam2_image, data, executor="local", hparams=HPARAMS)
    (task,) = study.tasks
    apptainer_on_path.share(study.output_root)
    monkeypatch.chdir(study.output_root)  # the job starts here: the container's user must read it
    argv = launcher.python_argv(study, study.profiles["cpu"], study.tasks, launcher.LocalBackend(),
                                study.study_dir / ".submitit")
    assert argv[1:4] == ["apptainer", "exec", "--cleanenv"] and argv[-2:] == [str(medsam2_image), "python"]
    # a host PYTHONPATH must not reach the image (exec --cleanenv): this one, on a path bound into
    # the image, would break the import
    leak = study.output_root / "host-site" / "medsam2_hpc"
    leak.mkdir(parents=True)
    (leak / "__init__.py").write_text("raise ImportError('the host PYTHONPATH reached the image')\n")
    apptainer_on_path.share(leak.parent)
    monkeypatch.setenv("PYTHONPATH", str(leak.parent))
    with shared_umask():
        launch = launcher.submit(study, out=StringIO())
    logs = "".join(p.read_text(errors="replace") for p in study.study_dir.glob(".submitit/**/*_log.*"))
    assert launch.errors == [], logs[-3000:]
    metrics = json.loads(task.run_dir.metrics_json.read_text())
    assert validate_metrics(metrics) == [] and metrics["model"] == "resnet"
    assert metrics["container"]["image"] == str(medsam2_image)  # Apptainer's own record of the image
    # the digest the launcher passed, and the commit the build stamped (the image's copy has no .git)
    assert metrics["container"]["digest"] == image.read_record(medsam2_image).digest
    revision = real_apptainer_host.image_record(medsam2_image)["revision"]
    assert metrics["git_sha"] == (None if revision == "unknown" else revision)
    assert task.run_dir.metrics_json.stat().st_uid == apptainer_on_path.uid  # written from inside
