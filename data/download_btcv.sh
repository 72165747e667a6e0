#!/usr/bin/env bash
# Download the preprocessed BTCV copy Medical-SAM2 uses (13 abdominal organs, per-slice JPEG
# images and .npy label maps) and unzip it into data/btcv (see data/README.md for the layout).
#
#   bash data/download_btcv.sh [--dir DIR] [--keep-zip]
#
# Resumable: run it again after an interruption. Fails with a clear message when offline.
# Environment: MEDSAM2_BTCV_URL (a mirror of btcv.zip), MEDSAM2_DATA_MIN_BYTES (default 1 MB).
set -euo pipefail
# shellcheck source=fetch_dataset.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fetch_dataset.sh"  # fetch_dataset, fetch, die

fetch_dataset "${MEDSAM2_BTCV_URL:-https://huggingface.co/datasets/jiayuanz3/btcv/resolve/main/btcv.zip}" btcv Training Test -- "$@"
