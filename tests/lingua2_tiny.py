"""Tiny random token classifiers for the lingua2 / distill tests (built from configs, no download)."""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "In 1969 the first humans landed on the Moon; 12 people have walked on it.",
    "東京は日本の首都です。北京は中国の首都です。",
    "Emoji like 🍣 and ❤️ appear in chats; naïve café résumé.",
    "Language models assign a probability to every token, and compression keeps the surprising ones.",
    "Don't stop: it's well-known that state-of-the-art systems aren't perfect.",
]


def minilm_dir() -> Path:
    from ctxzip.models import resolve

    return resolve("minilm-l6").path


def bert_tokenizer():  # type: ignore[no-untyped-def]
    import transformers

    return transformers.BertTokenizerFast.from_pretrained(str(minilm_dir()))


def xlmr_tokenizer():  # type: ignore[no-untyped-def]
    import tokenizers
    import transformers
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 3, trainer=trainer)
    return transformers.XLMRobertaTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
    )


def make_bert_classifier(directory: Path, *, seed: int = 0, max_positions: int = 128) -> Path:
    import torch
    import transformers

    tok = bert_tokenizer()
    cfg = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=max_positions, num_labels=2,
    )
    torch.manual_seed(seed)
    model = transformers.BertForTokenClassification(cfg).eval()
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


def make_xlmr_classifier(directory: Path, *, seed: int = 0) -> Path:
    import torch
    import transformers

    tok = xlmr_tokenizer()
    cfg = transformers.XLMRobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=130, num_labels=2, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = transformers.XLMRobertaForTokenClassification(cfg).eval()
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


def make_bert_base(directory: Path, *, seed: int = 0, layers: int = 3) -> Path:
    """A tiny BERT *encoder* (no head) saved like the MiniLM package: a student base for build_student."""
    import torch
    import transformers

    tok = bert_tokenizer()
    cfg = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    transformers.BertModel(cfg).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory
