"""Where one plugin worker's memory goes: peak and retained RSS per phase, for one model of a suite.

The script does in one process what a plugin worker does for one model (``runtime.ModelRuntime`` on a
``RunContext`` built from the suite's defaults, ``execute.apply_change`` and ``engine.evaluate``, restore):

1. interpreter start; ``import pytest, xdist`` and the plugin; ``import torch``; ``import transformers`` with
   the Auto classes (together: what every worker holds before it touches a model);
2. model load, token stream and windows;
3. the baseline of run 1 and the calibrated preset (computed in a scratch cache with ``--fresh``: the real
   cache's converted model, corpora and token streams are linked in, its baselines and presets are not;
   otherwise read from the cache, as in ``bench/suite_throughput.py``'s timed run);
4. per selected scenario run: apply the change (edit backups), evaluate, restore.

Per phase it prints: RSS at the end; the phase's peak RSS (``VmHWM``, reset at the start of every phase through
``/proc/self/clear_refs``, so it is exact, not sampled); the peak's rise over the phase's starting RSS; bytes of
torch tensor storage alive at the end (a ``gc`` walk: model, backups, anything kept); and, with
``--tracemalloc``, the peak of Python and numpy allocations. ``--detail`` also splits ``evaluate`` and
``baseline`` into the engine's steps (invariants, spectral, RMT capture, VE, per-window losses, paired metric)
by wrapping them in nested phases; a nested phase's peak is folded into its parent's.

    python bench/worker_memory.py [--suite smoke] [--runs SCENARIO:RUN,...] [--fresh] [--detail]
                                  [--threads 1] [--tracemalloc] [--no-hugepages] [--json OUT]

Like a plugin worker, the script runs with ``glibc.malloc.hugetlb=1`` added to ``GLIBC_TUNABLES`` (it starts itself
again with it; ``--no-hugepages`` keeps the environment as it is).

Linux only (``/proc``). The numbers are RSS of this one process, which is what a worker's peak is made of.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout: the working tree's package

MIB = 1024 * 1024
#: The runs of bench/suite_throughput.py --quick (a clean edit, a stress edit, a fault, a benign edit), then the
#: heaviest kinds of change: a 4-bit RTN of every matrix (backups of the whole model) and a NaN fault.
DEFAULT_RUNS = ("fp8_e5m2_clean:3", "svd_rank32_stress:2", "extreme_quant:1", "svd_rank256_benign:1",
                "quant_4bit_stress:1", "nan_injection:1")
#: Cache entries a --fresh scratch cache links from the real cache (everything but baselines and presets).
LINKED = ("assets", "models", "corpora", "tokens", "hf_datasets")


def _status_kib(field_name: str) -> int:
    text = Path("/proc/self/status").read_text(encoding="ascii")
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"/proc/self/status has no {field_name}; this script needs Linux")
    return int(match.group(1))


def rss() -> int:
    """Resident set size of this process, bytes."""
    return _status_kib("VmRSS") * 1024


def hwm() -> int:
    """Peak resident set size since the last :func:`reset_hwm`, bytes."""
    return _status_kib("VmHWM") * 1024


def reset_hwm() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def live_tensor_bytes() -> int:
    """Bytes of distinct torch storages reachable from live Python objects (0 before torch is imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:  # type(), not isinstance(): a deprecated module proxy warns when its __class__ is read
            if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu":
                storage = obj.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, ReferenceError):  # meta tensors, dead weak proxies
            continue
    return sum(seen.values())


@dataclass
class Row:
    name: str
    depth: int
    seconds: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    peak: int = 0
    tensors: int = 0
    py_peak: int | None = None

    def line(self) -> str:
        py = f"{self.py_peak / MIB:8.1f}" if self.py_peak is not None else "     n/a"
        return (f"{'  ' * self.depth + self.name:<44} {self.seconds:7.1f} {self.rss_after / MIB:8.0f} "
                f"{self.peak / MIB:8.0f} {(self.peak - self.rss_before) / MIB:+8.0f} {self.tensors / MIB:8.0f} {py}")


