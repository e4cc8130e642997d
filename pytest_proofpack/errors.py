"""Error types shared by every layer.

Every error a user can cause is a :class:`ProofpackError` whose message is one line naming the file, field or
option that is wrong and how to fix it. The plugin turns these into pytest usage errors (exit code 4) and the
CLI into its documented exit codes; neither ever shows a traceback for them.
"""

from __future__ import annotations


class ProofpackError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is a complete one-line message."""

    error_class = "internal"


class CatalogError(ProofpackError):
    """scenarios.json, suites.yaml or tuned_edit_params.json is malformed or inconsistent."""

    error_class = "bad_input"


class SpecError(ProofpackError):
    """An edit spec or scope string does not parse."""

    error_class = "bad_input"


class OptionError(ProofpackError):
    """A command-line option or ini value is invalid."""

    error_class = "bad_input"


class MissingAssetError(ProofpackError):
    """A model, tokenizer or corpus is not in the cache and may not be fetched now."""

    error_class = "missing_asset"


class ModelLoadError(ProofpackError):
    """A model directory or file exists but cannot be loaded (missing or corrupt files)."""

    error_class = "bad_input"


class UnsupportedArchitectureError(ProofpackError):
    """The model's module tree does not match any known architecture adapter."""

    error_class = "bad_input"


class EngineUnavailableError(ProofpackError):
    """No evaluation engine is registered for ``pytest_proofpack_evaluate``."""

    error_class = "internal"


class PackError(ProofpackError):
    """A proof pack cannot be built, merged or verified. ``exit_code`` follows ``proofpack verify``."""

    error_class = "bad_input"

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class GuardError(Exception):
    """A guard raised while judging a subject: the run is an error of class ``internal``, never a detection.

    Not a :class:`ProofpackError`: nothing the user wrote caused it, so the guard's own traceback (chained as
    ``__cause__``) is shown. ``guard`` names the guard; the message names it and the exception.
    """

    error_class = "internal"

    def __init__(self, guard: str, detail: str) -> None:
        super().__init__(f"guard {guard} raised {detail}"[:500])
        self.guard = guard

    @classmethod
    def wrapping(cls, guard: str, exc: BaseException) -> GuardError:
        """The error for ``exc`` raised by ``guard``: its type and the first line of its message."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return cls(guard, f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


class ScenarioTimeout(BaseException):
    """A scenario ran past ``--proofpack-timeout``.

    A :class:`BaseException`, like :class:`KeyboardInterrupt`: the alarm lands wherever the scenario happens to
    be, and an ``except Exception`` there (the guard chain's handler, a library's import fallback) must not
    swallow it and let the scenario carry on as if the deadline had not passed.
    """

    error_class = "timeout"


class RemoteScenarioError(Exception):
    """An exception other than a :class:`ProofpackError` raised in a multi-GPU reservation's scenario subprocess.

    ``described`` is the ``(error_class, message)`` the subprocess's ``describe_error`` gave, so the record says
    exactly what an in-process run would; ``str()`` adds the subprocess's traceback for the test's report.
    """

    def __init__(self, described: tuple[str, str], remote_traceback: str, pid: int) -> None:
        super().__init__(f"{described[1]}\n-- raised in the scenario subprocess (pid {pid}):\n{remote_traceback}")
        self.described = described
