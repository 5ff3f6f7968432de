#!/usr/bin/env bash
# Issue 17 on a lent single-GPU machine: the gate on an unchanged engine, and TTFT against
# `vllm bench serve`. One step per call, back to back (a machine idle for long goes back, and a
# fresh one has nothing staged, compiled or recorded).
#
# Needs vLLM 0.26.0 staged into /tmp/site for the machine's python3 (../shared/gpu/README.md). The
# three capped TP=1 tests of perf_tests/test_llama2_7b_16gb.py (the tp1-pp1-mem16 items:
# all-at-once, Poisson 32/s, single stream of 40 requests) share one engine start per step.
#
#   step       what                                                           expected      device time (warm start ~40 s)
#   record     record the three tests into a fresh baseline dir                 3 passed      ~4 min; +2-3 min on a first compile
#              (--mgpu-update-baselines; $MGPU_GATE_BASELINES, default
#              /tmp/mgpu-gate-baselines, emptied first)
#   record2    optional, after record: a second recording from a fresh engine   3 passed      ~4 min
#              start, so that the reruns' band holds the spread between starts
#              (an improvement is offered for acceptance only then; docs/gate.md)
#   rerun1     re-run them unchanged against that dir; every verdict printed    no IMPROVED,  ~4 min; up to ~6.5 min if every
#   rerun2     the same again                                                   no FAIL       item is re-measured (confirm)
#   fidelity1  benchmarks/fidelity.py, text mode: in256-out96, 200 prompts at   TTFT p50      ~3.5 min (server start + 4 rounds
#              16/s, 3 rounds + a warm-up round (issue 17's workload)           within 1%     of 2 sides, vLLM's client
#   fidelity2  the same for in128-out128, 200 prompts at 8/s                    within 1%     imports ~15 s per run); ~5 min
#   fidelity   fidelity1 then fidelity2                                                       ~8.5 min: only warm and compiled
#
#   bash scripts/gpu_gate.sh record    # $OUT gets report-record.md, results-record.json, log-record.txt,
#                                      # verdicts-record.txt, vllm-record.txt, baseline-record-<fingerprint>.json
#   bash scripts/gpu_gate.sh fidelity1 # $OUT gets fidelity1.json, fidelity1.txt (TTFT p50 deltas at the end)
#
# If the machine went back between record and a rerun, /tmp is gone: put record's
# baseline-record-<fingerprint>.json in the working tree and name it in MGPU_GATE_RESTORE; the
# rerun copies it into place first.
#
# Dry run without a GPU (the sim engine, no vLLM needed; record/rerun steps only):
#   MGPU_ENGINE=sim OUT=/tmp/gate-dry bash scripts/gpu_gate.sh record
# (2-core dev machine, no GPU, 2026-12-05: record 21 s, record2 19 s, rerun1 20 s, rerun2 19 s; 3 passed each.)
#
# Environment: OUT (/tmp/mgpu-out), MGPU_ENGINE (vllm), MGPU_SITE (/tmp/site), MGPU_GATE_BASELINES,
# MGPU_GATE_RESTORE, MGPU_STEP_TIMEOUT (540), MGPU_START_TIMEOUT (300), MGPU_FID_ROUNDS (3).
# Extra arguments go to pytest (record/rerun steps) or to benchmarks/fidelity.py (fidelity steps).
set -uo pipefail
step=${1:?usage: bash scripts/gpu_gate.sh record|record2|rerun1|rerun2|fidelity1|fidelity2|fidelity [args]}
shift
out=${OUT:-/tmp/mgpu-out}; mkdir -p "$out"
engine=${MGPU_ENGINE:-vllm}
site=${MGPU_SITE:-/tmp/site}
bases=${MGPU_GATE_BASELINES:-/tmp/mgpu-gate-baselines}
limit=${MGPU_STEP_TIMEOUT:-540}
export PYTHONPATH="$site:$PWD:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
t0=$(date +%s)
suite=perf_tests/test_llama2_7b_16gb.py
sel="tp1-pp1-mem16"

need_vllm() {
  python3 -c "import importlib.metadata as m; print('$site: vllm', m.version('vllm'))" 2>/dev/null \
    || { echo "vLLM is not staged in $site (../shared/gpu/README.md)" >&2; exit 2; }
  nvidia-smi --query-gpu=index,name,memory.total,memory.used,clocks.max.sm,driver_version --format=csv
}

# Every result's verdict, and each metric's, from the step's results JSON.
verdicts() {
  python3 - "$1" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
for r in doc.get("results", []):
    c = r.get("comparison") or {}
    print(f"{r['entry_id']}: {c.get('verdict', '-')} (measurement: {c.get('measurement', '-')})")
    for m in c.get("metrics", []):
        d = m.get("delta_pct")
        print(f"  {m['metric']:<26} base {m.get('base') or 0:>10.2f}  now {m.get('now') or 0:>10.2f}  "
              f"delta {'-' if d is None else f'{d:+.1f}%':>7}  noise {m.get('noise_pct') or 0:.1f}%  "
              f"tol {m.get('tolerance_pct'):g}%  {m.get('verdict')}")
    if c.get("note"):
        print(f"  note: {c['note']}")
EOF
}

