#!/usr/bin/env bash
# The test command: install with test extras into the active Python environment, fetch the smoke assets,
# then run the whole test suite (unit, pytester end-to-end, real SmolLM2 smoke run on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install.sh dev
# Headless Chromium renders the pack's index.html in one test (it skips with a reason where it is missing).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "ci/test.sh: chromium could not be installed; the HTML rendering test will skip"
fi
proofpack fetch --suite smoke
ruff check pytest_proofpack tests bench
python ci/check_layout.py
mypy --strict pytest_proofpack
python -m pytest tests -q -n 2 "$@"
