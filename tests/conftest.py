"""Fixtures shared by the end-to-end plugin tests (``test_plugin_e2e``, ``test_multigpu``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import make_model_dir


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny local LLaMA model directories, keyed as the suites written by ``e2e_support.write_suite`` use."""
    root = tmp_path_factory.mktemp("models")
    return {"tiny-a": make_model_dir(root, 0), "tiny-b": make_model_dir(root, 1)}
