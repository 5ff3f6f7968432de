#!/usr/bin/env bash
# Issue 13 on a lent 2-GPU machine (nvidia-h100-x2): real vLLM 0.26.0 through the plugin at TP=2 on a
# Ray cluster of two raylets on this host (one GPU each, node IPs 127.0.0.2/.3), then the same layout
# with vLLM's multiprocessing executor; PP=2 too when the time budget allows. docs/multinode.md.
#
#   bash scripts/gpu_ray.sh plan    # here, not on the GPU machine: the device calls and their carry lists, sized
#   bash scripts/gpu_ray.sh stage   # copy the wheel parts carried along (.gpu-stage/pN, .gpu-ray/pN) to /tmp/wheelset
#   bash scripts/gpu_ray.sh all     # stage what came along, install vLLM + Ray into /tmp/site (once), run
#   bash scripts/gpu_ray.sh run     # only the run (vLLM and Ray already in /tmp/site)
#
# vLLM's wheels (.gpu-stage p1..p7, 363 MiB) and Ray's (.gpu-ray p1..p2, 76 MiB) do not fit one call's
# 64 MiB carry: stage them in calls of their own first, back to back (the machine keeps /tmp only while
# warm). The model is tiny-llama (config only, dummy weights), --enforce-eager, one repeat of 32 requests.
# Both executors get the same flags: --disable-custom-all-reduce, VLLM_ALLREDUCE_USE_SYMM_MEM=0 and the
# FlashInfer all-reduce fusion off (PP=2: async scheduling off, the plugin's known issue).
# Writes to $OUT: summary.txt (versions, times, the side-by-side table, what was left), <run>.json
# (--mgpu-json), <run>.log (pytest), engine-<run>-*.log, cluster.log + node*.log, ray-worker-*.err.
# env: OUT (/tmp/mgpu-out), SITE (/tmp/site), BUDGET (seconds for this call, 230), PP2 (auto|0|1),
#      MGPU_RAY_ENGINE (vllm; `sim` dry-runs the plumbing without GPUs: MGPU_RAY_ENGINE=sim bash scripts/gpu_ray.sh run)
set -uo pipefail
mode=${1:-all}
t_all=$(date +%s)
OUT=${OUT:-/tmp/mgpu-out}; SITE=${SITE:-/tmp/site}; WHEELS=/tmp/wheelset; BUDGET=${BUDGET:-230}; PP2=${PP2:-auto}
mkdir -p "$OUT" "$WHEELS"
say() { echo "[gpu_ray +$(( $(date +%s) - t_all ))s] $*" | tee -a "$OUT/summary.txt"; }
left_s() { echo $(( BUDGET - ($(date +%s) - t_all) )); }

