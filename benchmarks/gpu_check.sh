#!/usr/bin/env bash
# The prepared GPU check: one command for a lent CUDA machine, about 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh            # logs and JSON into $OUT (default benchmarks/results/gpu)
#
# 1. tests/test_cuda.py and the other CUDA-only tests: the same values as on the CPU, no host
#    sync on the fast path, inductor compiles PSL / PSA / ProPosLoss without a graph break;
# 2. bench_losses.py: the PSL table, syncs / graph breaks / eager vs compiled, and whole
#    ResNet-18 training steps (B = 256), BYOL against ProPos, eager and compiled (issue target:
#    ProPos adds under 5 % to the step);
# 3. bench_kmeans.py --synthetic-large: 1,281,167 x 256 (K = 1,000) and 60,000 x 512 (K = 10);
# 4. propos-train on CUDA (digits, 5 epochs), eager and with --compile inductor: does the
#    compiled M-step run on a GPU, and what does it save per epoch (metrics.jsonl time_s)?
# It needs torch with CUDA, numpy, scipy, scikit-learn, pytest and hypothesis (the device
# image has them); the package is used from the checkout (PYTHONPATH), nothing is installed.
# Each step has its own time limit, so one slow step cannot take the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, remember failures
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}

python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'on', torch.cuda.get_device_name())" || exit 2
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv 2>/dev/null || true

step cuda_tests 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/test_cuda.py tests/test_diagnostics.py tests/test_dropin.py tests/test_psa.py -k "cuda or CUDA or generator_on_another_device"
step bench_losses 240 python3 benchmarks/bench_losses.py --device cuda --hot-path --resnet18-step \
    --output "$OUT/bench_losses_cuda.json"
step bench_kmeans 180 python3 benchmarks/bench_kmeans.py --device cuda --synthetic-large \
    --output "$OUT/bench_kmeans_cuda.json"
for mode in none inductor; do
    rm -rf "$OUT/train_$mode"
    step "train_$mode" 150 python3 -m propos_losses.train --device cuda --epochs 5 --compile "$mode" \
        --no-plots --quiet --output-dir "$OUT/train_$mode"
done
python3 - "$OUT" <<'PY' || status=1
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for mode in ("none", "inductor"):
    log = out / f"train_{mode}" / "metrics.jsonl"
    if log.exists():
        times = [r["time_s"] for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "epoch"]
        print(f"train --compile {mode}: epoch seconds {[round(t, 2) for t in times]}")
PY
exit "$status"
