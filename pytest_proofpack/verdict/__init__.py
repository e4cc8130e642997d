"""The suite verdict: recorded runs -> ``final_verdict.json``/``.txt``, the summaries and the detection matrix.

One concern per submodule, each importing only the ones before it:

- :mod:`.cases` — every planned case judged: a judged record per run, or a missing entry;
- :mod:`.rules` — the suite-level requirements, one function each;
- :mod:`.binomial` — the exact Clopper–Pearson bound (standard library only);
- :mod:`.summaries` and :mod:`.matrix` — counts, summaries, false-alarm rate, the detection matrix;
- :mod:`.compute` — :func:`compute_verdict`, the pure function that assembles the verdict;
- :mod:`.load` — a run directory or a pack read back (:func:`load_run`);
- :mod:`.render` and :mod:`.files` — the text forms and the ``results/`` files.
"""

from __future__ import annotations

from pytest_proofpack.verdict.cases import RunResult
from pytest_proofpack.verdict.compute import VERDICT_SCHEMA, compute_verdict
from pytest_proofpack.verdict.files import RESULT_FILES, dump_json, result_texts, write_results
from pytest_proofpack.verdict.load import LoadedRun, load_run, load_run_results
from pytest_proofpack.verdict.render import render_matrix, render_text

__all__ = [
    "RESULT_FILES",
    "VERDICT_SCHEMA",
    "LoadedRun",
    "RunResult",
    "compute_verdict",
    "dump_json",
    "load_run",
    "load_run_results",
    "render_matrix",
    "render_text",
    "result_texts",
    "write_results",
]
