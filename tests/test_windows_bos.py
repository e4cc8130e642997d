"""Windows start with BOS when the model's tokenizer adds one: the layout, the ids, and the tokenizer's answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinymodels import tiny_tokenizer
from transformers import PreTrainedTokenizerFast

from pytest_proofpack.data.tokenization import adds_bos
from pytest_proofpack.data.windows import chunk_indices, make_eval_windows, pool_exclusion


def test_bos_windows_hold_bos_then_a_stride_of_corpus_tokens() -> None:
    tokens = np.arange(1000, 1000 + 4000, dtype=np.int64)
    _, plain_final = make_eval_windows(tokens, 16, 2, 5, seed=3)
    preview, final = make_eval_windows(tokens, 16, 2, 5, seed=3, bos=7)
    assert final.input_ids.shape == plain_final.input_ids.shape == (5, 16)
    assert bool((final.input_ids[:, 0] == 7).all()) and final.bos == 7 and final.stride == 15
    for window_id, row in zip(final.ids, final.input_ids, strict=True):
        start = int(window_id[1:])
        assert start % 15 == 0 and torch.equal(row[1:], torch.from_numpy(tokens[start: start + 15]))
    assert not chunk_indices(preview) & chunk_indices(final)
    assert final.digest != plain_final.digest, "BOS changes the windows' identity, so the baseline cache key"
    outside = pool_exclusion(tokens.size, 15, "evaluation", seed=1)
    drawn = make_eval_windows(tokens, 16, 2, 5, seed=4, exclude=outside, bos=7)
    assert not (chunk_indices(drawn[0]) | chunk_indices(drawn[1])) & outside


def test_adds_bos_asks_the_tokenizer_itself() -> None:
    plain = tiny_tokenizer()
    assert adds_bos(plain) is None
    with_bos = PreTrainedTokenizerFast(tokenizer_object=plain.backend_tokenizer, bos_token="<eos>", eos_token="<eos>")
    from tokenizers.processors import TemplateProcessing

    bos_id = with_bos.bos_token_id
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(
        single="<eos> $A", special_tokens=[("<eos>", bos_id)])
    assert with_bos("a")["input_ids"][0] == bos_id
    assert adds_bos(with_bos) == bos_id


@pytest.mark.parametrize("stride", [15, 16])
def test_pools_count_chunks_of_the_stride(stride: int) -> None:
    total = 4000 // stride
    assert len(pool_exclusion(4000, stride, "tuning", seed=0)) == total - round(0.2 * total)
