"""Suite throughput: the plugin (``pytest --proofpack-suite smoke -n N``) vs a reference-style naive flow.

Both flows run the same scenario runs of the smoke suite (SmolLM2-135M, CPU) on the same evaluation windows
(``data.windows.make_eval_windows`` on the same token stream, seed ``42 + 7919 * (run - 1)`` per run, like
``ModelRuntime.windows``) with the same edit/fault functions and seeds (``apply_edit``/``apply_fault``, seed
``42 + run``), and the same parallelism and threads.

plugin
    ``python -m pytest --proofpack-suite smoke -n N --proofpack-out <tmp> --proofpack-cache <cache> -p
    no:cacheprovider --proofpack-rerun --proofpack-device cpu`` as a subprocess (how users run it), from a
    scratch working directory, with the scenario runs that are not selected passed as ``--deselect`` node
    ids. Wall time covers everything the user waits for: interpreter and worker start-up, collection, one
    model load per worker, every scenario (edit, guard chain, batched evaluation, restore), the verdict and
    the signed pack. Scenario runs are counted from ``<tmp>/records/``. Cold-cache costs are *warmed first
    and excluded* (printed separately): GGUF conversion, corpus tokenization, the calibrated preset (5 null
    runs) and the baseline of each run index used, all of which the plugin caches on disk across
    invocations. The warm-up is one plugin run (no ``-n``) of the first selected case of each run index into
    a throwaway run directory.

naive
    Mimics the reference harness's per-scenario cost (reference-harness.md §5/§11, reference-engine.md §0,
    §1.1-1.2, §11): per scenario run, (1) load the model fresh (``models.sources.load_model`` on the smoke
    entry, from the cached converted HF directory), evaluate the *baseline* on the preview and final
    windows, apply the edit/fault, ``save_pretrained`` the edited model (and tokenizer) to a temp dir and
    free it; (2) load the edited checkpoint back from disk and evaluate it (the reference's guarded subject
    run); (3) load it back again and evaluate it once more (the reference's bare control run); compute the
    final-window ratio exp(mean(l_subject - l_baseline)). Each evaluation is one batch-1 forward per window
    with the window right-padded to 2 x seq_len (pad = the tokenizer's pad or EOS id, attention mask 0 and
    labels -100 on the pad, HF mean loss). That emulates the reference's padded text lines (one WikiText
    line padded to 512, mostly pad): our windows are full ``seq_len`` rows of real text, so half of each
    padded row is padding. If an edited checkpoint cannot be saved or loaded back (a structural fault), the
    model is reloaded fresh, the change is re-applied in memory and both subject evaluations run on it
    (still three loads). Deliberately *left out* of the naive flow, which favours it (the ratio is a lower
    bound): the reference's guard chain (guards.prepare + validate), its calibration runs, and its per-run
    data preparation (windows are built once, outside the timed part). Parallelism: N spawned worker
    processes (``multiprocessing`` pool, one scenario run per task, dynamic dispatch), each with the same
    torch thread count as a plugin worker, ``max(1, physical cores // N)`` (the value the plugin's scheduler
    gives each ``-n`` worker; the bench passes it to both flows explicitly), and the glibc tunables a plugin
    worker starts with (``glibc.malloc.hugetlb=1``, :mod:`pytest_proofpack.malloc`). This is the fair option:
    the same number of processes each holding a model, the same cores and malloc settings per process. Wall
    time runs from the pool's creation (worker start-up and imports included, like xdist's) to the last result.

Peak RSS: a sampler thread reads the RSS of every process of each flow's tree every 0.5 s (psutil) and
reports the maximum per process: the pytest controller and each ``-n`` worker (its python child processes);
each naive pool worker. Each peak is also given as a multiple of the model's fp32 size (``params_b`` x 1e9 x
4 bytes).

    python bench/suite_throughput.py [--workers 2] [--scenarios K [--spread]] [--cache DIR] [--quick]
                                     [--plugin-only] [--json OUT]

``--scenarios K --spread`` runs K scenario runs spread evenly over the suite (indices ``(2i+1)n/2k``) instead of
the first K. ``--quick`` runs 4 scenario runs spread that way (smoke: a clean edit, a stress edit, a fault, a
benign edit; the smoke suite's windows, n_final 16) to test the script end to end. The last line printed is
``throughput_ratio=<plugin scenarios per hour / naive scenarios per hour>``. ``--plugin-only`` skips the naive
flow (a memory check: issue 9's peak-RSS goal); its last line is
``peak_rss_x_fp32=<the largest worker peak / the model's fp32 size>``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout: the working tree's package, also in spawned workers

SUITE = "smoke"
SEED = 42  # the plugin's --proofpack-seed default
SAMPLE_INTERVAL_S = 0.5
MIB = 1024 * 1024


@dataclass(frozen=True)
class Selected:
    """One scenario run, in picklable form: what both flows need to run it."""

    model: str
    scenario: str
    run: int
    kind: str
    edit_spec: str | None
    error_type: str | None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def nodeid(self) -> str:
        return f"proofpack::test_scenario[{self.model}:{self.scenario}:run{self.run}]"


@dataclass
class FlowResult:
    name: str
    wall_s: float
    scenario_runs: int
    outcomes: dict[str, int]
    peaks: dict[str, int]  # process label -> peak RSS bytes
    notes: list[str] = field(default_factory=list)

    @property
    def per_hour(self) -> float:
        return self.scenario_runs / self.wall_s * 3600.0 if self.wall_s > 0 else 0.0


# ---------------------------------------------------------------------------------------------- selection


def suite_cases() -> tuple[list[Selected], Any]:
    """Every runnable scenario run of the smoke suite in collection order, and the model's catalog entry."""
    from pytest_proofpack.catalog import load_catalog

    catalog = load_catalog()
    cases = catalog.expand(SUITE)  # the plugin's defaults: 3 clean runs, 2 stress runs, faults once
    out = []
    for c in cases:
        if c.skip_reason:
            continue  # skipped by the tuned params: neither flow runs it
        gen = c.scenario.generation
        out.append(Selected(
            c.model.key, c.scenario.id, c.run, c.scenario.kind, c.edit_spec,
            str(gen["error_type"]) if c.scenario.kind == "error" else None,
            {str(k): str(v) for k, v in (gen.get("env") or {}).items()},
        ))
    models = {c.model.key for c in cases}
    if len(models) != 1:
        raise SystemExit(f"suite {SUITE!r} has models {sorted(models)}; this bench expects exactly one")
    return out, catalog.models[models.pop()]


