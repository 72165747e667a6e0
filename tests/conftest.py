"""Shared fixtures: small synthetic datasets in the real on-disk layouts, made once per session.

Each fixture returns the root directory to pass to the loaders (and to ``-data_path``).
Sizes are small on purpose (128 px REFUGE images, 20 x 96 x 96 BTCV volumes) so every test
file can use them on a shared CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medsam2_hpc.data import synthetic


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
