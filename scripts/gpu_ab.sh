#!/usr/bin/env bash
# Same-job A/B through the plugin on a lent 2-GPU machine (issue 9, part 3): one step per call.
#
# Needs vLLM 0.26.0 staged into /tmp/site and (steps up1, up2) 0.25.1 into /tmp/site25, both for
# the machine's python3 (torch 2.11), as ../shared/gpu/README.md describes ("Two vLLM versions
# side by side"). The new side is python3 with PYTHONPATH=/tmp/site; the old side is the same
# python3 with --mgpu-ab-env PYTHONPATH=/tmp/site25. Every step measures
# perf_tests/test_llama2_7b_16gb.py::test_capped_all_at_once (llama-2-7b, dummy weights, 16 GiB
# per GPU, 256 requests of 128 in / 128 out, all at once), 1 repeat per engine start, rounds 3..4
# (A B, B A, A B [, B A]), an engine restart before every measurement. vLLM's compile caches live
# in /tmp/mgpu-cache/vllm-VERSION and are reused by later steps while the machine stays warm.
#
#   step     what                                          vLLM needed    expected   device time
#   aa       A/A 0.26.0 vs 0.26.0, tp1-mem16: must PASS     0.26.0         PASS       ~6.5 min (first tp1 start compiles, 2-3 min)
#   regress  0.26.0 at 16 GiB (old) vs 0.26.0 at 15 GiB     0.26.0         FAIL       ~6 min (8 starts; no recompile: the memory
#            (new; a smaller KV cache, so fewer requests                   confirmed  cap is not in vLLM's compile hash)
#            in flight), tp1-mem16: must FAIL, confirmed
#   up1      upgrade 0.25.1 -> 0.26.0, tp1-mem16            both           measured   ~6.5 min (0.25.1 compiles once)
#   up2      upgrade 0.25.1 -> 0.26.0, tp2-mem16            both           measured   ~9 min (both versions compile tp2, NCCL preflight
#                                                                                     before each start; the step stops itself at 570 s)
#   aa3      A/A 0.26.0 vs 0.26.0 on the three tp1-mem16     0.26.0         PASS       ~8 min estimated: 6 starts at ~44 s warm, ~30 s
#            items (all at once, 32 QPS, single stream),                    3 PASS     of measuring per start (3 items); + 2-3 min if the
#            sharing one start per side per round                                      first tp1 start compiles: run it after aa, warm.
#                                                                                     Issue 20's target: <= 11 GPU-min. Not yet run.
#   regress3 the same with the new side capped at 15.6 GiB    0.26.0         FAIL on    ~9 min estimated: 8 starts, but items decided at
#            (MGPU_REGRESS_GB; issue 20 measured -11.5% on                  the batch  round 3 drop out of round 4; close to the 570 s
#            all-at-once with it)                                           items      stop, which still writes the reports. Not yet run
#
# Estimates: a warm start ~40 s (docs: 20-65 s), a first start of a layout and version 2-3 min, one
# rate-inf run of 256 requests ~10 s at tp1-mem16. Each step prints its elapsed time; its reports are
# the "GPU time per verdict" table. Run them back to back (a machine idle for long goes back and a
# fresh one has nothing staged or compiled). In priority order, with the budget tight: aa, regress
# (only 0.26.0 staged), then up1, up2 (0.25.1 staged too).
#
#   bash scripts/gpu_ab.sh aa         # $OUT gets report-aa.md, results-aa.json, log-aa.txt, vllm-aa.txt
#
# Environment: OUT (reports; default /tmp/mgpu-out), MGPU_NEW_SITE (/tmp/site), MGPU_OLD_SITE
# (/tmp/site25), MGPU_REGRESS_GB (the new side's cap: 15 in step regress, 15.6 in regress3),
# MGPU_STEP_TIMEOUT (570), MGPU_START_TIMEOUT (400), MGPU_PYTHON (python3). Extra arguments go to pytest.
#
# Dry run without a GPU: MGPU_ENGINE=sim runs the same step on the sim engine (h100-80gb profile, no
# vLLM staging, no nvidia-smi); its caused regression is the sim's speed option (MGPU_SIM_SPEED,
# default 0.85) instead of the memory cap, which the sim does not model per start.
#   MGPU_ENGINE=sim MGPU_PYTHON=/work/venv/bin/python OUT=/tmp/dry bash scripts/gpu_ab.sh aa3
#
# Risk in up2: the known-issue table turns vLLM's FlashInfer all-reduce fusion off for TP>1 only for
# 0.26.x (TP=2 hung with it on 2-GPU hosts); whether 0.25.1 needs it too is unknown. If the old
# side's TP=2 start hangs, the step fails after MGPU_START_TIMEOUT; then rerun it with
#   bash scripts/gpu_ab.sh up2 --mgpu-ab-opt 'compilation-config={"pass_config": {"fuse_allreduce_rms": false}}'
# (and MGPU_START_TIMEOUT=240 to fail faster) -- that the old version needs it is itself a finding.
set -uo pipefail
step=${1:?usage: bash scripts/gpu_ab.sh aa|regress|up1|up2|aa3|regress3 [pytest args]}
shift
engine=${MGPU_ENGINE:-vllm}
py=${MGPU_PYTHON:-python3}
out=${OUT:-/tmp/mgpu-out}
mkdir -p "$out"
new_site=${MGPU_NEW_SITE:-/tmp/site}
old_site=${MGPU_OLD_SITE:-/tmp/site25}
export PYTHONPATH="$new_site:$PWD"
export PYTHONUNBUFFERED=1
t0=$(date +%s)