def pick(cases: list[Selected], k: int | None, spread: bool) -> list[Selected]:
    """The first ``k`` runs, or ``k`` runs spread evenly (indices ``(2i+1)n/2k``) when ``spread``."""
    if k is None or k >= len(cases):
        return list(cases)
    if spread:
        return [cases[(2 * i + 1) * len(cases) // (2 * k)] for i in range(k)]
    return cases[:k]


# ---------------------------------------------------------------------------------------------- RSS sampling


class RssSampler(threading.Thread):
    """Peak RSS per process of ``root``'s tree (``root`` itself only when ``include_root``)."""

    def __init__(self, root: int, *, include_root: bool) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.include_root = include_root
        self.peaks: dict[int, int] = {}
        self.cmdlines: dict[int, str] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._stop_event.is_set():
            try:
                root = psutil.Process(self.root)
                procs = ([root] if self.include_root else []) + root.children(recursive=True)
            except psutil.Error:
                return
            for p in procs:
                try:
                    rss = int(p.memory_info().rss)
                    if p.pid not in self.cmdlines:
                        self.cmdlines[p.pid] = " ".join(p.cmdline())[:200]
                except psutil.Error:
                    continue  # exited between listing and reading
                self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), rss)
            self._stop_event.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# ---------------------------------------------------------------------------------------------- plugin flow


def _thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PROOFPACK_TORCH_THREADS"):
        env[name] = str(threads)
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU benchmark, also on a machine with a GPU
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def plugin_command(out: Path, cache: Path, workers: int | None, deselect: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "--proofpack-suite", SUITE, f"--proofpack-out={out}",
           f"--proofpack-cache={cache}", "-p", "no:cacheprovider", "--proofpack-rerun",
           "--proofpack-device", "cpu", "-q"]
    if workers is not None:
        cmd += ["-n", str(workers)]
    for nodeid in deselect:
        cmd += ["--deselect", nodeid]
    return cmd