stage() {  # every part folder that came along -> one wheel folder, with a marker per part
  local d name
  for d in .gpu-stage/p* .gpu-ray/p*; do
    [ -d "$d" ] || continue
    name=${d#.}; name=${name/\//-}
    cp "$d"/* "$WHEELS/" && touch "$WHEELS/.staged-$name" && say "staged $name: $(du -sh "$d" | cut -f1)"
  done
  say "parts staged so far: $(cd "$WHEELS" && ls -A | grep '^\.staged-' | sed 's/^\.staged-//' | tr '\n' ' ')"
}

install() {  # join split wheels; install into $SITE what does not import from it yet (vLLM's set, Ray, or both)
  local has_vllm=0 has_ray=0 p missing=() wheels=()
  PYTHONPATH=$SITE python3 -c "import vllm" 2>/dev/null && has_vllm=1
  PYTHONPATH=$SITE python3 -c "import ray" 2>/dev/null && has_ray=1
  if [ $has_vllm = 1 ] && [ $has_ray = 1 ]; then say "vLLM and Ray already in $SITE"; return 0; fi
  [ $has_vllm = 0 ] && for p in 1 2 3 4 5 6 7; do [ -e "$WHEELS/.staged-gpu-stage-p$p" ] || missing+=("gpu-stage-p$p"); done
  [ $has_ray = 0 ] && for p in 1 2; do [ -e "$WHEELS/.staged-gpu-ray-p$p" ] || missing+=("gpu-ray-p$p"); done
  if [ ${#missing[@]} -gt 0 ]; then say "not staged yet: ${missing[*]} (one call per part: carry it, run 'stage')"; exit 3; fi
  local t0 first base; t0=$(date +%s)
  ( cd "$WHEELS" && for first in *.part00; do
      [ -e "$first" ] || continue
      base=${first%.part00}; cat "$base".part* > "$base" && rm -f "$base".part*
    done )
  if [ $has_vllm = 0 ]; then wheels=("$WHEELS"/*.whl); else wheels=("$WHEELS"/ray-*.whl); fi  # vLLM's set has Ray's deps
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}" \
    > "$OUT/install.log" 2>&1 || { say "install failed:"; tail -20 "$OUT/install.log"; exit 3; }
  say "installed ${#wheels[@]} wheels into $SITE in $(( $(date +%s) - t0 ))s"
}

plan() {  # here, in the checkout that has the parts: the device calls, each carry within 64 MiB (the last runs `all`)
  python3 - <<'PY'
import json, pathlib, subprocess
# The 64 MiB a call carries may count the working tree that travels with it: keep room for it.
tracked = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True).stdout.decode().split("\0")
tree = sum(pathlib.Path(f).stat().st_size for f in tracked if f and pathlib.Path(f).is_file())
limit = 64 * 2**20 - tree - 2**20 // 2
parts = [p for p in [pathlib.Path(f".gpu-stage/p{i}") for i in range(1, 8)] + [pathlib.Path(f".gpu-ray/p{i}") for i in (1, 2)]]
missing = [str(p) for p in parts if not p.is_dir()]
if missing:
    raise SystemExit(f"missing here: {' '.join(missing)} (build them first: ../shared/gpu/README.md, .gpu-ray/README.md)")
size = {str(p): sum(f.stat().st_size for f in p.iterdir() if f.is_file()) for p in parts}
bins: list[list[str]] = []
for name in sorted(size, key=lambda n: -size[n]):  # first fit, largest first
    for b in bins:
        if sum(size[x] for x in b) + size[name] <= limit:
            b.append(name)
            break
    else:
        bins.append([name])
bins.sort(key=lambda b: -sum(size[x] for x in b))
total = sum(size.values())
print(f"{len(bins)} calls, {total / 2**20:.1f} MiB of wheels (at most {limit / 2**20:.1f} MiB a call: 64 less the "
      f"{tree / 2**20:.1f} MiB tracked tree and 0.5 spare); kind nvidia-h100-x2, back to back on one warm machine:")
for i, b in enumerate(bins, 1):
    last = i == len(bins)
    cmd = "bash scripts/gpu_ray.sh all" if last else "bash scripts/gpu_ray.sh stage"
    mib = sum(size[x] for x in b) / 2**20
    print(f"  call {i}: command {cmd!r}, carry {json.dumps(sorted(b))} ({mib:.2f} MiB)" + (", timeout_s 240" if last else ""))
PY
}

case $mode in
  plan) plan; exit 0 ;;
  stage) stage; exit 0 ;;
  all) stage; install ;;
  run) ;;
  *) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 2 ;;
esac

# --- the run -----------------------------------------------------------------------------------------
export PYTHONPATH=$SITE:$PWD:${PYTHONPATH:-}   # the raylets pass it on: their Ray workers import vllm from it
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# Ray's workers inherit the raylets' environment, not the engine's: set it here, before the raylets start.
export VLLM_ALLREDUCE_USE_SYMM_MEM=0
unset RAY_ADDRESS
STATE=$(mktemp -d /tmp/mgpu-gpuray-XXXX)
python3 -c "import vllm, ray, torch; print('vllm', vllm.__version__, 'ray', ray.__version__, 'torch', torch.__version__)" \
  2>&1 | tail -1 | tee -a "$OUT/summary.txt"
nvidia-smi --query-gpu=index,name,memory.used,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/summary.txt"

first_block() {  # the root error lines, then the first Traceback block (else from the first ERROR line), 50 lines
  grep -m4 -E "[A-Za-z.]+(Error|Exception)(\([A-Za-z]+\))?: " "$1" | grep -v -E "Errno 24|Error parsing config"
  if grep -q "Traceback (most recent call last)" "$1"; then
    awk '/Traceback \(most recent call last\)/{p=1} p{print; if(++n>=50) exit}' "$1"
  else
    awk '/ ERROR /{p=1} p{print; if(++n>=50) exit}' "$1"
  fi
}
stop_cluster() {
  [ -f "$STATE/cluster.json" ] || return 0
  local t0 port f; t0=$(date +%s)
  cp "$STATE"/node*.log "$OUT/" 2>/dev/null
  port=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['port'])" "$STATE/cluster.json")
  for f in /tmp/mgpu-ray-"$port"/session_latest/logs/worker-*.err; do   # Ray workers' stderr, where it has an error
    [ -s "$f" ] && grep -qE "Traceback|Error" "$f" && cp "$f" "$OUT/ray-$(basename "$f")"
  done
  python3 -m pytest_mgpu.cluster.local stop --state "$STATE" 2>&1 | tee -a "$OUT/summary.txt"
  rm -f "$STATE/cluster.json"
  say "cluster stopped in $(( $(date +%s) - t0 ))s"
}
trap 'stop_cluster; rm -rf "$STATE"' EXIT

plugin=(-p pytest_mgpu.plugin)   # the plugin from this checkout, unless an installed pytest-mgpu registers it
python3 -c "import importlib.metadata as m, sys; sys.exit(0 if any(e.name == 'mgpu' for e in m.entry_points(group='pytest11')) else 1)" \
  && plugin=()
ENGINE=${MGPU_RAY_ENGINE:-vllm}   # sim: a dry run of this script's plumbing on a machine without GPUs
same=()
[ "$ENGINE" = vllm ] && same=(--mgpu-engine-opt enforce-eager=true --mgpu-engine-opt disable-custom-all-reduce=true
      --mgpu-engine-opt 'compilation-config={"pass_config": {"fuse_allreduce_rms": false}}'
      --mgpu-engine-env VLLM_ALLREDUCE_USE_SYMM_MEM=0)
common=("${plugin[@]}" -p no:cacheprovider -rs -s scripts/gpu_ray/test_ray_vs_mp.py --mgpu-engine "$ENGINE"
        --mgpu-repeats 1 --mgpu-start-timeout 150 --mgpu-baseline-dir "$STATE/baselines" "${same[@]}")
declare -A took=()

run() {  # run NAME NODES LAYOUTS [pytest args]: one pytest session within what is left of the budget
  local name=$1 nodes=$2 layouts=$3; shift 3
  local limit t0 rc f; limit=$(( $(left_s) - 12 )); t0=$(date +%s)
  [ "$limit" -lt 30 ] && { say "$name: skipped, ${limit}s left of the budget"; return 1; }
  MGPU_NODES=$nodes MGPU_RAY_LAYOUTS=$layouts timeout -s TERM "$limit" python3 -m pytest "${common[@]}" \
    --mgpu-json "$OUT/$name.json" --mgpu-log-dir "$STATE/logs-$name" "$@" > "$OUT/$name.log" 2>&1
  rc=$?; took[$name]=$(( $(date +%s) - t0 ))
  say "$name: pytest exit $rc after ${took[$name]}s (limit ${limit}s)"
  grep -E "tok/s/GPU|passed|failed|error|skipped" "$OUT/$name.log" | tail -6
  for f in "$STATE/logs-$name"/*.log; do
    [ -e "$f" ] || continue
    cp "$f" "$OUT/engine-$name-$(basename "$f")"
    if [ $rc -ne 0 ] && grep -qE "Traceback| ERROR " "$f"; then echo "=== first error block of $(basename "$f"):"; first_block "$f"; fi
  done
  [ $rc -ne 0 ] && { echo "=== last 25 lines of $name.log:"; tail -25 "$OUT/$name.log"; }
  return $rc
}
want_pp2() {  # PP=2 (ray and mp) only if both fit what is left after the TP=2 runs, at the TP=2 pace
  [ "$PP2" = 1 ] && return 0; [ "$PP2" = 0 ] && return 1
  [ "$(left_s)" -gt $(( $1 + 20 )) ]
}

# 1. Ray: two raylets, one GPU each; TP=2 (PP=2 if time allows) through --mgpu-ray-address.
t0=$(date +%s)
if python3 -m pytest_mgpu.cluster.local start --state "$STATE" --nodes 2 --num-gpus 1 --num-cpus 4 \
     --cuda-visible-devices 0 1 > "$STATE/address" 2> "$OUT/cluster.log"; then
  say "cluster: 2 raylets up in $(( $(date +%s) - t0 ))s at $(head -1 "$STATE/address")"
  # shellcheck disable=SC1091
  . "$STATE/ray.env"   # RAY_ADDRESS and the cluster's token, for the Ray sessions only
  run ray-tp2 2 tp2 --mgpu-ray-address "$RAY_ADDRESS"; ray_rc=$?
  # the mp TP=2 run still has to fit after PP=2 over Ray: reserve one TP=2 start for it
  if [ $ray_rc -eq 0 ] && want_pp2 $(( 2 * ${took[ray-tp2]:-999} )); then
    run ray-pp2 2 pp2 --mgpu-ray-address "$RAY_ADDRESS"
  fi
  unset RAY_ADDRESS RAY_AUTH_MODE RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
else
  say "cluster did not come up:"; cat "$OUT/cluster.log"
fi
stop_cluster

# 2. The same layout(s) with the multiprocessing executor.
run mp-tp2 1 tp2
[ -f "$OUT/ray-pp2.json" ] && want_pp2 "${took[mp-tp2]:-999}" && run mp-pp2 1 pp2

# 3. Side by side, and nothing left behind.
python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, pathlib, sys
print(f"{'layout':8} {'executor':8} {'valid':5} {'tok/s/GPU':>10} {'TTFT p50 ms':>12} {'TPOT p50 ms':>12}")
for path in sorted(pathlib.Path(sys.argv[1]).glob("*-*.json")):
    executor, _, layout = path.stem.partition("-")
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        continue
    for r in doc.get("results", []):
        m = r.get("median") or {}
        vals = [m.get("output_throughput_per_gpu"), m.get("ttft_p50"), m.get("tpot_p50")]
        print(f"{layout:8} {executor:8} {str(r.get('valid')):5} "
              + " ".join(f"{v:>12.2f}" if isinstance(v, (int, float)) else f"{'-':>12}" for v in vals))
PY
left=$(ps -eo pid=,args= | grep -E "vllm\.entrypoints|VLLM::|raylet/raylet|gcs_server|ray::" | grep -v -E "grep|gpu_ray")
[ -n "$left" ] && { say "processes left (a defect of the plugin or this script):"; echo "$left" | cut -c1-160 | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=index,memory.used --format=csv,noheader 2>&1 | tee -a "$OUT/summary.txt"
say "total $(( $(date +%s) - t_all ))s"
