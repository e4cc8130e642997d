#!/usr/bin/env bash
# GPU smoke check for an H100/H200 box without network (torch + transformers installed).
# Usage: ci/gpu_check.sh [--dry-run]     (--dry-run: CPU, tiny model; for machines without a GPU)
# Must finish in under 8 minutes; every step has its own timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [[ "${1:-}" != "--dry-run" ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU found (nvidia-smi missing or failing); run on a GPU machine or pass --dry-run" >&2
    exit 2
  fi
  timeout 30 nvidia-smi
fi
timeout 450 python ci/gpu_check.py "$@"
