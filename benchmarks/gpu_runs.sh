#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md, on a machine with one CUDA GPU and PyTorch (no Ray there):
#   WHEELS=.wheels bash benchmarks/gpu_runs.sh OUT_DIR [smoke|full]
# WHEELS: a folder of wheels to install first (deepspeed and what it needs beyond PyTorch), if any.
# smoke: tiny only (plain bf16 and ZeRO-2); full: tiny plus the llava15-7b shapes with random weights
# under ZeRO-2, ZeRO-3 and ZeRO-3 with CPU offload (plain fp32 masters + autocast of 7B OOM at batch 4 on 80 GB). Each run's output -> OUT_DIR/<name>.txt.
set -uo pipefail
out=${1:?OUT_DIR}; mode=${2:-full}
py=${PYTHON:-python3}
mkdir -p "$out"
if [[ -n "${WHEELS:-}" ]]; then $py -m pip install -q --no-deps "$WHEELS"/*.whl 2>&1 | tail -2; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$py -c "import torch, deepspeed, transformers, peft; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1 | tail -1 | tee -a "$out/gpu.txt"
run() {  # name, then model_step.py's arguments
  local name=$1; shift
  echo "== $name: $*" | tee "$out/$name.txt"
  local t0=$SECONDS
  PYTHONPATH=. $py benchmarks/model_step.py --device cuda "$@" >>"$out/$name.txt" 2>&1
  echo "exit $? after $((SECONDS - t0)) s" >>"$out/$name.txt"
  grep -E "parameters|ms/step|GFLOP|peak memory|Error|exit" "$out/$name.txt" | grep -v Warning
}
run tiny_bf16 --preset tiny --dtype bf16 --batch 32 --steps 20
run tiny_zero2 --preset tiny --dtype bf16 --batch 32 --steps 20 --deepspeed zero2
[[ $mode == smoke ]] && exit 0
big=(--preset llava15-7b --random --dtype bf16 --recipe finetune --batch 4 --steps 5)
run 7b_lora_zero2 "${big[@]}" --deepspeed zero2
run 7b_lora_zero3 "${big[@]}" --deepspeed zero3
run 7b_align_zero2 --preset llava15-7b --random --dtype bf16 --recipe align --batch 4 --steps 5 --deepspeed zero2
run 7b_lora_zero3_offload "${big[@]}" --deepspeed zero3_offload
