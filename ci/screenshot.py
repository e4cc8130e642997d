"""Regenerate ``docs/report.png``, the README's picture of a proof pack's ``index.html``.

It runs a real session (the real engine, no test double) of the 20-scenario ``subset`` suite on a tiny
random-weight Llama model (``tests/tinymodels.py``: 2 layers, hidden size 32) and a local corpus, in a temporary
directory, then photographs the top of the pack's ``index.html`` (verdict, matrix, chart) with headless Chromium,
at 0.8 device pixels per CSS pixel (880 px wide, the width a README column shows; under 300 KB). A random 2-layer
model is not SmolLM2: its stress edits barely move its perplexity, so the pictured verdict is an honest FAIL. About
a minute on two CPU cores.

``--pack DIR`` photographs an existing pack instead (e.g. the SmolLM2 smoke run's ``<run>/proof_pack``), with
``--height`` CSS pixels of it.

Usage: ``python ci/screenshot.py [--out docs/report.png] [--keep DIR | --pack DIR [--height PX]]``; exit 1 when
Chromium is missing or the session wrote no pack.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from e2e_support import make_model_dir, write_suite  # noqa: E402

WINDOW = "1100,2330"  # CSS pixels: the verdict, the matrix and the chart of the subset suite on one model


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def build_pack(work: Path) -> Path:
    """Run the session in ``work`` and return the pack's ``index.html``."""
    models = {"tiny-a": make_model_dir(work / "models", 0)}
    args = write_suite(work, models)
    (work / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", *args, "-q", "-p", "no:randomly"], cwd=work, env=env,
                          capture_output=True, text=True, check=False)
    index = work / "run" / "proof_pack" / "index.html"
    if not index.is_file():
        sys.exit(f"ci/screenshot.py: the session wrote no pack (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
                 f"{proc.stderr[-3000:]}")
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png", help="the PNG to write")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it (default: a temporary one)")
    parser.add_argument("--pack", type=Path, help="photograph this existing pack directory instead of running one")
    parser.add_argument("--height", type=int, default=int(WINDOW.split(",")[1]), help="CSS pixels photographed")
    ns = parser.parse_args()
    browser = _chromium()
    if browser is None:
        sys.exit("ci/screenshot.py: chromium not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="proofpack-shot-") as tmp:
        work = ns.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        index = (ns.pack / "index.html").resolve() if ns.pack else build_pack(work)
        if not index.is_file():
            sys.exit(f"ci/screenshot.py: {index} does not exist; --pack names a proof_pack directory")
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--force-device-scale-factor=0.8",
                        f"--screenshot={ns.out.resolve()}", f"--window-size={WINDOW.split(',')[0]},{ns.height}",
                        index.as_uri()],
                       capture_output=True, text=True, timeout=120, check=True)
    print(f"{ns.out} ({ns.out.stat().st_size // 1024} KiB) from {index}")


if __name__ == "__main__":
    main()
