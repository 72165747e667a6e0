#!/bin/bash
# Train one model under plain Slurm (no Python needed on the login node):
#
#   sbatch slurm/train_slurm.sh <model kind> [train.py flags ...]
#     (the kinds: python -m medsam2_hpc.registry models; today sam2-2d, sam2-3d, resnet, yolo)
#   sbatch --time=2:00:00 --gres=gpu:a100:1 --partition=gpu slurm/train_slurm.sh sam2-3d --variant hiera_t
#   sbatch --array=0-5 slurm/train_slurm.sh sam2-2d --variants hiera_t,hiera_s --seeds 0,1,2
#
# Every #SBATCH line below is a default; the same option on the sbatch command line wins.
# Script options (the rest goes to train.py unchanged):
#   --variants A,B   array element i trains variant i // len(seeds)   (env MEDSAM2_VARIANTS)
#   --seeds 0,1,2    array element i trains seed    i %  len(seeds)   (env MEDSAM2_SEEDS)
#                    in an array without either list, the array index is the seed.
# Environment:
#   MEDSAM2_IMAGE    Apptainer/Singularity image: train inside it (unset: on the host)
#   MEDSAM2_RUNTIME  apptainer | singularity (default: whichever is installed)
#   MEDSAM2_BIND     extra bind paths for the container, comma separated (data, outputs)
#   MEDSAM2_ROOT     directory holding train.py (default: the directory sbatch ran in)
#   MEDSAM2_PYTHON   python to run (default: python)
#   MEDSAM2_CACHE    writable cache dir bound into the container (default: ./.cache/medsam2)
#   MEDSAM2_MAX_REQUEUES  stop requeueing after this many restarts (default: 20)
#   MEDSAM2_DRY_RUN  set: print the command it would run and exit
#
# Preemption and time limits: Slurm sends USR2 to this shell 120 s before the end; it is
# forwarded to train.py, which saves last.pt and exits 75 ("requeue me"). This shell, which
# runs on the host where scontrol exists even when train.py runs in a container, then
# requeues the job; --requeue restarts this script and train.py resumes from last.pt.
#
#SBATCH --job-name=medsam2
#SBATCH --time=24:00:00
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --requeue
#SBATCH --signal=B:USR2@120
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
##SBATCH --partition=gpu      (default: the cluster's default partition; pass --partition=...)
set -euo pipefail

EXIT_REQUEUE=75   # medsam2_hpc.errors.EXIT_REQUEUE
log() { echo "[train_slurm $(date '+%F %T')] $*" >&2; }
die() { echo "train_slurm.sh: error: $*" >&2; exit 2; }

root="${MEDSAM2_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
[[ -f "$root/train.py" ]] || die "MEDSAM2_ROOT: no train.py in '$root'"
python="${MEDSAM2_PYTHON:-python}"

# The model kinds come from medsam2_hpc's registry. A host python that cannot import it (the
# package lives only in the image) leaves the check to train.py, which exits 2 the same way.
model="${1:-}"
known=$(PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -m medsam2_hpc.registry models 2>/dev/null) \
  || known=""
if [[ -z "$model" || "$model" == -* ]] || { [[ -n "$known" ]] && ! grep -qxF -- "$model" <<< "$known"; }; then
  die "first argument must be the model kind${known:+: one of ${known//$'\n'/, }} (got '${model}')"
fi
shift

variants="${MEDSAM2_VARIANTS:-}"
seeds="${MEDSAM2_SEEDS:-}"
train_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --variants) [[ $# -ge 2 ]] || die "--variants needs a value"; variants="$2"; shift 2 ;;
    --variants=*) variants="${1#*=}"; shift ;;
    --seeds) [[ $# -ge 2 ]] || die "--seeds needs a value"; seeds="$2"; shift 2 ;;
    --seeds=*) seeds="${1#*=}"; shift ;;
    *) train_args+=("$1"); shift ;;
  esac
done

