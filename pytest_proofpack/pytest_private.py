"""The private pytest APIs this plugin relies on, each wrapped once with the reason no public API serves.

Everything else in the package uses pytest's and pytest-xdist's public API; a pytest upgrade that moves one of
these names breaks only this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import pytest

if TYPE_CHECKING:
    from _pytest.junitxml import LogXML


def prepare_config(args: Sequence[str]) -> pytest.Config:
    """A :class:`pytest.Config` parsed from command-line ``args``, its plugins loaded but not yet configured.

    Used to rebuild a worker's configuration in a multi-GPU reservation's subprocess, the way pytest-xdist
    rebuilds it in each worker (``xdist/remote.py`` calls the same function). pytest has no public API that
    configures pytest without running a session (pytest-dev/pytest#7309); ``pytest.main`` would run one.
    """
    from _pytest.config import _prepareconfig

    return _prepareconfig(list(args), None)


def configure(config: pytest.Config) -> None:
    """Run ``pytest_configure`` of every plugin for ``config`` (what ``pytest.main`` does before a session).

    No public API configures a :class:`pytest.Config` outside ``pytest.main`` (pytest-dev/pytest#7309).
    """
    config._do_configure()


def unconfigure(config: pytest.Config) -> None:
    """Run ``pytest_unconfigure`` and the config's cleanups, once: the counterpart of :func:`configure`.

    No public API for it either (pytest-dev/pytest#7309).
    """
    config._ensure_unconfigure()


def controller_basetemp(config: pytest.Config) -> Path | None:
    """This process's pytest base temporary directory (what ``tmp_path_factory.getbasetemp()`` returns), or
    None when the tmp_path plugin is disabled or the directory cannot be made.

    The controller needs it in a hook (``pytest_xdist_make_scheduler``), where no fixture can be requested:
    the ``tmp_path_factory`` fixture only returns the factory pytest stores on the config, and building a new
    :class:`pytest.TempPathFactory` would make a different numbered directory. No upstream issue asking for
    public access to the session's factory was found.
    """
    factory: pytest.TempPathFactory | None = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return None
    try:
        return Path(factory.getbasetemp())
    except OSError:
        return None


def junit_xml(config: pytest.Config) -> LogXML | None:
    """The JUnit XML writer of ``--junit-xml`` (None without the option), to add suite-level properties.

    The public ``record_testsuite_property`` fixture is silent under pytest-xdist: it runs in the workers, whose
    properties never reach the controller's XML (pytest-dev/pytest#7767). The controller therefore adds them to
    the writer itself, which pytest keeps under a private stash key.
    """
    from _pytest.junitxml import xml_key

    return config.stash.get(xml_key, None)


def swap_terminal_stream(config: pytest.Config, wrap: Callable[[TextIO], TextIO]) -> Callable[[], None]:
    """Make the terminal reporter write through ``wrap(its stream)``; return the function that puts it back.

    The progress display keeps live status lines below pytest's current line, so every write of the terminal
    reporter (a dot, a warning, xdist's own lines) must erase them first and redraw them after. pytest writes
    through one :class:`TerminalWriter` (``config.get_terminal_writer()``, public) whose stream is private
    (``_file``); no public API lets a plugin keep a status area clear of its output, and no upstream issue asking
    for one was found.
    """
    writer = config.get_terminal_writer()
    original: TextIO = writer._file
    writer._file = wrap(original)

    def restore() -> None:
        writer._file = original

    return restore


@contextlib.contextmanager
def uncaptured(config: pytest.Config) -> Iterator[None]:
    """Output capturing suspended (global and fixture) while the block writes to the terminal.

    Without xdist a progress line is written from inside a fixture, where pytest captures the output. pytest's
    own live logging (``log_cli``) suspends capturing the same way, through the capture manager plugin's
    ``global_and_fixture_disabled``; the capture manager's class is not public API.
    """
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
        return
    with capman.global_and_fixture_disabled():
        yield


def rootdir_knowing_options(config: pytest.Config) -> Path | None:
    """The rootdir pytest would have chosen had it known every option when it chose one.

    pytest chooses its rootdir from the arguments before a plugin's options are registered, so the value of a
    two-word ``--proofpack-out DIR`` counts as a test path there; the public ``config.rootpath`` only gives the
    result. This parses the arguments again with every option known and asks ``determine_setup``, whose keywords
    changed across pytest versions (``override_ini`` came in 9): only those it accepts are passed. None when
    either private function cannot be called.
    """
    import inspect

    try:
        from _pytest.config.findpaths import determine_setup

        args = [str(a) for a in config.invocation_params.args]
        namespace, unknown = config._parser.parse_known_and_unknown_args(args)
        known = {
            "inifile": config.option.inifilename, "override_ini": config.option.override_ini,
            "args": [*namespace.file_or_dir, *unknown], "rootdir_cmd_arg": config.option.rootdir or None,
            "invocation_dir": config.invocation_params.dir,
        }
        accepted = inspect.signature(determine_setup).parameters
        return Path(determine_setup(**{k: v for k, v in known.items() if k in accepted})[0])
    except Exception:  # a pytest that moved either function: no check rather than a crash
        return None
