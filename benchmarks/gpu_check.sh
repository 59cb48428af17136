#!/usr/bin/env bash
# One short, prepared GPU session: CUDA paths of finetune/evaluate, then the throughput benchmark.
#   PYTHONPATH=. bash benchmarks/gpu_check.sh [OUT_DIR]
# Runs on CPU too (small), so it can be tried before spending device time.
set -uo pipefail
out=${1:-${OUT:-/tmp/chexcut-gpu}}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
log="$out/gpu_check.log"
exec > >(tee -a "$log") 2>&1
if python3 -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  gpu=1; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  size=320; arch=${ARCH:-densenet121}; extra=()
else
  gpu=0; echo "no GPU: small CPU smoke run"; size=64; arch=resnet18; extra=(--quick --images 300)
fi
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"
tmp=$(mktemp -d)
echo "== 1. CUDA paths: phantom -> finetune (fast recipe) -> evaluate"
t0=$(date +%s)
python3 -m chexcut phantom "$tmp/ph" --n 400 --image-size 128 -q &&
python3 -m chexcut finetune resnet18 --drop 1 --weights none --data "$tmp/ph" --out "$tmp/run" --recipe fast \
  --image-size 128 --batch-size 64 --epochs 4 --val-every 1000 --workers 4 --log-every 2 --quiet &&
python3 -c "import json;s=json.load(open('$tmp/run/state.json'));c=json.load(open('$tmp/run/config.json'));print('finetune:',s['status'],s['step'],'steps, best',s['best']['mean_auroc'],c['resolved'])" &&
python3 -m chexcut evaluate "$tmp/run" --data "$tmp/ph" --bootstrap 1000 --json "$out/eval.json" --quiet &&
python3 -c "import json;r=json.load(open('$out/eval.json'));print('evaluate: mean competition',r['mean_competition'])"
echo "step 1 rc=$? in $(( $(date +%s) - t0 )) s"
echo "== 2. throughput benchmark: $arch at $size px (finetune from the cache, and the cost of its per-step sync)"
t0=$(date +%s)
python3 benchmarks/finetune_throughput.py --arch "$arch" --image-size $size --json "$out/throughput_$arch.json" "${extra[@]}"
echo "step 2 rc=$? in $(( $(date +%s) - t0 )) s"
echo "== 3. chexcut bench on the device: latency / throughput / memory per truncation level"
t0=$(date +%s)
if [ $gpu = 1 ]; then
  for a in densenet121 resnet50 efficientnet_b0; do
    python3 -m chexcut bench $a --image-size 320 --batch 1,256 --precision bf16 --channels-last --max-time 2 \
      --json "$out/bench_${a}_bf16.json" -q
    python3 -m chexcut bench $a --image-size 320 --batch 1,64 --precision fp32 --max-time 2 --json "$out/bench_${a}_fp32.json" -q
  done
else
  python3 -m chexcut bench resnet18 --image-size 64 --batch 1,8 --max-time 0.2 --json "$out/bench_resnet18_cpu.json" -q
fi
echo "step 3 rc=$? in $(( $(date +%s) - t0 )) s"
python3 - "$out" <<'PY'
import json, sys, glob
for f in sorted(glob.glob(sys.argv[1] + "/bench_*.json")):
    r = json.load(open(f))
    print(f"{r['arch']} {r['precision']} on {r['device_name']}: " + "; ".join(
        f"d{l['drop']} {l['latency_ms']['median']:.2f} ms, {l['throughput_img_s']:.0f} img/s, {l['peak_mem_mb']:.0f} MB"
        for l in r["levels"]))
PY
