#!/usr/bin/env bash
# One short GPU session: SAM2 3D training and inference throughput at the issue's settings
# (Hiera-S, 1024 px, bf16, 13 organs; training with the selective recompute and with a full
# one), the memory attention's kernel alone (bench_attention.py: issue 17's shapes, 60 s, the SDPA
# backend that ran) and the ResNet-50 baseline (512 px, bf16), one JSON file per measurement in $OUT
# (default bench_out), with the FLOPs achieved and, for SAM2, the profiler's op table.
#
#   bash benchmarks/gpu_session.sh [extra bench_sam2.py flags]
#
# On a GPU machine without the project's venv, put the pure-Python dependencies (sam2, hydra,
# omegaconf, antlr4, iopath, portalocker, monai, nibabel) in a folder and set GPU_SITE to it.
set -u
out="${OUT:-bench_out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${GPU_SITE:+:$GPU_SITE}${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
bench() {  # bench NAME SCRIPT FLAGS...
  local name="$1" script="$2"; shift 2
  timeout "${BENCH_TIMEOUT:-170}" "$py" "benchmarks/$script" "$@" --out "$out/$name.json" \
    > "$out/$name.log" 2>&1
  echo "$name: exit $? $(tr -d '\n' < "$out/$name.json" 2>/dev/null \
    | grep -o '"[a-z_]*per_s": [0-9.]*\|"peak_mem_gb": [0-9.]*\|"achieved_tflops": [0-9.]*' | tr '\n' ' ')"
}
common=(--config sam2_hiera_s --image-size 1024 --amp bf16 --organs 13)
for att in ${ATTENTIONS:-default}; do  # ATTENTIONS="default cudnn" also tries cuDNN's fused attention
  for name in "train3d_s_13organs_$att" "train3d_s_13organs_${att}_full_recompute" "infer3d_s_13organs_$att"; do
    mode=(--mode train3d --frames 8)
    [[ $name == infer3d* ]] && mode=(--mode infer3d --frames 100)
    [[ $name == *full_recompute ]] && mode+=(--recompute-attention)
    bench "$name" bench_sam2.py "${mode[@]}" "${common[@]}" --attention "$att" --profile "$out/$name.ops.txt" "$@"
  done
done
for att in ${ATTENTIONS:-default}; do
  bench "attention_$att" bench_attention.py --attention "$att" --seconds "${ATTENTION_SECONDS:-60}"
  tr -d "\n " < "$out/attention_$att.json" 2>/dev/null | grep -o '"[a-z]*_v[0-9]*_p[0-9.]*":{[^}]*}' | sed 's/^/  /'
done
if [[ -z "${SKIP_BASELINES:-}" ]]; then
  base=(--variant resnet50 --image-size 512 --batch 8 --amp bf16)
  bench resnet50_train bench_baselines.py --mode resnet-train "${base[@]}"
  bench resnet50_predict bench_baselines.py --mode resnet-predict "${base[@]}"
fi
