"""``python -m pytest_proofpack.scheduling.launch LAUNCH_JSON``: the reserved model's subprocess (:mod:`.server`)."""

from __future__ import annotations

import sys

from pytest_proofpack.scheduling.launch.server import main

if __name__ == "__main__":
    sys.exit(main())
