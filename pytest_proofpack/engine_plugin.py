"""The built-in implementation of ``pytest_proofpack_evaluate``: the proofpack detection engine.

Registered as ``trylast`` so a user's own implementation (conftest or plugin) takes precedence. A CUDA
out-of-memory error is retried with the evaluation batch halved (at most three times) before it surfaces as an
``oom`` error.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Case
    from pytest_proofpack.engine.report import EvaluationResult
    from pytest_proofpack.runtime import ModelRuntime

OOM_RETRIES = 3


@pytest.hookimpl(trylast=True)
def pytest_proofpack_evaluate(case: Case, runtime: ModelRuntime, change: dict[str, Any] | None) -> EvaluationResult:
    import pytest_proofpack.engine.evaluate as engine_evaluate  # looked up at call time (tests patch it)
    from pytest_proofpack.execute import probes_for
    from pytest_proofpack.oom import is_oom, release_memory

    preview, final = runtime.windows(case.run)
    cfg = runtime.engine
    context = {"model": case.model.key, "scenario": case.scenario.id, "run": case.run, "edit": change,
               "probes": probes_for(case), "model_revision": runtime.loaded.revision,
               "model_source": runtime.loaded.source_desc}
    attempt = 0
    while True:
        try:
            return engine_evaluate.evaluate(runtime.model, runtime.baseline(case.run), preview, final,
                                            runtime.preset, cfg, context=context)
        except Exception as exc:
            if not is_oom(exc) or attempt >= OOM_RETRIES or cfg.batch_size == 1:
                raise
            release_memory()
            attempt += 1
            cfg = dataclasses.replace(cfg, batch_size=max(1, cfg.batch_size // 2))
