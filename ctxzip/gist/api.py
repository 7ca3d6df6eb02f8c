"""Inference API: compress segments into decoder embeddings (cached per segment) and generate from them."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import CacheError, ConfigError, InputError, ModelError

__all__ = ["SHIPPED_WEIGHTS", "GistModel", "CompressedSegment", "CompressedContext", "GistGeneration", "load_gist",
           "compress", "generate", "decoder_inputs", "encode_vectors", "decode_vectors"]

#: The weights shipped for SmolLM2-135M (fp16 safetensors; see ``ctxzip/data/gist/MODEL_CARD.md``).
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "gist" / "smollm2-135m.safetensors"

_MAGIC = b"CZG1"
_HEAD = struct.Struct("<4sI")
_DIGEST = 8
_KEY_SCHEMA = 1
DEFAULT_TEMPLATE = "\nQuestion: {question}\nAnswer:"


def encode_vectors(vectors: np.ndarray) -> bytes:
    """One segment's vectors as bytes: magic, JSON header (dtype, shape), checksum, raw float16 (no pickle)."""
    arr = np.ascontiguousarray(vectors, dtype="<f2")
    head = json.dumps({"dtype": "<f2", "shape": list(arr.shape)}, separators=(",", ":")).encode()
    payload = arr.tobytes()
    digest = hashlib.sha256(head + payload).digest()[:_DIGEST]
    return _HEAD.pack(_MAGIC, len(head)) + digest + head + payload


def decode_vectors(blob: bytes, hidden_size: int) -> np.ndarray:
    """Inverse of :func:`encode_vectors`; raises CacheError for anything that does not check out."""
    view = memoryview(blob)
    if len(view) < _HEAD.size + _DIGEST:
        raise CacheError("cached gist value is too short")
    magic, n = _HEAD.unpack_from(view, 0)
    if magic != _MAGIC:
        raise CacheError(f"cached gist value has magic {magic!r}")
    start = _HEAD.size + _DIGEST
    head, payload = bytes(view[start : start + n]), bytes(view[start + n :])
    if hashlib.sha256(head + payload).digest()[:_DIGEST] != bytes(view[_HEAD.size : start]):
        raise CacheError("cached gist value failed its checksum")
    try:
        header = json.loads(head)
        shape = [int(x) for x in header["shape"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"cached gist value has a bad header ({exc})") from None
    if header.get("dtype") != "<f2" or len(shape) != 2 or shape[1] != hidden_size or shape[0] < 1:
        raise CacheError(f"cached gist value has shape {shape}, expected [k, {hidden_size}]")
    if len(payload) != 2 * shape[0] * shape[1]:
        raise CacheError("cached gist value has the wrong byte length")
    return np.frombuffer(payload, dtype="<f2").reshape(shape).copy()


@dataclass(frozen=True)
class GistModel:
    """A decoder (``lm``: anything with ``.model`` and ``.tokenizer``, e.g. a LoadedLM) and its gist encoder."""

    lm: Any
    encoder: Any
    weights: str
    fingerprint: str  # weights file hash + decoder identity: part of every cache key

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.hidden_size)

    @property
    def max_segment_tokens(self) -> int:
        return int(self.encoder.config.max_segment_tokens)


@dataclass(frozen=True)
class CompressedSegment:
    key: str  # the segment-cache key
    n_tokens: int  # tokens of the segment
    vectors: np.ndarray  # (ceil(n_tokens / factor), hidden) float16
    cached: bool  # served from the segment cache

    @property
    def n_vectors(self) -> int:
        return int(self.vectors.shape[0])


@dataclass(frozen=True)
class CompressedContext:
    segments: tuple[CompressedSegment, ...]
    factor: int
    hidden_size: int
    fingerprint: str
    seconds: float

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.segments)

    @property
    def n_vectors(self) -> int:
        return sum(s.n_vectors for s in self.segments)

    @property
    def decoder_positions(self) -> int:
        """Positions the decoder reads for this context: vectors, one separator per segment, one marker."""
        return self.n_vectors + len(self.segments) + 1

    @property
    def rate(self) -> float:
        """Decoder positions per original token (0.0 for an empty context)."""
        return self.decoder_positions / self.n_tokens if self.n_tokens else 0.0

    @property
    def cache_hits(self) -> int:
        return sum(1 for s in self.segments if s.cached)


