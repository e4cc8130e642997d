"""``proofpack tune``: measure every clean edit kind's setting for a suite's models and write tuned_edit_params.

The same measurement runs automatically inside a pytest session for a model without a tuned entry; this command
runs it up front and writes the entries (with their evidence) to a ``tuned_edit_params_v1`` file, so they can be
reviewed, committed and passed back with ``--proofpack-tuned-params``. Existing entries of other models in the
output file are kept; the tuned models' entries are replaced.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_proofpack.errors import CatalogError, OptionError
from pytest_proofpack.results import atomic_write_text

TUNED_SCHEMA = "tuned_edit_params_v1"


def add_tune(subparsers: Any) -> None:
    """Register ``proofpack tune`` on the console script's subparsers."""
    p = subparsers.add_parser(
        "tune", help="measure clean-edit parameters for a suite's models (writes tuned_edit_params.json)",
        description="Walks each clean edit kind's ladder on tuning windows (a pool of the corpus no scenario or "
        "calibration run uses) and keeps the strongest setting whose ratio's upper bound stays within half the "
        "tier's budget. Exit 0 when every model was tuned, 2 on a usage error.")
    p.add_argument("--suite", required=True, help="the suite whose models and clean scenarios are tuned")
    p.add_argument("--models", help="comma-separated model keys or hub ids (default: the suite's)")
    p.add_argument("--out", default="tuned_edit_params.json", help="file to write (merged when it exists)")
    p.add_argument("--scenarios", type=Path, help="scenarios.json to use instead of the shipped one")
    p.add_argument("--suites", type=Path, help="suites.yaml to use instead of the shipped one")
    p.add_argument("--cache", type=Path, help="cache directory (default $PROOFPACK_CACHE)")
    p.add_argument("--tier", default="balanced", choices=("conservative", "balanced", "aggressive"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model runs")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: the model's)")
    p.add_argument("--seed", type=int, default=42, help="seed of the window pools and the bootstrap")
    p.set_defaults(func=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    from pytest_proofpack.catalog import load_catalog

    catalog = load_catalog(args.scenarios, args.suites, None)
    try:
        suite = catalog.suite(args.suite)
    except CatalogError as exc:  # the catalog names the pytest option; here it is --suite
        raise CatalogError(str(exc).replace("--proofpack-suite", "--suite")) from None
    keys = [k.strip() for k in args.models.split(",") if k.strip()] if args.models else None
    models = catalog.resolve_models(suite, keys, env={})
    out = Path(args.out)
    document = _existing(out)
    from pytest_proofpack import progress

    with tempfile.TemporaryDirectory(prefix="proofpack_tune_") as scratch, progress.reporting(progress.print_sink()):
        for entry in models:
            measured = _tune_model(args, catalog, suite, entry, Path(scratch))
            document["models"][entry.key] = measured
            atomic_write_text(out, json.dumps(document, indent=2, sort_keys=False) + "\n")
    print(f"proofpack tune: wrote {out} ({len(models)} model(s))")
    return 0


def _tune_model(args: argparse.Namespace, catalog: Any, suite: Any, entry: Any, run_dir: Path) -> dict[str, Any]:
    from pytest_proofpack.options import default_options
    from pytest_proofpack.registries import default_registries
    from pytest_proofpack.runtime import ModelRuntime, RunContext
    from pytest_proofpack.tuned import ModelTuning

    options = default_options(suite=suite.name, cache=args.cache, out=run_dir, tier=args.tier, device=args.device,
                              dtype=args.dtype, seed=args.seed)
    ctx = RunContext(options, catalog, suite, run_dir, options.cache_root(), {}, "tune",
                     dict(catalog.datasets[suite.dataset]), registries=default_registries())
    runtime = ModelRuntime(ctx, entry)
    try:
        tuning = ModelTuning(runtime, measure_all=True)
        print(f"proofpack tune: {entry.key}: tuning {', '.join(tuning.clean_scopes())} "
              f"on {len(tuning.windows())} tuning windows", flush=True)
        measured = tuning.measured()
    finally:
        runtime.close()
    for kind, tuned in measured.items():
        print(f"  {kind:16} {summary(tuned)}")
    return measured


def summary(tuned: Mapping[str, Any]) -> str:
    """One line: the selected setting and its evidence, or why the kind was skipped."""
    rungs = tuned.get("evidence", {}).get("rungs", [])
    walked = ", ".join(f"{_params(r['params'])}→{_ratio(r)}" for r in rungs)
    if tuned.get("status") != "selected":
        return f"skipped: {tuned.get('reason')} [walked {walked}]"
    chosen = {k: v for k, v in tuned.items() if k not in ("status", "reason", "evidence")}
    return f"{_params(chosen)} [walked {walked}]"


def _params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _ratio(rung: Mapping[str, Any]) -> str:
    ci = rung.get("ci")
    mark = "ok" if rung.get("within_budget") else "over"
    return f"{rung['ratio']:.3f}(≤{ci[1]:.3f},{mark})" if ci else "non-finite"


def _existing(path: Path) -> dict[str, Any]:
    """The output file's document when it is a tuned_edit_params_v1 file, else a new one."""
    fresh: dict[str, Any] = {"_meta": {"schema": TUNED_SCHEMA, "schema_version": 1,
                                       "notes": "Written by proofpack tune: every entry carries its evidence."},
                             "models": {}}
    if not path.exists():
        return fresh
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise OptionError(f"--out {path}: exists but is not JSON ({exc}); remove it or pick another file") from None
    if not isinstance(document, dict) or (document.get("_meta") or {}).get("schema") != TUNED_SCHEMA:
        raise OptionError(f"--out {path}: exists but is not a {TUNED_SCHEMA} file; remove it or pick another file")
    document.setdefault("models", {})
    return document
