"""The controller's role: it alone writes ``run.json``, the metadata, the records, the verdict and the pack.

With ``-n N`` the controller is the process without ``workerinput``; without xdist the one process plays both
roles. :class:`ControllerRole` is registered in the controller only. At session start it writes ``run.json`` and
``metadata/``; for each test report it writes one record per scenario run
(:func:`~pytest_proofpack.scenario_records.record_for`); at session finish it computes the verdict over every
record of the run directory, writes the pack, adds suite-level JUnit properties and sets the exit status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pytest_proofpack import ENGINE_VERSION, __version__
from pytest_proofpack.errors import ProofpackError
from pytest_proofpack.metadata import record_revision, write_metadata
from pytest_proofpack.pytest_private import junit_xml
from pytest_proofpack.results import planned_keys, read_run_json, stale_reason, with_evidence, write_run_json
from pytest_proofpack.scenario_records import proofpack_properties, record_for

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_proofpack.session import ProofpackSession


class ControllerRole:
    """The controller's hooks over ``session``'s run; holds the verdict and the pack path once written."""

    def __init__(self, session: ProofpackSession) -> None:
        self.session = session
        self.verdict: dict[str, Any] | None = None
        self.pack_path: Path | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        proofpack = self.session
        if proofpack.ctx is None or proofpack.config.option.collectonly:
            return
        ctx = proofpack.ctx
        previous = read_run_json(ctx.run_dir)
        if previous and previous.get("config_digest") != ctx.config_digest:
            proofpack.notes.append("stale records ignored: " + stale_reason(previous.get("config", {}), ctx.config))
        write_run_json(ctx.run_dir, {
            "suite": ctx.suite.name, "config_digest": ctx.config_digest, "config": ctx.config,
            "scenarios_digest": ctx.config["catalog_digest"], "engine_version": ENGINE_VERSION,
            "plugin_version": __version__, **self._plan_and_shard(),
            "models": [{"key": m.key, "hub_id": m.hub_id, "revision": m.revision}
                       for m in {c.model.key: c.model for c in proofpack.cases}.values()],
            "planned": planned_keys(proofpack.cases),
        })
        write_metadata(ctx, proofpack.cases)

    def _plan_and_shard(self) -> dict[str, Any]:
        """run.json's ``plan`` (the command line's, every shard) and ``shard`` (see :mod:`pytest_proofpack.pack.
        coverage`)."""
        from pytest_proofpack.catalog import parse_shard
        from pytest_proofpack.pack.coverage import plan_digest

        proofpack = self.session
        assert proofpack.ctx is not None
        options = proofpack.options
        every = planned_keys(proofpack.plan_cases)
        plan = {"models": list(dict.fromkeys(c.model.key for c in proofpack.plan_cases)),
                "scenario_suite": proofpack.ctx.suite.scenario_suite, "clean_runs": options.clean_runs,
                "stress_runs": options.stress_runs, "cases": len(every), "digest": plan_digest(every)}
        shard = None
        if options.shard:
            index, count = parse_shard(options.shard)
            shard = {"index": index, "count": count,
                     "models": list(dict.fromkeys(c.model.key for c in proofpack.cases))}
        return {"plan": plan, "shard": shard}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        store = self.session.store
        if store is None:
            return
        record = record_for(report, store.config_digest)
        if record is None:
            return
        record = with_evidence(record, store.run_dir)
        props = proofpack_properties(report)
        if props.get("model_revision"):
            record_revision(store.run_dir, record.model, props["model_revision"], props.get("model_source", ""))
        store.write(record)

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport) -> tuple[str, str, Any] | None:
        """xdist's report for an item whose worker died is an error (record ``error``/``crash``), not a failure.

        Its ``when`` is ``'???'``; pytest would count it under ``failed``. JUnit already writes it as ``<error>``.
        """
        if report.failed and report.when not in ("setup", "call", "teardown"):
            return "error", "E", ("ERROR", {"red": True})
        return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        proofpack = self.session
        if proofpack.ctx is None or proofpack.options.calibrate_only or proofpack.config.option.collectonly:
            return
        if exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.USAGE_ERROR):
            return
        from pytest_proofpack.pack.coverage import run_verdict
        from pytest_proofpack.verdict import load_run, write_results

        try:
            loaded = load_run(proofpack.ctx.run_dir)
            verdict = run_verdict(loaded, stale_records=loaded.stale_records)
            write_results(proofpack.ctx.run_dir / "results", verdict)
            self.verdict = verdict
            if not proofpack.options.no_pack:
                from pytest_proofpack.pack import build_pack

                options = proofpack.options
                self.pack_path = build_pack(proofpack.ctx.run_dir, sign_key=options.sign_key, gpg=options.gpg)
        except ProofpackError as exc:
            proofpack.notes.append(f"verdict/pack not written: {exc}")
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
            return
        self._junit_properties(session)
        # A shard's PARTIAL verdict does not fail its job: the merge of every shard gives the final verdict.
        if verdict.get("verdict") not in ("PASS", "PARTIAL") and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _junit_properties(self, session: pytest.Session) -> None:
        """Suite-level JUnit properties, written by the controller (``record_testsuite_property`` is silent
        under xdist)."""
        xml = junit_xml(session.config)
        ctx = self.session.ctx
        if xml is None or ctx is None or self.verdict is None:
            return
        counts = self.verdict.get("counts", {})
        props = {
            "proofpack_suite": ctx.suite.name, "proofpack_verdict": self.verdict.get("verdict", ""),
            "proofpack_config_digest": ctx.config_digest, "proofpack_engine_version": ENGINE_VERSION,
            "proofpack_records_total": counts.get("records_total", 0),
            "proofpack_failed_requirements": ",".join(
                r.get("requirement", "") for r in self.verdict.get("failed_requirements", [])),
            "proofpack_pack": str(self.pack_path) if self.pack_path else "",
        }
        for k, v in props.items():
            xml.add_global_property(k, str(v))

    def pytest_terminal_summary(
        self, terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
    ) -> None:
        ctx = self.session.ctx
        if ctx is None or config.option.collectonly:
            return
        reporter = terminalreporter
        reporter.section("proofpack")
        for note in self.session.notes:
            reporter.write_line(note)
        if self.session.options.calibrate_only:
            reporter.write_line(f"presets: {ctx.run_dir / 'metadata' / 'presets'}")
            return
        if self.verdict is None:
            return
        from pytest_proofpack.verdict import render_matrix

        for line in render_matrix(self.verdict):
            reporter.write_line(line)
        failed = self.verdict.get("failed_requirements", [])
        verdict = self.verdict.get("verdict")
        reporter.write_line(f"verdict: {verdict}" + (f" ({len(failed)} failed requirements)" if failed else ""),
                            green=verdict == "PASS", yellow=verdict == "PARTIAL",
                            red=verdict not in ("PASS", "PARTIAL"), bold=True)
        for req in failed[:10]:
            reporter.write_line(f"  - {req.get('requirement')}: {req.get('message')}")
        if verdict == "PARTIAL":
            reporter.write_line("  this shard covers part of the command line's plan: `proofpack merge` its run "
                                "directory with the other shards' for the final verdict")
        reporter.write_line(f"results: {ctx.run_dir / 'results' / 'final_verdict.json'}")
        if self.pack_path:
            reporter.write_line(f"proof pack: {self.pack_path}  (check it: proofpack verify {self.pack_path} --strict)")