def _run_pytest(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, float, RssSampler]:
    t0 = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        sampler = RssSampler(proc.pid, include_root=True)
        sampler.start()
        rc = proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop()
    return rc, wall, sampler


def _check_exit(rc: int, log: Path, complete: bool) -> str | None:
    """0/1 are fine (1: a test or the verdict failed; a partial selection fails the verdict). Another status
    (e.g. an INTERNALERROR after the last test) is a note when every record was written, else fatal."""
    if rc in (0, 1):
        return None
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    if not complete:
        raise SystemExit(f"pytest exited {rc}; see {log}:\n" + "\n".join(lines[-30:]))
    last_error = next((ln for ln in reversed(lines) if ln.startswith("INTERNALERROR> ") and "Error" in ln), "")
    return f"pytest exited {rc} after writing every record ({last_error.removeprefix('INTERNALERROR> ')}); see {log}"


def warm_up(all_cases: list[Selected], selected: list[Selected], work: Path, cache: Path) -> float:
    """A plugin run of the first selected case of each run index: fills the caches the timed run reads."""
    keep: dict[int, Selected] = {}
    for c in selected:
        keep.setdefault(c.run, c)
    wanted = {c.nodeid for c in keep.values()}
    deselect = [c.nodeid for c in all_cases if c.nodeid not in wanted]
    cmd = plugin_command(work / "warm_run", cache, None, deselect)
    env = _thread_env(os.cpu_count() or 1)
    rc, wall, _ = _run_pytest(cmd, work, env, work / "warm_up.log")
    outcomes = _records(work / "warm_run", wanted)  # an erroring scenario would make the timed run meaningless
    _check_exit(rc, work / "warm_up.log", sum(outcomes.values()) == len(wanted))
    return wall


