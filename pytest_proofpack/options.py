"""Every ``--proofpack-*`` option, its ini twin, its type and its validation, declared once.

:func:`add_options` registers them with pytest; :func:`read_options` turns a ``pytest.Config`` into a typed,
validated :class:`Options`. A bad value raises :class:`~pytest_proofpack.errors.OptionError` naming the option and
the accepted values (the plugin reports it as a usage error, exit code 4).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pytest_proofpack.errors import OptionError

if TYPE_CHECKING:
    import pytest

TIERS: Final = ("balanced", "conservative", "aggressive")
GATE_RULES: Final = ("point", "upper")
DEVICES: Final = ("auto", "cpu", "cuda")
DETERMINISM: Final = ("throughput", "strict")
PROGRESS: Final = ("auto", "live", "lines", "off")
#: The most runs per scenario (or calibration runs per model) one option may ask for.
MAX_RUNS: Final = 1000


def _integer(name: str, low: int, high: int) -> Callable[[str], int]:
    """A parser of an integer from ``low`` to ``high`` for ``--proofpack-<name>``."""

    def parse(text: str) -> int:
        try:
            value = int(text) if len(text.strip()) <= 20 else None
        except ValueError:
            value = None
        if value is None:
            raise OptionError(f"--proofpack-{name}: {text[:40]!r} is not an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise OptionError(f"--proofpack-{name}: {value} is out of range; accepted: {low} to {high}")
        return value

    return parse


def _positive_float(name: str, high: float) -> Callable[[str], float]:
    """A parser of a finite number in ``(0, high]`` for ``--proofpack-<name>`` (``nan`` and ``inf`` refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text) if len(text.strip()) <= 40 else math.nan
        except ValueError:
            raise OptionError(f"--proofpack-{name}: {text[:40]!r} is not a number") from None
        if not math.isfinite(value) or not 0 < value <= high:
            raise OptionError(f"--proofpack-{name}: {text[:40]!r} is out of range; accepted: a number > 0 "
                              f"and <= {high:g}")
        return value

    return parse


def _run_dir(text: str) -> Path:
    """``--proofpack-out``: a directory, or a path that can become one (no existing file on its way)."""
    path = Path(text).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is a file" if candidate == path else f"lies under the file {candidate}"
                raise OptionError(f"--proofpack-out: {text} {what}; name a directory (new or a run directory)")
            break
    return path


def _sign_key(text: str) -> Path:
    """``--proofpack-sign-key``: a readable Ed25519 private key, checked now rather than when the pack is built."""
    from pytest_proofpack.errors import PackError
    from pytest_proofpack.signing import load_signing_key

    path = Path(text).expanduser()
    try:
        load_signing_key(path)
    except PackError as exc:
        raise OptionError(f"--proofpack-sign-key: {exc}") from None
    return path