gate_step() {
  local extra=()
  if [[ $engine != sim ]]; then need_vllm | tee "$out/log-$step.txt"; else : > "$out/log-$step.txt"; fi
  case $step in
    record) rm -rf "$bases"; mkdir -p "$bases"; extra=(--mgpu-update-baselines) ;;
    record2)
      [[ -n $(find "$bases" -name '*.json' 2>/dev/null) ]] \
        || { echo "no baselines in $bases: run the record step first" >&2; exit 2; }
      extra=(--mgpu-update-baselines) ;;
    rerun*)
      if [[ -n ${MGPU_GATE_RESTORE:-} ]]; then
        local fp; fp=$(basename "$MGPU_GATE_RESTORE" .json); fp=${fp#baseline-record-}; fp=${fp#baseline-record2-}
        mkdir -p "$bases/$fp/perf_tests"; cp "$MGPU_GATE_RESTORE" "$bases/$fp/perf_tests/$(basename $suite).json"
      fi
      [[ -n $(find "$bases" -name '*.json' 2>/dev/null) ]] \
        || { echo "no baselines in $bases: run the record step first, or set MGPU_GATE_RESTORE" >&2; exit 2; } ;;
  esac
  local logs=/tmp/mgpu-logs/gate-$step
  rm -rf "$logs"
  # -p loads the plugin from the working tree; where pytest-mgpu is installed (a dry run here) its entry point does.
  local plug=(-p pytest_mgpu.plugin)
  python3 -c "import importlib.metadata as m, sys; sys.exit(not any(e.value.startswith('pytest_mgpu')
    for e in m.entry_points(group='pytest11')))" && plug=()
  timeout -s TERM "$limit" python3 -m pytest "${plug[@]}" -p no:cacheprovider -m gpu -v -rA \
    --mgpu-engine "$engine" --mgpu-start-timeout "${MGPU_START_TIMEOUT:-300}" --mgpu-baseline-dir "$bases" \
    --mgpu-cache-dir=/tmp/mgpu-cache --mgpu-log-dir="$logs" --mgpu-progress lines \
    --mgpu-report-md="$out/report-$step.md" --mgpu-json="$out/results-$step.json" \
    "${extra[@]}" "$suite" -k "$sel" "$@" 2>&1 | tee -a "$out/log-$step.txt"
  rc=${PIPESTATUS[0]}
  [[ -f $out/results-$step.json ]] && verdicts "$out/results-$step.json" | tee "$out/verdicts-$step.txt"
  if [[ $step == record* ]]; then
    while IFS= read -r f; do
      cp "$f" "$out/baseline-$step-$(basename "$(dirname "$(dirname "$f")")").json"
    done < <(find "$bases" -name '*.json')
  fi
  grep -hE "KV cache size|Maximum concurrency|torch.compile takes|Graph capturing finished|init engine" \
    "$logs"/vllm-*.log > "$out/vllm-$step.txt" 2>/dev/null || true
  echo "gpu_gate $step: pytest exit $rc, $(( $(date +%s) - t0 ))s elapsed" | tee -a "$out/log-$step.txt"
}

# One fidelity workload: NAME INPUT OUTPUT PROMPTS RATE [fidelity.py args].
fidelity_one() {
  local name=$1 inp=$2 outp=$3 n=$4 rate=$5; shift 5
  local t1; t1=$(date +%s)
  local ver; ver=$(python3 -c "import importlib.metadata as m; print(m.version('vllm'))")
  VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-/tmp/mgpu-cache/vllm-$ver} timeout -s TERM "$limit" \
    python3 benchmarks/fidelity.py --python python3 --model llama-2-7b --modes text \
    --input-len "$inp" --output-len "$outp" --num-prompts "$n" --request-rate "$rate" --warmups 4 \
    --rounds "${MGPU_FID_ROUNDS:-3}" --tolerance 1 --log-dir "/tmp/mgpu-logs/$name" --json "$out/$name.json" "$@" \
    2>&1 | tee "$out/$name.txt"
  local r=${PIPESTATUS[0]}
  (( r > ${rc:-0} )) && rc=$r
  python3 - "$out/$name.json" <<'EOF' | tee -a "$out/$name.txt"
import json, statistics, sys
try:
    doc = json.load(open(sys.argv[1]))
except (OSError, ValueError) as exc:
    sys.exit(f"no fidelity JSON: {exc}")
for row in doc["rows"]:
    if row["metric"] == "ttft_p50":
        ours, theirs = statistics.median(row["ours"]), statistics.median(row["vllm"])
        print(f"TTFT p50 ({row['mode']}), median of rounds: ours {ours:.2f} ms vs vllm bench serve {theirs:.2f} ms: "
              f"{row['delta_pct']:+.2f}% ({'within' if abs(row['delta_pct']) <= 1 else 'OUTSIDE'} 1%)")
EOF
  echo "gpu_gate $name: exit $r, $(( $(date +%s) - t1 ))s" | tee -a "$out/$name.txt"
}

case $step in
  record|record2|rerun1|rerun2) gate_step "$@" ;;
  fidelity1) need_vllm > "$out/gpus-$step.csv"; fidelity_one fidelity1 256 96 200 16 "$@" ;;
  fidelity2) need_vllm > "$out/gpus-$step.csv"; fidelity_one fidelity2 128 128 200 8 "$@" ;;
  fidelity)  need_vllm > "$out/gpus-$step.csv"; fidelity_one fidelity1 256 96 200 16 "$@"; fidelity_one fidelity2 128 128 200 8 "$@" ;;
  *) echo "unknown step $step: record, record2, rerun1, rerun2, fidelity1, fidelity2 or fidelity" >&2; exit 2 ;;
esac
echo "engine processes left (expect none):"
# shellcheck disable=SC2009  # the engines have no stable name to pgrep for
ps -eo pid,pgid,etimes,cmd | grep -E "[v]llm.entrypoints|[V]LLM::" | cut -c1-160
exit "${rc:-0}"
