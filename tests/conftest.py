"""Shared fixtures: small synthetic datasets in the real on-disk layouts, made once per session.

Each fixture returns the root directory to pass to the loaders (and to ``-data_path``).
Sizes are small on purpose (128 px REFUGE images, 20 x 96 x 96 BTCV volumes) so every test
file can use them on a shared CPU.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from medsam2_hpc.data import synthetic

from . import real_apptainer as real_apptainer_host


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
    """The hosted Apptainer first on PATH for one test (and the jobs it submits)."""
    monkeypatch.setenv("PATH", f"{real_apptainer.bindir}{os.pathsep}{os.environ['PATH']}")
    return real_apptainer


@pytest.fixture(scope="session")
def medsam2_image(real_apptainer: real_apptainer_host.RealApptainer) -> Path:
    """containers/medsam2.def built by `medsam2-hpc container build --bootstrap debootstrap`.

    Cached outside the checkout by the hash of what goes in (the rendered definition, with its
    revision label, and every file its %files copies), so CI right after a session reuses it;
    a machine without it builds it from nothing (measured: see README, "Building the image").
    """
    image = real_apptainer_host.image_path(real_apptainer)
    if not image.exists():
        log = image.with_suffix(".log")
        try:
            real_apptainer_host.build_image(real_apptainer, image, log)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
    return image
