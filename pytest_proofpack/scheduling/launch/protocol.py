"""The files and lines a worker and its reservation's subprocess exchange (both sides import this module).

* ``launch.json`` (:data:`LAUNCH_SCHEMA`), written once per subprocess: the worker's arguments, directory,
  ``sys.path``, ``workerinput``, a private basetemp and the conftest files that implement proofpack hooks.
* a request file per item (:data:`REQUEST_SCHEMA`): the case's key, ``calibrate_only``, the worker's pid and
  where to write the result; its path is sent as one line on the subprocess's stdin.
* a result file per item (:data:`RESULT_SCHEMA`): the report and properties, a skip reason or an error.
* protocol lines on the subprocess's private stdout, each :data:`PROTOCOL_MARK` + a JSON object:
  ``{"event": "ready"}`` once started, ``{"event": "done", "result": PATH}`` per request.

All files are written atomically. ``NaN`` and ``Infinity`` are kept, so the worker judges exactly the report the
engine returned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.errors import ProofpackError

#: ``python -m`` this module to start a subprocess.
ENTRY_MODULE: Final = "pytest_proofpack.scheduling.launch"
LAUNCH_SCHEMA: Final = "proofpack_launch_v1"
REQUEST_SCHEMA: Final = "proofpack_launch_request_v1"
RESULT_SCHEMA: Final = "proofpack_launch_result_v1"
#: Prefix of protocol lines on the subprocess's private stdout.
PROTOCOL_MARK: Final = "@proofpack-launch "


def dump_json(data: Any) -> str:
    """``data`` as JSON text; NaN/Infinity kept, numpy scalars as numbers, anything else as its ``str``."""
    return json.dumps(data, allow_nan=True, default=_json_default)


def _json_default(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def read_json(path: Path, schema: str) -> dict[str, Any]:
    """The JSON object in ``path``; raises :class:`ProofpackError` if unreadable or its ``schema`` is not
    ``schema``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProofpackError(f"{path}: cannot read the launch file: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise ProofpackError(f"{path}: $.schema must be {schema!r}; the file was not written by this version")
    return data
