#!/usr/bin/env bash
# The GPU checks behind docs/BENCHMARKS.md "GPU", in one command (a few minutes on one GPU):
#
#     OUT=gpu-out bash bench/gpu_check.sh
#
# Needs streamcell with a CUDA build of torch and the train extra installed (make setup
# TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"). Where a folder .gpu/whl
# holds wheels (a machine with no network), they are installed first into /tmp/site.
# Writes every output under $OUT: the GPU, the device tests, the step benchmark on the GPU
# beside the CPU, Ray Train with --gpu on against --gpu off on the same data and settings,
# and serve --device cuda answering gRPC and /metrics with the model trained on the GPU.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -d .gpu/whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nproc | tee -a "$OUT/gpu.txt"
$PY -c "import torch, ray, streamcell; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__)" | tee -a "$OUT/gpu.txt"

echo "== device tests: the CUDA cases run here (they are skipped without a GPU)"
timeout 150 $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/core/test_device.py \
  tests/core/test_model.py tests/core/test_predictor.py tests/core/test_state.py 2>&1 \
  | tee "$OUT/pytest.txt" | tail -3

echo "== step benchmark, CPU designs and the GPU side by side"
timeout 150 $PY bench/step_bench.py --streams 100000 --rounds 3 --seconds 0.3 --device cuda 2>&1 \
  | tee "$OUT/step.txt"

echo "== Ray Train: --gpu on against --gpu off, same data and settings"
$PY -c "
from streamcell.trainer.synthetic import interleaved, noisy_sines
interleaved(noisy_sines(streams=512, length=600, period=24, noise=0.1, seed=3)).to_csv('/tmp/sines.csv', index=False)"
for mode in on off; do
  start=$(date +%s.%N)
  timeout 170 $PY -m streamcell.cli train --data /tmp/sines.csv --registry "/tmp/reg-$mode" \
    --model sines --workers 1 --gpu $mode --threads 8 --num-cpus 12 --epochs 4 --hidden 256 \
    --layers 2 --window 64 --batch-size 128 --lr 0.003 --json \
    > "$OUT/train_$mode.json" 2> "$OUT/train_$mode.txt"
  rc=$?
  end=$(date +%s.%N)
  echo "gpu=$mode rc=$rc wall_s=$($PY -c "print(round($end - $start, 1))")" | tee -a "$OUT/train_summary.txt"
done

echo "== serve --device cuda: gRPC predictions and /metrics with the model trained on the GPU"
timeout 60 $PY -m streamcell.cli serve --registry /tmp/reg-on --model sines --device cuda \
  --grpc-port 50051 --grpc-host 127.0.0.1 --metrics-port 9109 > "$OUT/serve_log.txt" 2>&1 &
for _ in $(seq 1 60); do
  $PY -c "import socket; socket.create_connection(('127.0.0.1', 50051), 1)" 2>/dev/null && break
  sleep 0.5
done
$PY -c "
import json, math
for t in range(48):
    for s in ('s0', 's1', 's2'):
        print(json.dumps({'stream': s, 'x': [math.sin(2 * math.pi * (t + int(s[1]) * 5) / 24)]}))
" > /tmp/events.jsonl
$PY -m streamcell.cli predict --target 127.0.0.1:50051 --batch 16 /tmp/events.jsonl \
  > "$OUT/serve_predict.txt" 2>&1
echo "predict rc=$?"
tail -3 "$OUT/serve_predict.txt"
$PY -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9109/metrics').read().decode())" \
  | grep -E '^streamcell_events_total\{outcome="predicted",source="grpc"\}'
kill %1
wait