@dataclass
class Phases:
    """Nested phases; a phase's peak covers its children (``VmHWM`` is reset per phase, so it is carried up)."""

    trace: bool
    rows: list[Row] = field(default_factory=list)
    _stack: list[tuple[Row, int]] = field(default_factory=list)  # (row, peak seen before the current child)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._stack:  # remember the parent's peak so far: resetting VmHWM below would lose it
            parent, seen = self._stack[-1]
            self._stack[-1] = (parent, max(seen, hwm()))
        gc.collect()
        row = Row(name, len(self._stack), rss_before=rss())
        self.rows.append(row)
        self._stack.append((row, 0))
        reset_hwm()
        if self.trace:
            tracemalloc.reset_peak()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            row.seconds = time.perf_counter() - t0
            _, seen = self._stack.pop()
            row.peak = max(seen, hwm())
            if self.trace:
                row.py_peak = tracemalloc.get_traced_memory()[1]
            gc.collect()
            row.rss_after = rss()
            row.tensors = live_tensor_bytes() if row.depth == 0 else 0
            if self._stack:
                parent, pseen = self._stack[-1]
                self._stack[-1] = (parent, max(pseen, row.peak))
            print(row.line(), flush=True)

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        """Replace ``owner.attr`` by a wrapper that runs it as a nested phase named ``label``."""
        fn: Callable[..., Any] = getattr(owner, attr)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self.phase(label):
                return fn(*args, **kwargs)

        setattr(owner, attr, wrapped)


def start_as_worker(script: str, args: list[str]) -> None:
    """Run ``script`` again with the glibc tunables a plugin worker starts with (glibc reads them at start, so
    the process execs itself, as xdist starts a worker); returns when they are already set."""
    from pytest_proofpack.malloc import worker_glibc_tunables

    tunables = worker_glibc_tunables(os.environ)
    if tunables is not None:
        os.environ["GLIBC_TUNABLES"] = tunables
        os.execv(sys.executable, [sys.executable, os.path.abspath(script), *args])


def worker_threads(threads: int) -> None:
    """The thread settings of a scheduled CPU worker; before torch is imported."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PROOFPACK_TORCH_THREADS"):
        os.environ[name] = str(threads)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def parse_runs(ap: argparse.ArgumentParser, value: str) -> list[tuple[str, int]]:
    """``--runs SCENARIO:RUN,...`` as ``[(scenario, run)]``; a malformed item is a usage error."""
    wanted = []
    for item in filter(None, (s.strip() for s in value.split(","))):
        scenario, _, run = item.rpartition(":")
        if not scenario or not run.isdigit():
            ap.error(f"--runs: {item!r} is not SCENARIO:RUN (e.g. nan_injection:1)")
        wanted.append((scenario, int(run)))
    return wanted


def scratch_cache(real: Path) -> Path:
    """A temporary cache holding links to ``real``'s converted models and token streams, no baselines/presets."""
    tmp = Path(tempfile.mkdtemp(prefix="worker_memory_cache_"))
    for name in LINKED:
        if (real / name).exists():
            (tmp / name).symlink_to(real / name, target_is_directory=True)
    return tmp


