#!/usr/bin/env bash
# Issue 12 on a lent GPU machine, with vLLM 0.26.0 already installed into /tmp/site
# (../shared/gpu/README.md: stage.sh p1..p7, then install.sh). Writes at most 8 files to $OUT.
#
#   bash scripts/gpu_depth.sh fidelity   # (a) ours (text, token ids) vs `vllm bench serve`, one TP=1 server
#   bash scripts/gpu_depth.sh sweep      # (b) concurrency sweep + single stream, TP=1, 16 GB cap, telemetry
#   bash scripts/gpu_depth.sh all        # both, one after the other (compile cache shared)
#
# Environment: MGPU_DEPTH_MODEL (llama-2-7b; both phases), MGPU_FID_ROUNDS (2), MGPU_FID_PROMPTS (48), MGPU_FID_RATE (8), MGPU_DEPTH_LAYOUTS (tp1),
# MGPU_DEPTH_CONCURRENCY (1,2,4,8,16,32,64), MGPU_DEPTH_REPEATS (2), MGPU_GPU_TIMEOUT (seconds per phase, 540).
set -uo pipefail
phase=${1:-all}
out=${OUT:-/tmp/mgpu-out}; mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
limit=${MGPU_GPU_TIMEOUT:-540}
logs=/tmp/mgpu-depth-logs; mkdir -p "$logs"
[ -f "$out/gpus.csv" ] || nvidia-smi --query-gpu=index,name,memory.total,clocks.max.sm,clocks.max.mem,driver_version \
  --format=csv > "$out/gpus.csv" 2>&1
python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >> "$out/gpus.csv" 2>&1

fidelity() {
  local t0; t0=$(date +%s)
  timeout "$limit" python3 benchmarks/fidelity.py --python python3 --model "${MGPU_DEPTH_MODEL:-llama-2-7b}" \
    --rounds "${MGPU_FID_ROUNDS:-2}" --num-prompts "${MGPU_FID_PROMPTS:-48}" --request-rate "${MGPU_FID_RATE:-8}" \
    --input-len 128 --output-len 64 --warmups 4 --log-dir "$logs/fidelity" --json "$out/fidelity.json" \
    2>&1 | tee "$out/fidelity.txt"
  echo "fidelity phase: $(( $(date +%s) - t0 ))s" | tee -a "$out/fidelity.txt"
}

sweep() {
  local t0; t0=$(date +%s)
  timeout "$limit" python3 -m pytest -p pytest_mgpu.plugin -p no:cacheprovider -s scripts/gpu_depth/test_depth.py \
    --mgpu-engine vllm --mgpu-start-timeout 300 --mgpu-repeats "${MGPU_DEPTH_REPEATS:-2}" \
    --mgpu-log-dir "$logs/sweep" --mgpu-json "$out/depth.json" -rs 2>&1 | tee "$out/depth.txt"
  echo "sweep phase: $(( $(date +%s) - t0 ))s" | tee -a "$out/depth.txt"
}

case $phase in
  fidelity) fidelity ;;
  sweep) sweep ;;
  all) fidelity; sweep ;;
  *) echo "usage: $0 fidelity|sweep|all" >&2; exit 2 ;;
esac
# Engine logs, one file: the KV-cache size, compile times and any error are in there.
tar -czf "$out/enginelogs.tgz" -C "$logs" . 2>/dev/null || true
echo "engine processes left (expect none):" | tee -a "$out/gpus.csv"
ps -eo pid,pgid,etimes,cmd | grep -E "[v]llm.entrypoints|[V]LLM::" | cut -c1-160 | tee -a "$out/gpus.csv"