# Array element -> (variant, seed): index i walks the variants x seeds grid, seeds fastest.
if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  IFS=',' read -r -a variant_list <<< "$variants"
  IFS=',' read -r -a seed_list <<< "$seeds"
  index="$SLURM_ARRAY_TASK_ID"
  if [[ ${#variant_list[@]} -eq 0 && ${#seed_list[@]} -eq 0 ]]; then
    train_args+=(--seed "$index")
  else
    n_seeds=$(( ${#seed_list[@]} > 0 ? ${#seed_list[@]} : 1 ))
    n_variants=$(( ${#variant_list[@]} > 0 ? ${#variant_list[@]} : 1 ))
    (( index < n_seeds * n_variants )) \
      || die "SLURM_ARRAY_TASK_ID=$index is past the $n_variants variant(s) x $n_seeds seed(s) grid"
    if [[ ${#variant_list[@]} -gt 0 ]]; then
      train_args+=(--variant "${variant_list[index / n_seeds]}")
    fi
    if [[ ${#seed_list[@]} -gt 0 ]]; then
      train_args+=(--seed "${seed_list[index % n_seeds]}")
    fi
  fi
elif [[ -n "$variants$seeds" ]]; then
  log "not an array job: --variants/--seeds ignored (submit with --array=0-N)"
fi

cmd=("$python" "$root/train.py" --model "$model" "${train_args[@]}")

if [[ -n "${MEDSAM2_IMAGE:-}" ]]; then
  runtime="${MEDSAM2_RUNTIME:-}"
  if [[ -z "$runtime" ]]; then
    runtime=$(command -v apptainer >/dev/null 2>&1 && echo apptainer || echo singularity)
  fi
  case "$runtime" in apptainer|singularity) ;; *) die "MEDSAM2_RUNTIME must be apptainer or singularity";; esac
  [[ -f "$MEDSAM2_IMAGE" || -n "${MEDSAM2_DRY_RUN:-}" ]] || die "MEDSAM2_IMAGE: no such file '$MEDSAM2_IMAGE'"
  # The image is read-only: every cache a library writes goes to a bound host directory.
  cache="${MEDSAM2_CACHE:-$PWD/.cache/medsam2}"
  env_prefix="$(echo "$runtime" | tr '[:lower:]' '[:upper:]')ENV_"
  for pair in TORCH_HOME=torch HF_HOME=huggingface MPLCONFIGDIR=matplotlib \
              XDG_CACHE_HOME=xdg YOLO_CONFIG_DIR=ultralytics; do
    [[ -n "${MEDSAM2_DRY_RUN:-}" ]] || mkdir -p "$cache/${pair#*=}"
    export "${env_prefix}${pair%%=*}=$cache/${pair#*=}"
  done
  # --cleanenv: a host PYTHONPATH or LD_LIBRARY_PATH must not reach the image's python; what the job
  # reads goes in by name (the same names as medsam2_hpc.hpc.requeue.PASS_ENV, plus the checkpoints).
  passed=()
  for name in $(compgen -e); do
    case "$name" in
      SLURM_*|SUBMITIT_*|MASTER_ADDR|MASTER_PORT|RANK|LOCAL_RANK|WORLD_SIZE|LOCAL_WORLD_SIZE|CUDA_VISIBLE_DEVICES|NCCL_*|MEDSAM2_GPUS|MEDSAM2_CHECKPOINTS)
        export "$env_prefix$name=${!name}"; passed+=("$name");;
    esac
  done
  log "into the image (--cleanenv): ${passed[*]:-nothing from the host}"
  container=("$runtime" exec --cleanenv)
  # --nv only when Slurm gave this job GPUs: it fails on hosts without a driver.
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" && "${CUDA_VISIBLE_DEVICES}" != "NoDevFiles" ]]; then
    container+=(--nv)
  fi
  container+=(--bind "$root" --bind "$cache" --pwd "$PWD")
  if [[ "$PWD" != "$root" ]]; then container+=(--bind "$PWD"); fi
  IFS=',' read -r -a extra_binds <<< "${MEDSAM2_BIND:-}"
  for bind in "${extra_binds[@]}"; do
    if [[ -n "$bind" ]]; then container+=(--bind "$bind"); fi
  done
  cmd=("${container[@]}" "$MEDSAM2_IMAGE" "${cmd[@]}")
fi

log "job ${SLURM_JOB_ID:-none} array ${SLURM_ARRAY_TASK_ID:-none} restart ${SLURM_RESTART_COUNT:-0} on $(hostname)"
log "command: $(printf '%q ' "${cmd[@]}")"
if [[ -n "${MEDSAM2_DRY_RUN:-}" ]]; then
  exit 0
fi

# Run the trainer as a child so this shell can forward Slurm's signals to it and act on its
# exit code afterwards (a shell blocked in a foreground command does not run its traps).
child=""
forward() { [[ -n "$child" ]] && kill -s "$1" "$child" 2>/dev/null || true; }
trap 'forward USR2' USR2
trap 'forward TERM' TERM
"${cmd[@]}" &
child=$!
while kill -0 "$child" 2>/dev/null; do
  wait "$child" || true   # returns early whenever a trapped signal arrives
done
set +e
wait "$child"
rc=$?
set -e

if [[ $rc -eq $EXIT_REQUEUE ]]; then
  restarts="${SLURM_RESTART_COUNT:-0}"
  if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    log "stopped (exit $rc) outside Slurm: rerun the same command to resume"
  elif (( restarts >= ${MEDSAM2_MAX_REQUEUES:-20} )); then
    log "stopped (exit $rc) after $restarts restarts: not requeueing again (MEDSAM2_MAX_REQUEUES)"
  else
    job="${SLURM_JOB_ID}"
    [[ -n "${SLURM_ARRAY_JOB_ID:-}" ]] && job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    log "stopped to be resumed: scontrol requeue $job"
    # A job Slurm itself requeued (scontrol requeue by an admin, preemption) is no longer
    # running here, and this call then fails harmlessly.
    scontrol requeue "$job" || log "scontrol requeue $job failed (already requeued?)"
    exit 0
  fi
fi
log "train.py exited with $rc"
exit "$rc"