def build_runtime(suite_name: str, cache: Path, run_dir: Path) -> tuple[Any, list[Any]]:
    """The worker's ``ModelRuntime`` for the suite's only model, with the plugin's default options."""
    from pytest_proofpack.catalog import load_catalog
    from pytest_proofpack.options import _SPECS, Options
    from pytest_proofpack.registries import default_registries
    from pytest_proofpack.runtime import ModelRuntime, RunContext

    values = {spec.name.replace("-", "_"): spec.default for spec in _SPECS}
    values.update(suite=suite_name, cache=cache, out=run_dir, device="cpu")
    options = Options(**values)
    catalog = load_catalog()
    suite = catalog.suite(suite_name)
    cases = [c for c in catalog.expand(suite_name) if c.skip_reason is None]
    keys = {c.model.key for c in cases}
    if len(keys) != 1:
        raise SystemExit(f"--suite {suite_name}: has models {sorted(keys)}; this script measures a one-model suite")
    ctx = RunContext(options, catalog, suite, run_dir, cache, {}, "bench", dict(catalog.datasets[suite.dataset]),
                     registries=default_registries())
    return ModelRuntime(ctx, cases[0].model), cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--suite", default="smoke", help="a one-model suite of suites.yaml (default smoke)")
    ap.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="SCENARIO:RUN,... to evaluate, in order")
    ap.add_argument("--cache", type=Path, default=None, help="proofpack cache (default $PROOFPACK_CACHE or "
                    "~/.cache/pytest_proofpack) holding the fetched assets")
    ap.add_argument("--fresh", action="store_true", help="compute the baseline and the preset (scratch cache)")
    ap.add_argument("--detail", action="store_true", help="split baseline/evaluate into the engine's steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a plugin worker's share; default 1)")
    ap.add_argument("--tracemalloc", action="store_true", help="also trace Python/numpy allocation peaks")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--no-hugepages", action="store_true", help="do not start with the glibc tunables a plugin "
                    "worker starts with (glibc.malloc.hugetlb=1, see pytest_proofpack.malloc)")
    a = ap.parse_args(argv)
    if a.threads < 1:
        ap.error("--threads must be >= 1")
    if not a.no_hugepages:
        start_as_worker(__file__, sys.argv[1:] if argv is None else argv)
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}")
    worker_threads(a.threads)
    env_cache = os.environ.get("PROOFPACK_CACHE")
    real_cache = (a.cache or (Path(env_cache) if env_cache else Path.home() / ".cache" / "pytest_proofpack"))
    real_cache = real_cache.expanduser().resolve()
    wanted = parse_runs(ap, a.runs)
    if a.tracemalloc:
        tracemalloc.start()
    ph = Phases(a.tracemalloc)
    print(f"{'phase':<44} {'s':>7} {'rss MiB':>8} {'peak':>8} {'rise':>8} {'tensors':>8} {'py peak':>8}")
    reset_hwm()
    ph.rows.append(Row("python interpreter", 0, rss_before=rss(), rss_after=rss(), peak=hwm()))
    print(ph.rows[-1].line(), flush=True)
    with ph.phase("import pytest, xdist, plugin"):
        import pytest  # noqa: F401
        import xdist  # noqa: F401

        import pytest_proofpack.plugin  # noqa: F401
    with ph.phase("import torch"):
        import torch
    with ph.phase("import transformers (Auto classes)"):
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

        import pytest_proofpack.engine.evaluate as engine_evaluate
    irreducible = rss()
    work = Path(tempfile.mkdtemp(prefix="worker_memory_run_"))
    cache = scratch_cache(real_cache) if a.fresh else real_cache
    runtime, cases = build_runtime(a.suite, cache, work)
    by_key = {(c.scenario.id, c.run): c for c in cases}
    missing = [f"{s}:{r}" for s, r in wanted if (s, r) not in by_key]
    if missing:
        raise SystemExit(f"--runs: {', '.join(missing)} not in suite {a.suite!r} (runs: "
                         f"{', '.join(sorted({c.scenario.id for c in cases}))})")
    if a.detail:
        from pytest_proofpack.engine.guards import invariants, rmt, spectral, variance

        for owner, attr, label in ((engine_evaluate, "window_losses", "per-window losses (both arms)"),
                                   (engine_evaluate, "paired_primary_metric", "paired metric + bootstrap"),
                                   (spectral, "measure", "spectral.measure"), (rmt, "capture", "rmt.capture"),
                                   (variance, "assess", "variance.assess"),
                                   (invariants, "validate", "invariants.validate")):
            ph.wrap(owner, attr, label)
    from pytest_proofpack.execute import apply_change, probes_for

    with ph.phase("load model"):
        model = runtime.model
    with ph.phase("token stream + windows (run 1)"):
        runtime.windows(1)
    with ph.phase("baseline run 1" + (" (computed)" if a.fresh else " (cache)")):
        runtime.baseline(1)
    with ph.phase("calibrated preset" + (" (computed)" if a.fresh else " (cache)")):
        runtime.preset  # noqa: B018
    for scenario, run in wanted:
        case = by_key[(scenario, run)]
        with ph.phase(f"{scenario}:run{run} windows+baseline"):
            preview, final = runtime.windows(run)
            baseline = runtime.baseline(run)
        with ph.phase(f"{scenario}:run{run} apply"):
            change = apply_change(case, runtime)
        try:
            with ph.phase(f"{scenario}:run{run} evaluate"):
                context = {"model": case.model.key, "scenario": case.scenario.id, "run": run,
                           "edit": dict(change.metadata), "probes": probes_for(case)}
                engine_evaluate.evaluate(model, baseline, preview, final, runtime.preset, runtime.engine,
                                         context=context)
        finally:
            with ph.phase(f"{scenario}:run{run} restore"):
                change.restore()
                del change
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = max(r.peak for r in ph.rows)
    fp32 = float(runtime.entry.params_b) * 1e9 * 4
    print(f"model parameters: {params / MIB:.0f} MiB ({torch.get_num_threads()} torch threads); "
          f"fp32 size from params_b: {fp32 / MIB:.0f} MiB")
    net = peak - irreducible
    print(f"irreducible (interpreter + pytest/xdist/plugin + torch + transformers imports): "
          f"{irreducible / MIB:.0f} MiB")
    print(f"peak RSS {peak / MIB:.0f} MiB = {peak / fp32:.2f} x fp32; net of the imports {net / MIB:.0f} MiB = "
          f"{net / fp32:.2f} x fp32")
    if a.json:
        a.json.write_text(json.dumps({"rows": [vars(r) for r in ph.rows], "irreducible": irreducible, "peak": peak,
                                      "fp32_model_bytes": fp32, "params_bytes": params}, indent=2) + "\n",
                          encoding="utf-8")
    print(f"peak_rss_x_fp32={peak / fp32:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
