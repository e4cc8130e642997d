"""``ci/requantize_gguf.py``: a GGUF file re-quantized to another type, metadata kept, values within the type's error.

The source is a tiny GGUF written here with the ``gguf`` package (one Q4_1 matrix, one F32 norm, one matrix whose
rows do not fit a Q8_0 block), so the script's every branch runs in milliseconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "ci" / "requantize_gguf.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("requantize_gguf", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_gguf(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A Q4_1 GGUF with three tensors; returns each tensor's dequantized source values."""
    import gguf

    q41 = gguf.GGMLQuantizationType.Q4_1
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_name("tiny")
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_1))
    writer.add_token_list(["<s>", "a", "b"])
    matrix = rng.standard_normal((8, 64)).astype(np.float32)
    odd = rng.standard_normal((3, 48)).astype(np.float32)  # rows of 48: no whole number of 32-blocks
    norm = rng.standard_normal(64).astype(np.float32)
    packed = gguf.quants.quantize(matrix, q41)
    writer.add_tensor("blk.0.ffn_down.weight", packed, raw_dtype=q41)
    writer.add_tensor("blk.0.attn_norm.weight", norm)
    writer.add_tensor("token_embd.weight", odd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"blk.0.ffn_down.weight": gguf.quants.dequantize(packed, q41), "blk.0.attn_norm.weight": norm,
            "token_embd.weight": odd}


def test_requantize_to_q8_0_keeps_metadata_and_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import gguf

    rng = np.random.default_rng()
    source = _tiny_gguf(tmp_path / "tiny.Q4_1.gguf", rng)
    assert _script().main([str(tmp_path / "tiny.Q4_1.gguf"), str(tmp_path / "tiny.Q8_0.gguf"), "--type", "Q8_0"]) == 0
    assert "tiny.Q8_0.gguf: 1 tensors Q8_0" in capsys.readouterr().out

    reader = gguf.GGUFReader(str(tmp_path / "tiny.Q8_0.gguf"))
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert reader.fields["general.name"].contents() == "tiny"
    assert reader.fields["tokenizer.ggml.tokens"].contents() == ["<s>", "a", "b"]
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types == {"blk.0.ffn_down.weight": gguf.GGMLQuantizationType.Q8_0,
                     "blk.0.attn_norm.weight": gguf.GGMLQuantizationType.F32,
                     "token_embd.weight": gguf.GGMLQuantizationType.F32}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(source[tensor.name].shape)
        if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            np.testing.assert_array_equal(values, source[tensor.name])  # copied, not touched
        else:  # Q8_0's error: half a step (block absmax / 127), plus 127 steps of the fp16 scale's rounding (2^-11)
            step = np.abs(source[tensor.name]).reshape(-1, 32).max(axis=1, keepdims=True) / 127
            bound = step * (0.5 + 127 * 2.0**-11) + 1e-6
            assert (np.abs(values - source[tensor.name]).reshape(-1, 32) <= bound).all()
            assert not np.array_equal(values, source[tensor.name])  # it is another quantization


def test_requantize_refuses_a_missing_source_and_an_in_place_write(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    script = _script()
    assert script.main([str(tmp_path / "none.gguf"), str(tmp_path / "out.gguf")]) == 2
    assert capsys.readouterr().err.strip() == f"requantize_gguf: {tmp_path / 'none.gguf'}: no such file"
    _tiny_gguf(tmp_path / "a.gguf", np.random.default_rng())
    assert script.main([str(tmp_path / "a.gguf"), str(tmp_path / "a.gguf")]) == 2
    assert "OUT must differ from SRC" in capsys.readouterr().err