@dataclass(frozen=True)
class GistGeneration:
    text: str
    token_ids: tuple[int, ...]
    prompt_positions: int  # decoder positions of the prompt (compressed context + question)
    seconds: float


def _decoder_identity(lm: Any) -> str:
    fp = getattr(lm, "fingerprint", None)
    if isinstance(fp, str) and fp:
        return fp
    return f"unhashed:{type(lm.model).__name__}:{id(lm.model)}"  # in-process only (test models)


def load_gist(weights: str | Path | None = None, *, decoder: Any = None, device: str | None = None) -> GistModel:
    """Load (once per process) gist weights (default: the shipped SmolLM2 ones) and their decoder.

    ``decoder``: a LoadedLM (or any object with ``.model`` and ``.tokenizer``) or a model spec; default: the
    decoder named in the weights' config, loaded with :func:`ctxzip.models.load_causal_lm`.
    """
    from ..models import load_causal_lm, shared
    from .model import GistEncoder, file_fingerprint

    path = Path(weights) if weights is not None else SHIPPED_WEIGHTS
    config, _ = GistEncoder.read_config(path)
    if decoder is None or isinstance(decoder, str):
        lm = load_causal_lm(decoder or config.decoder, device=device)
    elif hasattr(decoder, "model") and hasattr(decoder, "tokenizer"):
        lm = decoder
    else:
        raise ConfigError("decoder must be a model spec string, a LoadedLM or an object with .model and .tokenizer")
    digest = file_fingerprint(path)
    ident = _decoder_identity(lm)

    def build() -> GistModel:
        enc = GistEncoder.load(path, lm.model)
        dev = next(lm.model.parameters()).device
        enc.to(dev)
        return GistModel(lm, enc, str(path), f"{digest}/{ident}")

    return shared(("gist", str(path.resolve()), digest, ident), build)


def _segment_ids(gm: GistModel, segments: str | Sequence[str]) -> list[list[int]]:
    if isinstance(segments, str):
        segments = [segments]
    if not isinstance(segments, Sequence) or not all(isinstance(s, str) for s in segments):
        raise InputError("segments must be a string or a sequence of strings")
    size = gm.max_segment_tokens
    out: list[list[int]] = []
    for text in segments:
        ids = list(gm.lm.tokenizer(text, add_special_tokens=False)["input_ids"])
        out.extend(ids[i : i + size] for i in range(0, len(ids), size))
    return out


