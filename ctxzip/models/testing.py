"""Tiny random models for tests: real ``transformers`` checkpoints built from a config, no download.

:func:`make_tiny_causal_lm` writes a randomly initialised Llama with a byte-level BPE tokenizer trained on a
small built-in corpus into a directory, so any code path that takes a model spec (a local directory) can be
exercised in milliseconds. The weights are random: scores are meaningless but deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

from .._lazy import require

__all__ = ["TINY_CORPUS", "make_tiny_tokenizer", "make_tiny_causal_lm"]

TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
    "Paris is the capital of France, and Berlin is the capital of Germany. The answer to the question is 42. "
    "Language models assign a probability to every token; compression keeps the surprising ones. "
    "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int\n    y: int\n"
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ( ) [ ] { } \" ' - _ / \\ @ # $ % ^ & * + = < > | ~"
)


def make_tiny_tokenizer(vocab_size: int = 384) -> object:
    """A fast byte-level BPE tokenizer (``PreTrainedTokenizerFast``) with ``<s>``, ``</s>`` and ``<pad>``."""
    tokenizers = require("tokenizers", feature="tiny test models")
    transformers = require("transformers", feature="tiny test models")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TINY_CORPUS] * 4, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_tiny_causal_lm(
    directory: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    max_position_embeddings: int = 64,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a random tiny ``LlamaForCausalLM`` and its tokenizer to ``directory``; return the directory."""
    torch = require("torch", feature="tiny test models")
    transformers = require("transformers", feature="tiny test models")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the default init, so NLLs vary visibly between tokens
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out
