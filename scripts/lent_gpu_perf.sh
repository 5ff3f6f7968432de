#!/usr/bin/env bash
# For the project lead's LENT GPU machines only (prepared by hand: a wheelset in /tmp/site, a flat
# output folder the device tool returns). Not a user recipe: on your own GPU runner follow the
# README's "On your GPUs" (a venv with vLLM and --mgpu-engine-python).
# On a lent GPU machine, after ../shared/gpu's wheelset is installed into /tmp/site (docs/vllm.md):
# run the perf suite with real vLLM through the plugin, recording baselines, and copy what it
# wrote to $OUT (flat: the device tool returns at most 8 files, 2 folders deep).
# usage: bash scripts/lent_gpu_perf.sh TAG TARGET... [pytest args], e.g.
#   bash scripts/lent_gpu_perf.sh a perf_tests/test_llama2_7b.py -k "tp1-pp1 or tp2-pp1"
# The seed's grid of issue 10 (36 items; not yet run on a GPU) in pieces that fit a 10-minute
# command (the earlier H200 run took ~300 s for 6 items including compiles); on 2 cards the
# 4-GPU layouts skip with the reason:
#   for m in test_llama2_7b test_llama2_7b_16gb; do
#     bash scripts/lent_gpu_perf.sh $m-a perf_tests/$m.py -k "tp1-pp1 or tp2-pp1"
#     bash scripts/lent_gpu_perf.sh $m-b perf_tests/$m.py -k "tp1-pp2 or tp4-pp1"
#     bash scripts/lent_gpu_perf.sh $m-c perf_tests/$m.py -k "tp2-pp2 or tp1-pp4"
#   done
set -uo pipefail
tag=$1; shift
out=${OUT:-/tmp/mgpu-out}; mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv > "$out/gpus-$tag.csv" 2>&1
start=$(date +%s)
timeout "${MGPU_GPU_TIMEOUT:-540}" python3 -m pytest -p pytest_mgpu.plugin -p no:cacheprovider -m gpu \
  --mgpu-engine vllm --mgpu-start-timeout 300 --mgpu-update-baselines \
  --mgpu-json "$out/results-$tag.json" --mgpu-progress lines -rs "$@" 2>&1 | tee "$out/log-$tag.txt"
# Plots are drawn back home: python3 scripts/plot_results.py docs/plots/FINGERPRINT results-*.json
echo "gpu_perf $tag: $(( $(date +%s) - start ))s" | tee -a "$out/log-$tag.txt"
for f in $(find baselines -name '*.json' -newer "$out/gpus-$tag.csv"); do
  cp "$f" "$out/baseline-$tag-$(basename "$f")"
done
tail -n 40 .mgpu/logs/*.log > "$out/enginelogs-$tag.txt" 2>/dev/null || true
nvidia-smi --query-gpu=index,memory.used --format=csv >> "$out/gpus-$tag.csv" 2>&1
echo "engine processes left (expect none):" | tee -a "$out/log-$tag.txt"
ps -eo pid,pgid,etimes,cmd | grep -E "[v]llm.entrypoints|[V]LLM::" | cut -c1-160 | tee -a "$out/log-$tag.txt"