def _key(gm: GistModel, ids: Sequence[int], factor: int) -> str:
    material = {"kind": "gist-segment", "schema": _KEY_SCHEMA, "model": gm.fingerprint, "factor": factor,
                "ids": hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).hexdigest()}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def compress(segments: str | Sequence[str], *, model: GistModel | None = None, factor: int | None = None,
             cache: Any = None, batch_size: int = 8) -> CompressedContext:
    """Compress each segment independently into ``ceil(n / factor)`` vectors (float16).

    Texts longer than the encoder's ``max_segment_tokens`` are split into segments of that many tokens. Each
    segment is looked up in the segment cache (``cache``: as in :func:`ctxzip.compress` — None for the
    process-wide cache, False for none, a spec such as ``"memory"`` or a :class:`ctxzip.cache.Cache`) and only
    misses are encoded; vectors are stored as float16 bytes, so cached and fresh outputs are identical.
    """
    from .. import cache as cache_mod

    gm = model if model is not None else load_gist()
    if not isinstance(gm, GistModel):
        raise ConfigError(f"model must be a GistModel from ctxzip.gist.load_gist(), got {type(gm).__name__}")
    f = gm.encoder.config.factor if factor is None else factor
    if f not in gm.encoder.config.factors:
        raise ConfigError(f"factor={f!r} is not one the weights were trained for: {gm.encoder.config.factors}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    t0 = time.perf_counter()
    chunks = _segment_ids(gm, segments)
    keys = [_key(gm, ids, f) for ids in chunks]
    store = cache_mod.resolve(cache)
    found: dict[str, np.ndarray] = {}
    if store is not None and keys:
        raw = store.get_many(sorted(set(keys)))
        bad = []
        for k, blob in raw.items():
            try:
                found[k] = decode_vectors(blob, gm.hidden_size)
            except CacheError:
                bad.append(k)
        store.reject(bad)
    cached_keys = set(found)
    todo = sorted({k: i for i, k in enumerate(keys) if k not in found}.items(), key=lambda kv: len(chunks[kv[1]]))
    fresh: dict[str, np.ndarray] = {}
    if todo:
        torch = require("torch", feature="gist compression")
        dev = next(gm.encoder.parameters()).device
        with torch.no_grad():
            for start in range(0, len(todo), batch_size):
                part = todo[start : start + batch_size]
                lens = [len(chunks[i]) for _, i in part]
                ids = torch.zeros((len(part), max(lens)), dtype=torch.long, device=dev)
                for row, (_, i) in enumerate(part):
                    ids[row, : lens[row]] = torch.tensor(chunks[i], dtype=torch.long)
                vecs, counts = gm.encoder(ids, torch.tensor(lens, device=dev), f)
                arr = vecs.float().cpu().numpy().astype("<f2")
                for row, (k, _) in enumerate(part):
                    fresh[k] = arr[row, : int(counts[row])].copy()
        if store is not None:
            store.set_many({k: encode_vectors(v) for k, v in fresh.items()})
    found.update(fresh)
    segs = tuple(CompressedSegment(k, len(ids), found[k], k in cached_keys) for k, ids in zip(keys, chunks))
    return CompressedContext(segs, int(f), gm.hidden_size, gm.fingerprint, time.perf_counter() - t0)


def decoder_inputs(gm: GistModel, context: CompressedContext, text: str = "") -> Any:
    """``inputs_embeds (1, N, H)`` for the decoder: ``[SEP] vectors`` per segment, ``[CONT]``, then ``text``."""
    torch = require("torch", feature="gist generation")
    from .model import CONT, build_prefix

    if not isinstance(context, CompressedContext):
        raise ConfigError(f"context must be a CompressedContext from ctxzip.gist.compress, got {type(context).__name__}")
    if context.fingerprint != gm.fingerprint:
        raise ModelError("this context was compressed with other gist weights or another decoder; compress again")
    dev = gm.encoder.special.device
    with torch.no_grad():
        segs = [torch.from_numpy(s.vectors.astype(np.float32)).to(dev) for s in context.segments]
        prefix = build_prefix(gm.encoder, segs, CONT)
        embed = gm.lm.model.get_input_embeddings()
        ids = list(gm.lm.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        if ids:
            tail = embed(torch.tensor(ids, dtype=torch.long, device=dev)).to(prefix.dtype)
            prefix = torch.cat([prefix, tail], 0)
        dtype = embed.weight.dtype
    return prefix[None].to(dtype)


def generate(model: Any, compressed_context: CompressedContext, question: str, *, gist: GistModel | None = None,
             max_new_tokens: int = 32, template: str = DEFAULT_TEMPLATE, **generate_kwargs: Any) -> GistGeneration:
    """Greedy-generate an answer to ``question`` from a compressed context with a Hugging Face causal LM.

    ``model``: None (the gist's own decoder), a LoadedLM or a Hugging Face model with the decoder's embedding
    size. The prompt is ``inputs_embeds`` = compressed context, ``[CONT]``, then ``template`` with the question.
    """
    torch = require("torch", feature="gist generation")
    gm = gist if gist is not None else load_gist()
    if model is None:
        hf = gm.lm.model
    elif hasattr(model, "generate"):  # a Hugging Face model (its own ``.model`` is the body, not a wrapper)
        hf = model
    else:  # a LoadedLM
        hf = getattr(model, "model", model)
    if not hasattr(hf, "generate"):
        raise ConfigError("model must be None, a LoadedLM or a Hugging Face causal LM with .generate()")
    width = hf.get_input_embeddings().weight.shape[1]
    if width != gm.hidden_size:
        raise ModelError(f"the model's embedding size is {width}, the gist weights produce {gm.hidden_size}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(question, str):
        raise InputError("question must be a string")
    if "{question}" not in template:
        raise ConfigError("template must contain '{question}'")
    t0 = time.perf_counter()
    embeds = decoder_inputs(gm, compressed_context, template.format(question=question))
    tok = gm.lm.tokenizer
    kwargs = {"do_sample": False, "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else
              tok.eos_token_id}
    kwargs.update(generate_kwargs)
    with torch.no_grad():
        out = hf.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                          device=embeds.device), max_new_tokens=max_new_tokens, **kwargs)
    new = [int(x) for x in out[0].tolist()]  # with inputs_embeds only, generate returns just the new tokens
    text = tok.decode(new, skip_special_tokens=True)
    return GistGeneration(text, tuple(new), int(embeds.shape[1]), time.perf_counter() - t0)
