#!/usr/bin/env bash
# Build the Apptainer image for users who prefer a script; same flags as the command:
#   bash containers/build.sh [--fakeroot] [--sandbox] [--runtime apptainer|singularity]
#                            [--with-checkpoints] [--out IMAGE] [--force]
# Runs from the repository root with the repository's .venv when there is one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -x .venv/bin/medsam2-hpc ]]; then
  exec .venv/bin/medsam2-hpc container build "$@"
fi
command -v medsam2-hpc >/dev/null 2>&1 || {
  echo "build.sh: medsam2-hpc is not installed; run 'make venv' (or pip install -e .) first" >&2; exit 2; }
exec medsam2-hpc container build "$@"
