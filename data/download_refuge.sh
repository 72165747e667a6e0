#!/usr/bin/env bash
# Download the REFUGE copy Medical-SAM2 uses (multi-rater optic cup, 400 train + 400 test)
# and unzip it into data/REFUGE (see data/README.md for the layout).
#
#   bash data/download_refuge.sh [--dir DIR] [--keep-zip]
#
# Resumable: run it again after an interruption. Fails with a clear message when offline.
# Environment: MEDSAM2_REFUGE_URL (a mirror of REFUGE.zip), MEDSAM2_DATA_MIN_BYTES (default 1 MB).
set -euo pipefail
# shellcheck source=fetch_dataset.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fetch_dataset.sh"  # fetch_dataset, fetch, die

fetch_dataset "${MEDSAM2_REFUGE_URL:-https://huggingface.co/datasets/jiayuanz3/REFUGE/resolve/main/REFUGE.zip}" REFUGE Training-400 Test-400 -- "$@"