def _records(out: Path, wanted: set[str]) -> dict[str, int]:
    """Outcome counts of the records of ``wanted`` node ids; SystemExit naming the first error record."""
    outcomes: dict[str, int] = {}
    for path in sorted((out / "records").glob("*/*/run_*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        nodeid = f"proofpack::test_scenario[{rec['model']}:{rec['scenario']}:run{rec['run']}]"
        if nodeid not in wanted:
            continue
        if rec["outcome"] == "error":
            raise SystemExit(f"{nodeid} errored in {out} ({rec.get('error_class')}: {rec.get('error_message')}); "
                             "an infrastructure error makes the timing meaningless, fix it first")
        outcomes[rec["outcome"]] = outcomes.get(rec["outcome"], 0) + 1
    return outcomes


def run_plugin(all_cases: list[Selected], selected: list[Selected], work: Path, cache: Path, workers: int,
               threads: int) -> FlowResult:
    out = work / "plugin_run"
    wanted = {c.nodeid for c in selected}
    cmd = plugin_command(out, cache, workers, [c.nodeid for c in all_cases if c.nodeid not in wanted])
    rc, wall, sampler = _run_pytest(cmd, work, _thread_env(threads), work / "plugin.log")
    outcomes = _records(out, wanted)
    runs = sum(n for o, n in outcomes.items() if o != "skipped")
    peaks: dict[str, int] = {}
    workers_seen = 0
    for pid, peak in sorted(sampler.peaks.items()):
        if pid == sampler.root:
            peaks["controller"] = peak
        elif "python" in sampler.cmdlines.get(pid, "").lower():
            peaks[f"worker{workers_seen}"] = peak
            workers_seen += 1
    note = _check_exit(rc, work / "plugin.log", runs == len(selected))
    notes = [note] if note else []
    if runs != len(selected):
        notes.append(f"{len(selected)} scenario runs selected but {runs} records found in {out / 'records'}")
    return FlowResult("plugin", wall, runs, outcomes, peaks, notes)


# ---------------------------------------------------------------------------------------------- naive flow

_STATE: dict[str, Any] = {}


def _set_threads(threads: int) -> None:
    # Before torch is imported in this process, so OpenMP starts with this many threads.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    torch.set_num_threads(threads)


def naive_prepare(cache: str, runs: list[int]) -> dict[str, Any]:
    """In a throwaway process: the converted model's token stream and each run's windows (plain arrays)."""
    from transformers.utils import logging as hf_logging

    from pytest_proofpack.catalog import load_catalog
    from pytest_proofpack.data import DatasetSpec, load_text, tokenize_corpus
    from pytest_proofpack.data.windows import make_eval_windows
    from pytest_proofpack.models.loading import load_model
    from pytest_proofpack.runtime import RUN_WINDOW_STRIDE

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    catalog = load_catalog()
    suite = catalog.suite(SUITE)
    entry = catalog.models[suite.models[0]]
    loaded = load_model(entry, cache=Path(cache), assets=catalog.assets, suite=SUITE, device="cpu")
    spec = DatasetSpec.from_mapping(catalog.datasets[suite.dataset], "dataset")
    corpus = load_text(spec, cache=Path(cache), assets=catalog.assets, suite=SUITE,
                       base_dir=catalog.paths["suites"].parent)
    tokens = tokenize_corpus(corpus, loaded.tokenizer, cache=Path(cache))
    ev = {"seq_len": 256, "n_preview": 4, "n_final": 16}  # RunContext.eval_settings defaults
    ev.update({k: v for k, v in suite.eval.items() if k in ev})
    ev.update({k: v for k, v in entry.extra.get("eval", {}).items() if k in ev})
    windows = {}
    for run in runs:
        preview, final = make_eval_windows(tokens, ev["seq_len"], ev["n_preview"], ev["n_final"],
                                           SEED + RUN_WINDOW_STRIDE * (run - 1))
        windows[run] = {"preview": preview.input_ids.numpy(), "final": final.input_ids.numpy()}
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {"windows": windows, "pad_id": int(pad if pad is not None else 0), "settings": ev}


def _naive_init(threads: int, cache: str, prepared: dict[str, Any], tmp_root: str) -> None:
    _set_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # one bar per load/save buries the report
    from pytest_proofpack.catalog import load_catalog

    catalog = load_catalog()
    _STATE.update(prepared, cache=Path(cache), catalog=catalog, tmp_root=tmp_root,
                  entry=catalog.models[catalog.suite(SUITE).models[0]])


def padded_losses(model: Any, rows: Any, pad_id: int) -> list[float | None]:
    """The reference's metric forward: batch 1, right-padded to 2 x seq_len, attention mask, labels -100."""
    import torch

    out: list[float | None] = []
    with torch.inference_mode():
        for row in torch.as_tensor(rows):
            n = int(row.shape[0])
            ids = torch.full((1, 2 * n), pad_id, dtype=torch.long)
            ids[0, :n] = row
            mask = torch.zeros_like(ids)
            mask[0, :n] = 1
            try:
                labels = ids.masked_fill(mask == 0, -100)
                loss = float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)
            except (RuntimeError, IndexError, ValueError):  # a broken subject: the window has no loss
                loss = math.nan
            out.append(loss if math.isfinite(loss) else None)
    return out


def _evaluate(model: Any, run: int) -> dict[str, list[float | None]]:
    w = _STATE["windows"][run]
    return {arm: padded_losses(model, w[arm], _STATE["pad_id"]) for arm in ("preview", "final")}


def _apply(model: Any, case: Selected) -> None:
    seed = SEED + case.run  # execute.apply_change's seed
    if case.kind == "edit":
        from pytest_proofpack.edits import apply_edit, parse_edit_spec

        assert case.edit_spec is not None
        apply_edit(model, parse_edit_spec(case.edit_spec), seed=seed)
    else:
        from pytest_proofpack.faults import apply_fault

        assert case.error_type is not None
        apply_fault(model, case.error_type, case.env, seed=seed)


def naive_case(case: Selected) -> dict[str, Any]:
    """One reference-style scenario run: 3 loads, 3 padded batch-1 evaluations, a checkpoint round trip."""
    import gc

    from pytest_proofpack.models.loading import load_model

    t0 = time.perf_counter()
    entry, cache, catalog = _STATE["entry"], _STATE["cache"], _STATE["catalog"]

    def load(e: Any) -> Any:
        return load_model(e, cache=cache, assets=catalog.assets, suite=SUITE, device="cpu").model

    loaded = load_model(entry, cache=cache, assets=catalog.assets, suite=SUITE, device="cpu")
    model = loaded.model  # load 1: the baseline run
    base = _evaluate(model, case.run)
    _apply(model, case)
    subjects: list[dict[str, list[float | None]]] = []
    round_trip = True
    with tempfile.TemporaryDirectory(prefix="edited_", dir=_STATE["tmp_root"]) as tmp:
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            loaded.tokenizer.save_pretrained(tmp)  # a checkpoint directory is loadable on its own
        except Exception:  # a structural fault the checkpoint format cannot hold
            round_trip = False
        del model, loaded
        gc.collect()
        edited = replace(entry, source="local", path=tmp, asset="", gguf_file="")
        for _ in range(2):  # load 2: the guarded subject run; load 3: the bare control run
            subject: Any = None
            if round_trip:
                try:
                    subject = load(edited)
                except Exception:
                    round_trip = False
            if subject is None:  # reload fresh and re-apply the change in memory
                subject = load(entry)
                _apply(subject, case)
            subjects.append(_evaluate(subject, case.run))
            del subject
            gc.collect()
    pairs = [s - b for s, b in zip(subjects[0]["final"], base["final"], strict=True)
             if s is not None and b is not None]
    ratio = math.exp(sum(pairs) / len(pairs)) if pairs else None
    return {"nodeid": case.nodeid, "pid": os.getpid(), "seconds": time.perf_counter() - t0,
            "ratio": ratio if ratio is None or math.isfinite(ratio) else None, "round_trip": round_trip}


def run_naive(selected: list[Selected], work: Path, cache: Path, workers: int, threads: int) -> FlowResult:
    ctx = mp.get_context("spawn")
    runs = sorted({c.run for c in selected})
    with ctx.Pool(1) as prep:  # excluded from timing: data preparation (and its model load) happens once
        prepared = prep.apply(naive_prepare, (str(cache), runs))
    tmp_root = work / "naive_tmp"
    tmp_root.mkdir(exist_ok=True)
    sampler = RssSampler(os.getpid(), include_root=False)
    sampler.start()
    t0 = time.perf_counter()
    init_args = (threads, str(cache), prepared, str(tmp_root))
    from pytest_proofpack.malloc import worker_glibc_tunables

    saved = os.environ.get("GLIBC_TUNABLES")
    tunables = worker_glibc_tunables(os.environ)
    if tunables is not None:  # the plugin's workers start with it; so does the pool (it inherits the environment)
        os.environ["GLIBC_TUNABLES"] = tunables
    try:
        with ctx.Pool(workers, initializer=_naive_init, initargs=init_args) as pool:
            results = list(pool.imap_unordered(naive_case, selected, chunksize=1))
            pool.close()
            pool.join()
    finally:
        if saved is None:
            os.environ.pop("GLIBC_TUNABLES", None)
        else:
            os.environ["GLIBC_TUNABLES"] = saved
    wall = time.perf_counter() - t0
    sampler.stop()
    worker_pids = sorted({r["pid"] for r in results})
    peaks = {f"worker{i}": sampler.peaks.get(pid, 0) for i, pid in enumerate(worker_pids)}
    fallbacks = sum(1 for r in results if not r["round_trip"])
    notes = [f"{fallbacks} edited checkpoint(s) could not round-trip through disk; re-applied in memory"] \
        if fallbacks else []
    outcomes = {"ratio_finite": sum(1 for r in results if r["ratio"] is not None),
                "ratio_non_finite": sum(1 for r in results if r["ratio"] is None)}
    return FlowResult("naive", wall, len(results), outcomes, peaks, notes)


# ---------------------------------------------------------------------------------------------- main


def physical_cores() -> int:
    import psutil

    return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def default_cache() -> Path:
    env = os.environ.get("PROOFPACK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pytest_proofpack"


def describe(r: FlowResult, fp32_bytes: float) -> list[str]:
    lines = [f"{r.name}: {r.scenario_runs} scenario runs in {r.wall_s:.1f} s -> {r.per_hour:.1f} scenarios/h "
             f"({', '.join(f'{k} {v}' for k, v in sorted(r.outcomes.items()))})"]
    for label, peak in r.peaks.items():
        lines.append(f"  peak RSS {label}: {peak / MIB:.0f} MiB = {peak / fp32_bytes:.2f} x fp32 model")
    lines += [f"  note: {n}" for n in r.notes]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="pytest -n workers = naive pool processes")
    ap.add_argument("--scenarios", type=int, default=None, metavar="K", help="only the first K scenario runs")
    ap.add_argument("--cache", type=Path, default=None, help="proofpack cache (default $PROOFPACK_CACHE or "
                    "~/.cache/pytest_proofpack); must hold the fetched smoke assets (`proofpack fetch`)")
    ap.add_argument("--quick", action="store_true", help="4 spread scenario runs (end-to-end check)")
    ap.add_argument("--spread", action="store_true", help="with --scenarios K: K runs spread evenly over the "
                    "suite instead of the first K (every kind of scenario, in a run that fits the time)")
    ap.add_argument("--plugin-only", action="store_true", help="skip the naive flow (no ratio): the plugin's "
                    "time and peak RSS per worker only; the last line is peak_rss_x_fp32=<worst worker>")
    ap.add_argument("--workdir", type=Path, default=None, help="keep run directories and logs here")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    a = ap.parse_args(argv)
    if a.workers < 1:
        ap.error("--workers must be >= 1")
    if a.scenarios is not None and a.scenarios < 1:
        ap.error("--scenarios must be >= 1")
    cache = (a.cache or default_cache()).expanduser().resolve()
    all_cases, entry = suite_cases()
    selected = pick(all_cases, 4 if a.quick and a.scenarios is None else a.scenarios, spread=a.quick or a.spread)
    threads = max(1, physical_cores() // a.workers)
    work = (a.workdir.resolve() if a.workdir else Path(tempfile.mkdtemp(prefix="suite_throughput_")))
    work.mkdir(parents=True, exist_ok=True)
    fp32_bytes = float(entry.params_b) * 1e9 * 4
    print(f"suite {SUITE}, model {entry.key} ({entry.params_b:g}B params, fp32 {fp32_bytes / MIB:.0f} MiB); "
          f"{len(selected)} of {len(all_cases)} scenario runs; workers {a.workers} x {threads} torch threads "
          f"({physical_cores()} physical cores); cache {cache}; workdir {work}", flush=True)
    print("  runs: " + ", ".join(f"{c.scenario}:run{c.run}" for c in selected), flush=True)
    try:
        warm = warm_up(all_cases, selected, work, cache)
        print(f"warm-up (excluded): {warm:.1f} s (GGUF conversion, tokenization, calibrated preset, "
              f"baselines of runs {sorted({c.run for c in selected})})", flush=True)
        plugin = run_plugin(all_cases, selected, work, cache, a.workers, threads)
        for line in describe(plugin, fp32_bytes):
            print(line, flush=True)
        if a.plugin_only:
            workers = [v for k, v in plugin.peaks.items() if k != "controller"]
            worst = max(workers, default=0) / fp32_bytes
            if a.json:
                a.json.write_text(json.dumps({
                    "workers": a.workers, "threads_per_worker": threads, "selected": [c.nodeid for c in selected],
                    "warm_up_s": warm, "fp32_model_bytes": fp32_bytes, "peak_rss_x_fp32": worst,
                    "flows": [{**asdict(plugin), "scenarios_per_hour": plugin.per_hour}],
                }, indent=2) + "\n", encoding="utf-8")
            print(f"peak_rss_x_fp32={worst:.3f}")
            return 0
        naive = run_naive(selected, work, cache, a.workers, threads)
        for line in describe(naive, fp32_bytes):
            print(line, flush=True)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    ratio = plugin.per_hour / naive.per_hour if naive.per_hour > 0 else math.inf
    print(f"scenarios/h: plugin {plugin.per_hour:.1f}, naive {naive.per_hour:.1f}; "
          f"plugin / naive = {ratio:.2f}")
    if a.json:
        a.json.write_text(json.dumps({
            "workers": a.workers, "threads_per_worker": threads, "selected": [c.nodeid for c in selected],
            "warm_up_s": warm, "fp32_model_bytes": fp32_bytes, "throughput_ratio": ratio,
            "flows": [{**asdict(r), "scenarios_per_hour": r.per_hour} for r in (plugin, naive)],
        }, indent=2) + "\n", encoding="utf-8")
    print(f"throughput_ratio={ratio:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
