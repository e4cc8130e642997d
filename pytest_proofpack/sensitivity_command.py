"""``proofpack sensitivity``: sweep fault families over magnitude ladders on one model and write sensitivity.json.

The model is loaded once with its suite's settings and calibrated preset (calibrating when none is cached, as a
pytest session would); every family (:mod:`pytest_proofpack.sensitivity_families`) is applied at every rung on
``--samples`` window samples of the evaluation pool, judged by the engine and restored exactly
(:mod:`pytest_proofpack.sensitivity`). ``--out DIR`` receives ``sensitivity.json`` (``proofpack_sensitivity_v1``)
and ``sensitivity.html`` (the curves, self-contained); with ``DIR`` a run directory, the next pack built from it
carries the document as ``results/sensitivity.json``. A user's fault joins the sweep with ``--plugin MODULE`` (a
module with a ``pytest_proofpack_register_faults(registry)`` function, as a plugin or conftest defines it) and
``--fault-family NAME=FAULT:ENV_KEY:r1,r2,...[:lower]``. Exit 0 when the document was written, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any

from pytest_proofpack.cli_args import add_catalog_options
from pytest_proofpack.errors import CatalogError, OptionError
from pytest_proofpack.results import atomic_write_text

__all__ = ["SENSITIVITY_FILE", "add_sensitivity", "run_sensitivity"]

SENSITIVITY_FILE = "sensitivity.json"


def add_sensitivity(subparsers: Any) -> None:
    """Register ``proofpack sensitivity`` on the console script's subparsers."""
    p = subparsers.add_parser(
        "sensitivity", help="detection rate of each guard against the magnitude of graded changes",
        description="Sweeps fault families over magnitude ladders on one model (each rung on several window "
        "samples, evaluated by the engine and restored exactly) and writes sensitivity.json and sensitivity.html: "
        "per detector, the detection rate per rung with its exact 95 % interval and the smallest magnitude detected "
        "in >= 95 % of runs, bracketed by the rungs around it.")
    p.add_argument("--model", required=True, help="model key (or hub id) of the suite")
    p.add_argument("--suite", default="smoke", help="suite whose settings, dataset and preset are used")
    p.add_argument("--families", help="comma-separated built-in families (default: all of them)")
    p.add_argument("--fault-family", action="append", default=[], metavar="SPEC",
                   help="a registered fault swept through one env key: NAME=FAULT:ENV_KEY:r1,r2,...[:higher|lower]")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE and call its pytest_proofpack_register_faults(registry), if it has one")
    p.add_argument("--samples", type=int, default=3, help="window samples per rung (default 3)")
    p.add_argument("--out", required=True, help="directory for sensitivity.json (a run directory to pack it)")
    p.add_argument("--tier", default="balanced", choices=("conservative", "balanced", "aggressive"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model runs")
    p.add_argument("--seed", type=int, default=42, help="base seed of the window samples and the bootstrap")
    p.add_argument("--presets", metavar="DIR", help="directory of calibrated_preset_<model>.json to reuse (a run's "
                   "metadata/presets) instead of calibrating")
    p.add_argument("--calibration-runs", type=int, metavar="N", help="calibration runs when no preset is cached "
                   "(default: the suite's)")
    p.add_argument("--tuned-params", metavar="PATH", help="tuned_edit_params.json to use instead of the shipped one")
    add_catalog_options(p)
    p.set_defaults(func=run_sensitivity)


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def _families(args: argparse.Namespace, registries: Any) -> list[Any]:
    from pytest_proofpack.sensitivity_families import parse_fault_family, select_families

    for name in args.plugin:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise OptionError(f"--plugin {name}: cannot import it ({exc})") from None
        hook = getattr(module, "pytest_proofpack_register_faults", None)
        if callable(hook):
            hook(registry=registries.faults)
    extra = [parse_fault_family(text, registries.faults) for text in args.fault_family]
    names = [n.strip() for n in args.families.split(",") if n.strip()] if args.families else None
    return select_families(names, extra)


def _show(family: str, run: dict[str, Any]) -> None:
    """One line per finished run: sample, family at magnitude, ratio, the detectors that fired (or the error)."""
    hits = ",".join(d for d, v in run["fired"].items() if v and d != "any") or "-"
    ratio = run["ratio"] if not isinstance(run["ratio"], float) else f"{run['ratio']:.4f}"
    what = f"error {run['error']}" if run["error"] else f"ratio {ratio} fired {hits}"
    print(f"  sample {run['sample']} {family}@{run['magnitude']:g}: {what} ({run['seconds']:.0f} s)", flush=True)


def run_sensitivity(args: argparse.Namespace) -> int:
    from pytest_proofpack import progress
    from pytest_proofpack.assets import cache_root
    from pytest_proofpack.catalog import load_catalog
    from pytest_proofpack.html_sensitivity import render_page
    from pytest_proofpack.options import default_options
    from pytest_proofpack.registries import default_registries
    from pytest_proofpack.runtime import ModelRuntime, RunContext
    from pytest_proofpack.sensitivity import SweepTarget, sweep_model
    from pytest_proofpack.sensitivity_summary import document, family_line

    if args.samples < 1:
        raise OptionError(f"--samples {args.samples}: give at least 1 window sample")
    if args.calibration_runs is not None and args.calibration_runs < 1:
        raise OptionError(f"--calibration-runs {args.calibration_runs}: give at least 1")
    catalog = load_catalog(None, _path(args.suites), _path(args.tuned_params))
    cache = _path(args.cache) or cache_root()
    try:
        suite = catalog.suite(args.suite)
    except CatalogError as exc:  # the catalog names the pytest option; here it is --suite
        raise CatalogError(str(exc).replace("--proofpack-suite", "--suite")) from None
    registries = default_registries()
    families = _families(args, registries)
    entry = catalog.resolve_models(suite, [args.model], env={})[0]
    out = Path(args.out)
    options = default_options(suite=suite.name, cache=cache, out=out, tier=args.tier, device=args.device,
                              seed=args.seed, presets=_path(args.presets), calibration_runs=args.calibration_runs)
    ctx = RunContext(options, catalog, suite, out, options.cache_root(), {}, "sensitivity",
                     dict(catalog.datasets[suite.dataset]), registries=registries)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runtime = ModelRuntime(ctx, entry)
    try:
        with progress.reporting(progress.print_sink()):
            target = SweepTarget(runtime.model, entry.key, runtime.preset, runtime.engine,
                                 lambda seed: runtime.make_windows(seed, "evaluation"))
            print(f"proofpack sensitivity: {entry.key}: {len(families)} families x {args.samples} samples",
                  flush=True)
            swept = sweep_model(target, families, range(args.samples), on_run=_show)
        doc = document({entry.key: swept}, engine=runtime.engine, created_utc=started, extra={"suite": suite.name})
    finally:
        runtime.close()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SENSITIVITY_FILE, json.dumps(doc, indent=1) + "\n")
    atomic_write_text(out / "sensitivity.html", render_page(doc))
    for name, fam in doc["models"][entry.key]["families"].items():
        print(f"  {family_line(name, fam)}")
    print(f"proofpack sensitivity: wrote {out / SENSITIVITY_FILE}")
    return 0