if [[ $engine == sim ]]; then
  total_mb=81559  # unused by the sim: its regression is the speed option
else
  total_mb=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -n1 | tr -d ' ')
fi
# The adapter's own arithmetic, so the old side's flag equals what the layout mark gives.
fraction() { "$py" -c "from pytest_mgpu.engines.vllm import gpu_memory_utilization as g; print(f'{g($1, $total_mb):g}')"; }

suite=perf_tests/test_llama2_7b_16gb.py
case "$step" in
  aa)      sel="all_at_once and tp1-pp1-mem16"; args=(--mgpu-ab=python3) ;;
  regress) sel="all_at_once and tp1-pp1-mem16"
           args=(--mgpu-ab=python3 --mgpu-ab-opt "gpu-memory-utilization=$(fraction 16)"
                 --mgpu-engine-opt "gpu-memory-utilization=$(fraction "${MGPU_REGRESS_GB:-15}")") ;;
  up1)     sel="all_at_once and tp1-pp1-mem16"; args=(--mgpu-ab=python3 --mgpu-ab-env "PYTHONPATH=$old_site:$PWD") ;;
  up2)     sel="all_at_once and tp2-pp1-mem16"; args=(--mgpu-ab=python3 --mgpu-ab-env "PYTHONPATH=$old_site:$PWD") ;;
  # The three capped TP=1 items share one engine key: one start per side per round serves all three.
  aa3)     sel="tp1-pp1-mem16"; args=(--mgpu-ab="$py") ;;
  regress3) sel="tp1-pp1-mem16"
           if [[ $engine == sim ]]; then
             args=(--mgpu-ab="$py" --mgpu-ab-opt speed=1.0 --mgpu-engine-opt "speed=${MGPU_SIM_SPEED:-0.85}")
           else
             args=(--mgpu-ab="$py" --mgpu-ab-opt "gpu-memory-utilization=$(fraction 16)"
                   --mgpu-engine-opt "gpu-memory-utilization=$(fraction "${MGPU_REGRESS_GB:-15.6}")")
           fi ;;
  *) echo "unknown step $step: aa, regress, up1, up2, aa3 or regress3" >&2; exit 2 ;;
esac
logs=/tmp/mgpu-logs/$step
rm -rf "$logs"
engine_args=(--mgpu-engine "$engine")
if [[ $engine == sim ]]; then
  engine_args+=(--mgpu-sim-gpu h100-80gb)
  echo "dry run on the sim engine (MGPU_ENGINE=sim): no GPU, no vLLM" | tee "$out/log-$step.txt"
else
  sites=("$new_site")
  [[ $step == up* ]] && sites+=("$old_site")
  for site in "${sites[@]}"; do
    PYTHONPATH="$site" "$py" -c "import importlib.metadata as m; print('$site: vllm', m.version('vllm'))" \
      || { echo "vLLM is not staged in $site (../shared/gpu/README.md)" >&2; exit 2; }
  done
  nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv | tee "$out/log-$step.txt"
  engine_args+=(-p pytest_mgpu.plugin)
fi

timeout -s TERM "${MGPU_STEP_TIMEOUT:-570}" "$py" -m pytest -p no:cacheprovider -m gpu -v -rs \
  "${engine_args[@]}" --mgpu-start-timeout "${MGPU_START_TIMEOUT:-400}" --mgpu-repeats 1 --mgpu-ab-min-rounds 3 --mgpu-ab-rounds 4 \
  --mgpu-cache-dir=/tmp/mgpu-cache --mgpu-log-dir="$logs" --mgpu-report-md="$out/report-$step.md" --mgpu-json="$out/results-$step.json" \
  "${args[@]}" "$suite" -k "$sel" "$@" 2>&1 | tee -a "$out/log-$step.txt"
rc=${PIPESTATUS[0]}
echo "gpu_ab $step: pytest exit $rc, $(( $(date +%s) - t0 ))s elapsed" | tee -a "$out/log-$step.txt"
# vLLM's own account of each start: KV cache size, compile and graph-capture times.
grep -hE "KV cache size|Maximum concurrency|torch.compile takes|Graph capturing finished|init engine|Compil" \
  "$logs"/vllm-*.log > "$out/vllm-$step.txt" 2>/dev/null || true
echo "engine processes left (expect none):" | tee -a "$out/log-$step.txt"
# shellcheck disable=SC2009  # the engines have no stable name to pgrep for
ps -eo pid,pgid,etimes,cmd | grep -E "[v]llm.entrypoints|[V]LLM::" | cut -c1-160 | tee -a "$out/log-$step.txt"
exit "$rc"
