"""Tiny from-config causal LMs for fast, real tests (GPT-2, LLaMA, Mixtral-like, Qwen2).

These are real transformers models with random weights: every mechanism (edits, faults, guards, evaluation) runs
on them exactly as on a pretrained checkpoint, in milliseconds. ``tiny_tokenizer`` builds a real byte-level BPE
tokenizer with the ``tokenizers`` library, so save/load round trips work offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VOCAB = 128


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def tiny_llama(seed: int = 0, *, layers: int = 2, hidden: int = 32, tie: bool = False, vocab: int = VOCAB) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    _seeded(seed)
    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256, tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0, *, layers: int = 2, hidden: int = 32, vocab: int = VOCAB) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    _seeded(seed)
    cfg = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, vocab_size=vocab, n_positions=256)
    return GPT2LMHeadModel(cfg).eval()


def tiny_mixtral(seed: int = 0, *, layers: int = 2, hidden: int = 32, experts: int = 4, vocab: int = VOCAB) -> Any:
    from transformers import MixtralConfig, MixtralForCausalLM

    _seeded(seed)
    cfg = MixtralConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, num_local_experts=experts, num_experts_per_tok=2,
        max_position_embeddings=256,
    )
    return MixtralForCausalLM(cfg).eval()


def tiny_qwen2(seed: int = 0, *, layers: int = 2, hidden: int = 32, vocab: int = VOCAB) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _seeded(seed)
    cfg = Qwen2Config(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256, tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(cfg).eval()


def tiny_tokenizer(vocab: int = VOCAB) -> Any:
    """A real byte-level BPE tokenizer trained on a few sentences, wrapped for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:100]
    )
    text = ["the quick brown fox jumps over the lazy dog", "to be or not to be that is the question"] * 20
    tk.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def save_tiny(model: Any, tokenizer: Any, path: Path) -> Path:
    """Save a tiny model and tokenizer as a safetensors HF directory; returns ``path``."""
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def model_snapshot(model: Any) -> dict[str, Any]:
    """Everything a restore must give back: every parameter, buffer and state-dict tensor (by every name it has),
    the module tree, the config and the weight tying."""
    from pytest_proofpack.models.adapters import tied_pairs

    return {
        "tensors": {
            **{f"p:{k}": v.detach().clone() for k, v in model.named_parameters(remove_duplicate=False)},
            **{f"b:{k}": v.detach().clone() for k, v in model.named_buffers(remove_duplicate=False)},
            **{f"s:{k}": v.detach().clone() for k, v in model.state_dict().items()},
        },
        "params": [(n, id(p)) for n, p in model.named_parameters(remove_duplicate=False)],
        "modules": [(n, type(m).__name__, id(m)) for n, m in model.named_modules()],
        "config": json.dumps(model.config.to_dict(), sort_keys=True, default=str),
        "tied": tied_pairs(model),
    }
