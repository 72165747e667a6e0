#!/bin/bash
# Train SAM2 Hiera-Tiny, then Hiera-Small (one after the other: they would compete for one GPU).
#
#   slurm/train_both_models.sh [--dim 3d|2d] [--dataset btcv|refuge] [--data-path PATH]
#                              [--batch-size N] [--image-size N] [--high-memory] [--dry-run]
#                              [-- extra train.py flags ...]
#
# With sbatch on PATH both are submitted through slurm/train_slurm.sh, Small depending on Tiny
# (--dependency=afterany: Small runs even if Tiny failed); without Slurm they run here in turn.
# --high-memory: batch 16 for Tiny and 12 for Small (80+ GB GPUs; the default is 1 and 1).
# --dry-run prints the commands and runs nothing. SBATCH_* variables (e.g. SBATCH_PARTITION,
# SBATCH_TIMELIMIT) and MEDSAM2_* variables (see train_slurm.sh) reach the jobs as usual.
set -euo pipefail

die() { echo "train_both_models.sh: error: $*" >&2; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"

dim=3d
dataset=""
data_path=""
image_size=1024
batch_tiny=1
batch_small=1
batch_size=""
high_memory=false
dry_run=false
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dim|--dataset|--data-path|--batch-size|--image-size)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --dim) dim="$2" ;;
        --dataset) dataset="$2" ;;
        --data-path) data_path="$2" ;;
        --batch-size) batch_size="$2" ;;
        --image-size) image_size="$2" ;;
      esac
      shift 2 ;;
    --high-memory) high_memory=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown option '$1' (see --help; pass train.py flags after --)" ;;
  esac
done

case "$dim" in
  3d) model=sam2-3d; : "${dataset:=btcv}"; : "${data_path:=./data/btcv}" ;;
  2d) model=sam2-2d; : "${dataset:=refuge}"; : "${data_path:=./data/REFUGE}" ;;
  *) die "--dim must be 2d or 3d (got '$dim')" ;;
esac
case "$dataset" in btcv|refuge) ;; *) die "--dataset must be btcv or refuge (got '$dataset')" ;; esac
for value in "$image_size" "${batch_size:-1}"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "--batch-size/--image-size must be positive integers (got '$value')"
done
if $high_memory; then batch_tiny=16; batch_small=12; fi
if [[ -n "$batch_size" ]]; then batch_tiny="$batch_size"; batch_small="$batch_size"; fi

common=(--dataset "$dataset" --data-path "$data_path" --image-size "$image_size" "${extra[@]}")
tiny=("$model" --variant hiera_t --batch-size "$batch_tiny" "${common[@]}")
small=("$model" --variant hiera_s --batch-size "$batch_small" "${common[@]}")

show() { local line; line="$(printf '%q ' "$@")"; echo "${line% }"; }

if command -v sbatch >/dev/null 2>&1; then
  export MEDSAM2_ROOT="${MEDSAM2_ROOT:-$root}"   # train_slurm.sh finds train.py here
  first=(sbatch --parsable --job-name=medsam2-tiny "$here/train_slurm.sh" "${tiny[@]}")
  if $dry_run; then
    show "${first[@]}"
    show sbatch --parsable --job-name=medsam2-small --dependency=afterany:JOBID_TINY \
      "$here/train_slurm.sh" "${small[@]}"
    exit 0
  fi
  job_tiny="$("${first[@]}")"
  job_tiny="${job_tiny%%;*}"
  job_small="$(sbatch --parsable --job-name=medsam2-small "--dependency=afterany:$job_tiny" \
    "$here/train_slurm.sh" "${small[@]}")"
  echo "submitted: Tiny job $job_tiny, Small job ${job_small%%;*} (after $job_tiny)"
else
  python="${MEDSAM2_PYTHON:-python}"
  if $dry_run; then
    show "$python" "$root/train.py" --model "${tiny[@]}"
    show "$python" "$root/train.py" --model "${small[@]}"
    exit 0
  fi
  echo "sbatch not found: training locally, Tiny then Small" >&2
  status=0
  "$python" "$root/train.py" --model "${tiny[@]}" || status=$?
  "$python" "$root/train.py" --model "${small[@]}" || status=$?
  exit "$status"
fi
