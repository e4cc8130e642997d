"""The registries live on the session: a plugin's or a conftest's registration (edits, faults, corpus providers)
is seen by the session whose hooks made it, never by another session in the same process nor by the module-level
registries that code outside a session uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from e2e_support import ORACLE_CONFTEST, write_suite

from pytest_proofpack.data.registry import PROVIDERS
from pytest_proofpack.edits.registry import default_edit_registry
from pytest_proofpack.faults.builtin import default_fault_registry
from pytest_proofpack.registries import builtin_registries
from pytest_proofpack.session import ProofpackSession

REGISTERING_CONFTEST = r'''
import os

def _halve(args):
    return (("factor", float(args[0])),)

def _scale(matrix, params, *, seed):
    return matrix * params["factor"], {}

def _broken(model, ctx):
    raise NotImplementedError

def _load_mine(spec, ctx):
    with open(os.environ["PROOFPACK_TEST_LOG"], "a") as fh:
        fh.write(f"provider mine {spec.path}\n")
    with open(spec.path, encoding="utf-8") as fh:
        return [fh.read()], f"mine:{spec.path}"

def pytest_proofpack_register_edits(registry):
    registry.register("scale_all", _halve, _scale)

def pytest_proofpack_register_faults(registry):
    registry.register("broken_fault", _broken)

def pytest_proofpack_register_corpus_providers(registry):
    registry.register("mine", _load_mine, requires=("path",))
'''


def _not_in_module_registries() -> None:
    assert "scale_all" not in default_edit_registry
    assert "broken_fault" not in default_fault_registry
    assert "mine" not in PROVIDERS


def test_two_sessions_do_not_share_a_registration(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(REGISTERING_CONFTEST)
    first = ProofpackSession.get(pytester.parseconfigure())
    assert "scale_all" in first.registries.edits
    assert first.registries.faults.get("broken_fault_strong").name == "broken_fault"
    assert first.registries.providers["mine"].requires == ("path",)
    (pytester.path / "conftest.py").unlink()
    second = ProofpackSession.get(pytester.parseconfigure())
    builtins = builtin_registries()
    assert second.registries.edits.names() == builtins.edits.names()
    assert second.registries.faults.names() == builtins.faults.names()
    assert sorted(second.registries.providers) == sorted(builtins.providers)
    _not_in_module_registries()


def test_a_conftest_corpus_provider_feeds_its_suite_and_no_other_session(
    pytester: pytest.Pytester, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = pytester.path / "calls.log"
    monkeypatch.setenv("PROOFPACK_TEST_LOG", str(log))
    monkeypatch.delenv("PROOFPACK_TEST_MISS", raising=False)
    args = write_suite(pytester.path, model_dirs)
    suites = pytester.path / "suites.yaml"
    suites.write_text(re.sub(r"\{provider: local_text, ", "{provider: mine, ", suites.read_text(encoding="utf-8")),
                      encoding="utf-8")
    pytester.makeconftest(ORACLE_CONFTEST + REGISTERING_CONFTEST)
    result = pytester.runpytest(*args, "-k", "tiny-a and nan_injection")
    result.assert_outcomes(passed=1, deselected=39)
    assert f"provider mine {pytester.path / 'corpus.txt'}" in log.read_text().splitlines()
    # The same suite in a second session of this process, whose conftest registers nothing: the provider is unknown.
    pytester.makeconftest(ORACLE_CONFTEST)
    result = pytester.runpytest(*args, "-k", "tiny-a and nan_injection")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*$.datasets.text.provider: unknown provider 'mine'*"])
    _not_in_module_registries()
