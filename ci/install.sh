#!/usr/bin/env bash
# Install pytest-proofpack (editable) into the active Python environment with the given extras.
# torch is pinned in the same pip command as everything that depends on it: an unpinned torch would pull a
# multi-GB CUDA build on a CPU machine. Override with PROOFPACK_TORCH_SPEC (e.g. "torch==2.11.0").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
target="."
[ -n "$extras" ] && target=".[${extras}]"
python -m pip install --quiet --disable-pip-version-check "${PROOFPACK_TORCH_SPEC:-torch==2.13.0}" -e "$target"
