#!/usr/bin/env bash
# Download the preprocessed BTCV copy Medical-SAM2 uses (13 abdominal organs, per-slice JPEG
# images and .npy label maps) and unzip it into data/btcv (see data/README.md for the layout).
#
#   bash data/download_btcv.sh [--dir DIR] [--keep-zip]
#
# Resumable: run it again after an interruption. Fails with a clear message when offline.
# Environment: MEDSAM2_BTCV_URL (a mirror of btcv.zip), MEDSAM2_DATA_MIN_BYTES (default 1 MB).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../checkpoints/download_ckpts.sh
source "$HERE/../checkpoints/download_ckpts.sh"  # fetch, die

URL="${MEDSAM2_BTCV_URL:-https://huggingface.co/datasets/jiayuanz3/btcv/resolve/main/btcv.zip}"
NAME=btcv
EXPECT=(Training Test)

dir="$HERE" keep=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) [[ $# -ge 2 ]] || EXIT_CODE=2 die "--dir needs a value"; dir="$2"; shift ;;
    --keep-zip) keep=1 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) EXIT_CODE=2 die "unknown option $1 (try --help)" ;;
  esac
  shift
done
mkdir -p "$dir"
zip="$dir/$NAME.zip"
fetch "$URL" "$zip" "${MEDSAM2_DATA_MIN_BYTES:-1000000}"
echo "unzipping $zip into $dir"
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$zip" -d "$dir" || die "$zip: not a valid zip archive; delete it and run again"
else
  python3 -m zipfile -e "$zip" "$dir" || die "$zip: not a valid zip archive; delete it and run again"
fi
for sub in "${EXPECT[@]}"; do
  [[ -d "$dir/$NAME/$sub" ]] || die "$dir/$NAME/$sub is missing after unzipping: not the layout data/README.md describes"
done
[[ "$keep" == 1 ]] || rm -f "$zip"
echo "ok       $dir/$NAME ($(find "$dir/$NAME" -type f | wc -l | tr -d ' ') files)"