def _choice(name: str, accepted: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in accepted:
            raise OptionError(f"--proofpack-{name}: {text!r} is not accepted; accepted: {', '.join(accepted)}")
        return text

    return parse


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _text(text: str) -> str:
    return text


@dataclass(frozen=True)
class _Spec:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    flag: bool = False
    metavar: str | None = None


_SPECS: Final[tuple[_Spec, ...]] = (
    _Spec("suite", _text, None, "collect the scenarios of this suite (subset, showcase, workshop3, full, smoke)",
          metavar="NAME"),
    _Spec("models", _csv, (), "comma-separated model keys or hub ids replacing the suite's models "
          "(MODEL_1..MODEL_8 environment slots also apply)", metavar="KEYS"),
    _Spec("scenarios", _path, None, "scenarios.json to use instead of the shipped one", metavar="PATH"),
    _Spec("suites", _path, None, "suites.yaml to use instead of the shipped one", metavar="PATH"),
    _Spec("tuned-params", _path, None, "tuned_edit_params.json to use instead of the shipped one", metavar="PATH"),
    _Spec("out", _run_dir, None, "run directory (default proof_pack_runs/<suite>); reused so --lf resumes",
          metavar="DIR"),
    _Spec("cache", _path, None, "cache root (default $PROOFPACK_CACHE or ~/.cache/pytest_proofpack)", metavar="DIR"),
    _Spec("clean-runs", _integer("clean-runs", 1, MAX_RUNS), 3, "runs per clean edit scenario", metavar="N"),
    _Spec("stress-runs", _integer("stress-runs", 1, MAX_RUNS), 2, "runs per stress edit scenario", metavar="N"),
    _Spec("calibration-runs", _integer("calibration-runs", 1, MAX_RUNS), None,
          "calibration runs per model (default: the suite's eval.calibration_runs, else 5)", metavar="N"),
    _Spec("tier", _choice("tier", TIERS), "balanced", "threshold tier: ratio limit 1.10 (balanced), 1.05 "
          "(conservative), 1.20 (aggressive)", metavar="TIER"),
    _Spec("gate-rule", _choice("gate-rule", GATE_RULES), "point",
          "primary-metric gate: the ratio's point estimate or its CI upper bound must be within the limit",
          metavar="RULE"),
    _Spec("presets", _path, None, "directory of calibrated_preset_<model>.json to reuse instead of calibrating",
          metavar="DIR"),
    _Spec("calibrate-only", _text, False, "stop after the calibrated presets are written", flag=True),
    _Spec("dataset", _text, None, "dataset name from suites.yaml, or provider:path (local_text:FILE, "
          "local_jsonl:FILE, hf_text:NAME) overriding the suite's", metavar="NAME"),
    _Spec("net", _text, False, "allow downloads of models and datasets and record resolved revisions", flag=True),
    _Spec("device", _choice("device", DEVICES), "auto", "device for models: auto (cuda if visible), cpu, cuda",
          metavar="DEV"),
    _Spec("dtype", _text, None, "model dtype (default bfloat16 on GPU, float32 on CPU)", metavar="DTYPE"),
    _Spec("bos", _choice("bos", ("auto", "on", "off")), "auto", "start every window with the BOS token: auto (when "
          "the model's tokenizer adds one), on, off", metavar="MODE"),
    _Spec("seed", _integer("seed", 0, 2**32 - 1), 42, "seed of window selection, bootstrap and seeded edits",
          metavar="N"),
    _Spec("shard", _text, None, "run shard K of N (split by model); merge with `proofpack merge`", metavar="K/N"),
    _Spec("sign-key", _sign_key, None, "Ed25519 private key (PEM) that signs the pack; default: an ephemeral key",
          metavar="PEM"),
    _Spec("gpg", _text, False, "also write a GPG detached signature of the manifest (needs gpg)", flag=True),
    _Spec("no-pack", _text, False, "write the verdict but not the proof pack", flag=True),
    _Spec("rerun", _text, False, "recompute scenarios whose stored record matches the current config", flag=True),
    _Spec("save-models", _text, False, "also save each edited model as safetensors under the run directory",
          flag=True),
    _Spec("backup-ram", _integer("backup-ram", 0, 1 << 24), 64, "MiB of RAM a scenario's change may hold for the "
          "bit-exact backups of the CPU tensors it touches; the rest goes to an unlinked scratch file under the "
          "cache directory until the restore (0: all of it)", metavar="MIB"),
    _Spec("gpu-memory", _positive_float("gpu-memory", 100_000), None, "usable GiB per GPU (overrides NVML)",
          metavar="GB"),
    _Spec("timeout", _positive_float("timeout", 30 * 86_400), None,
          "seconds one scenario may take before it is an error", metavar="S"),
    _Spec("progress", _choice("progress", PROGRESS), "auto", "progress of long phases (model load, tokenization, "
          "baseline, tuning, calibration): live (a status line per xdist worker, redrawn), lines (one line per "
          "finished phase), off; auto: live on a terminal with -n, else lines", metavar="MODE"),
    _Spec("determinism", _choice("determinism", DETERMINISM), "throughput",
          "throughput (TF32, cuDNN benchmark) or strict (deterministic algorithms)", metavar="MODE"),
    _Spec("repeats", _integer("repeats", 0, 100), 0,
          "evaluate the first clean scenario N extra times per model and record the spread", metavar="N"),
    _Spec("skip-disk-check", _text, False, "do not refuse to start when disk space looks short", flag=True),
)


@dataclass(frozen=True)
class Options:
    """The validated ``--proofpack-*`` options (attribute = option name with ``-`` → ``_``)."""

    suite: str | None
    models: tuple[str, ...]
    scenarios: Path | None
    suites: Path | None
    tuned_params: Path | None
    out: Path | None
    cache: Path | None
    clean_runs: int
    stress_runs: int
    calibration_runs: int | None
    tier: str
    gate_rule: str
    presets: Path | None
    calibrate_only: bool
    dataset: str | None
    net: bool
    device: str
    dtype: str | None
    bos: str
    seed: int
    shard: str | None
    sign_key: Path | None
    gpg: bool
    no_pack: bool
    rerun: bool
    save_models: bool
    backup_ram: int
    gpu_memory: float | None
    timeout: float | None
    progress: str
    determinism: str
    repeats: int
    skip_disk_check: bool

    def cache_root(self) -> Path:
        if self.cache is not None:
            return self.cache
        env = os.environ.get("PROOFPACK_CACHE")
        return Path(env).expanduser() if env else Path.home() / ".cache" / "pytest_proofpack"


#: The options whose value is a path; pytest may read the value of the two-word form as a test path.
_PATH_OPTIONS: Final = frozenset(f"--proofpack-{s.name}" for s in _SPECS if s.parse in (_path, _run_dir, _sign_key))


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("proofpack", "pytest-proofpack: edit-detection proof packs")
    for spec in _SPECS:
        dest = "proofpack_" + spec.name.replace("-", "_")
        if spec.flag:
            group.addoption(f"--proofpack-{spec.name}", action="store_true", dest=dest, default=None,
                            help=spec.help)
            parser.addini(dest, type="bool", default=False, help=spec.help)
        else:
            group.addoption(f"--proofpack-{spec.name}", action="store", dest=dest, default=None,
                            metavar=spec.metavar, help=spec.help)
            parser.addini(dest, type="string", default="", help=spec.help)


def _check_rootdir_kept(config: pytest.Config) -> None:
    """Refuse ``--proofpack-out DIR`` (two words) when pytest took ``DIR`` for a test path and moved its rootdir.

    pytest chooses its rootdir, and with it the ``--lf`` state, before it knows a plugin's options; a silently
    moved rootdir would make ``--lf`` resume from an empty state. The one-word form ``--proofpack-out=DIR`` is safe.
    """
    from pytest_proofpack.pytest_private import rootdir_knowing_options

    if hasattr(config, "workerinput"):
        return  # an xdist worker runs in the controller's rootdir, which the controller checked
    args = [str(a) for a in config.invocation_params.args]
    two_word = [(option, value) for option, value in itertools.pairwise(args) if option in _PATH_OPTIONS]
    if not two_word:
        return
    expected = rootdir_knowing_options(config)
    if expected is None or expected == config.rootpath:
        return
    here = config.invocation_params.dir.resolve()
    outside = [(o, v) for o, v in two_word if (here / v).exists() and not (here / v).resolve().is_relative_to(here)]
    option, value = (outside or two_word)[0]
    raise OptionError(f"{option} {value}: pytest took {value!r} for a test path and moved its rootdir from "
                      f"{expected} to {config.rootpath} (and the --lf state with it); write {option}={value}")


def read_options(config: pytest.Config) -> Options:
    """Command line first, then the ini twin, then the default; every value validated."""
    _check_rootdir_kept(config)
    values: dict[str, Any] = {}
    for spec in _SPECS:
        dest = "proofpack_" + spec.name.replace("-", "_")
        cli = config.getoption(dest, default=None)
        if spec.flag:
            values[dest[10:]] = bool(cli) or bool(config.getini(dest))
            continue
        if cli is not None:
            values[dest[10:]] = spec.parse(str(cli))
            continue
        raw = config.getini(dest) or None
        try:
            values[dest[10:]] = spec.parse(str(raw)) if raw is not None else spec.default
        except OptionError as exc:
            # The value came from the ini file: name the file and the ini key, not the command-line option.
            source = Path(str(config.inipath)).name if config.inipath else "the ini file"
            detail = str(exc).split(": ", 1)[-1]
            raise OptionError(f"{source}: {dest} (ini twin of --proofpack-{spec.name}): {detail}") from None
    names = {f.name for f in fields(Options)}
    assert names == set(values), names ^ set(values)
    return Options(**values)


def default_options(**overrides: Any) -> Options:
    """Every option at its default, then ``overrides`` (already typed values): for commands run outside pytest."""
    values: dict[str, Any] = {spec.name.replace("-", "_"): spec.default for spec in _SPECS}
    unknown = set(overrides) - set(values)
    if unknown:
        raise OptionError(f"unknown option(s) {', '.join(sorted(unknown))}")
    values.update(overrides)
    return Options(**values)
