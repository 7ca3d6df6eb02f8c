"""Per-token negative log-likelihood from a causal LM, without ever building the ``[tokens, vocab]`` logits.

:class:`CausalLMScorer` runs the transformer *body* (``model.get_decoder()``) to get final hidden states and
computes each token's NLL with :func:`ctxzip.kernels.fused_nll.fused_nll` (a Triton kernel on CUDA, chunked
float32 log-sum-exp in PyTorch elsewhere), which is where GPU kernels plug in. LongLLMLingua's contrastive score
(:meth:`CausalLMScorer.contrastive_ids`) goes through :func:`ctxzip.kernels.contrastive_nll` on the Triton path.

How a text is scored (:meth:`CausalLMScorer.token_nll`):

* The text is tokenised on its own (no special tokens) with the fast tokenizer's offset mapping, so every token
  has ``starts``/``ends`` character offsets into the text. An optional prefix and suffix are tokenised on their
  own and concatenated: ``[start] + prefix + text + suffix``. ``nll[i]`` is ``-log p(text_i | everything
  before it)``; the suffix's NLLs (given the prefix and the whole text) come back in ``suffix_nll``.
* ``start`` is the tokenizer's BOS token (its EOS when it has no BOS), so even the first text token has an NLL.
  With ``start_token=None`` and no prefix, the first token has nothing to condition on and its NLL is ``nan``.
* Sequences longer than the window (the model's context length, at most 4096 by default) are scored in windows
  that overlap by ``overlap`` tokens (a quarter of the window by default): every token is scored once, with at
  least ``overlap`` tokens of context. ``[start] + prefix`` is pinned at the head of every window, so a
  conditioned score stays conditioned past the window; a prefix is cut from the left when it would leave the
  text less than half the window.
* Windows of several texts are batched (right padding, attention mask) under ``torch.inference_mode``.

:class:`PrefixStream` is the incremental form used by iterative compression: score a segment given everything
committed so far, then commit the kept tokens, reusing the KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import ConfigError, InputError, ModelError
from .loading import LoadedLM

__all__ = ["TokenScores", "CausalLMScorer", "PrefixStream"]

# Batches are capped so that B * L**2 stays below this (the attention matrices of a padded batch).
_ATTN_ELEMS = 1 << 22
# Body tokens per contrastive_nll launch on the Triton path (bounds the gathered hidden states of both streams).
_CONTRASTIVE_TOKENS = 1 << 15


@dataclass(frozen=True)
class TokenScores:
    """Scores of one text's tokens. Arrays are aligned: one entry per model token of the text.

    ``starts``/``ends`` are character offsets into the text; ``nll`` (float32, nats) is each token's NLL given
    the start token, the prefix and the text before it (``nan`` only for a first token with nothing before it);
    ``entropy`` is the entropy of the predictive distribution at that token (when asked for); ``suffix_nll`` the
    NLL of each suffix token (when a suffix was given).
    """

    input_ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    nll: np.ndarray
    entropy: np.ndarray | None = None
    suffix_nll: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def mean_nll(self) -> float:
        """Mean NLL of the text's tokens (``nan`` for an empty text)."""
        return _nanmean(self.nll)

    @property
    def suffix_mean_nll(self) -> float:
        """Mean NLL of the suffix's tokens (``nan`` without a suffix)."""
        return _nanmean(self.suffix_nll) if self.suffix_nll is not None else math.nan


def _nanmean(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass
class _Window:
    item: int
    ids: list[int]  # head + body[a:b]
    head: int  # len(head)
    a: int  # body start of this window
    score_from: int  # first body index scored here
    b: int  # body end


class CausalLMScorer:
    """Token NLLs (and entropies) from a loaded causal LM. Thread-safe: it holds no mutable state per call.

    Args:
        lm: from :func:`ctxzip.models.load_causal_lm`.
        window: tokens per forward pass (default: the model's context length, at most 4096).
        overlap: tokens of context shared by consecutive windows (default: a quarter of the window).
        batch_size: most windows per forward pass.
        start_token: ``"auto"`` (BOS, else EOS), a token id, or ``None`` for no start token.
        backend: passed to ``fused_nll`` / ``contrastive_nll`` (``"auto"``, ``"torch"``, ``"triton"``; default:
            ``$CTXZIP_KERNELS``).
    """

    def __init__(
        self,
        lm: LoadedLM,
        *,
        window: int | None = None,
        overlap: int | None = None,
        batch_size: int = 16,
        start_token: int | str | None = "auto",
        backend: str | None = None,
    ):
        if not isinstance(lm, LoadedLM):
            raise ConfigError("CausalLMScorer needs a LoadedLM; get one from ctxzip.models.load_causal_lm(spec)")
        self.lm = lm
        self.torch = require("torch", feature="causal-LM scoring")
        max_len = lm.max_length
        self.window = int(window) if window is not None else min(max_len, 4096)
        if self.window < 8 or self.window > max_len:
            raise ConfigError(f"window must be in [8, {max_len}] (the model's context length), got {window!r}")
        self.overlap = int(overlap) if overlap is not None else self.window // 4
        if not 0 <= self.overlap < self.window // 2 + 1:
            raise ConfigError(f"overlap must be in [0, window/2] = [0, {self.window // 2}], got {overlap!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        tok = lm.tokenizer
        if start_token == "auto":
            sid = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        elif start_token is None or isinstance(start_token, int):
            sid = start_token
        else:
            raise ConfigError(f"start_token must be 'auto', a token id or None, got {start_token!r}")
        self.start_ids: list[int] = [] if sid is None else [int(sid)]
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else (sid or 0))
        self.backend = backend
        model = lm.model
        get_decoder = getattr(model, "get_decoder", None)
        get_head = getattr(model, "get_output_embeddings", None)
        if get_decoder is None or get_head is None:
            raise ModelError(f"{lm.ref.name!r} exposes no decoder body / output embedding to score with")
        self.decoder = get_decoder()
        head = get_head()
        if head is None or getattr(head, "weight", None) is None:
            raise ModelError(f"{lm.ref.name!r} has no output embedding (lm_head) to score with")
        self.weight = head.weight.detach().float()  # float32 [V, H] (no copy when already float32)
        bias = getattr(head, "bias", None)
        self.bias = bias.detach().float() if bias is not None else None
        cfg = model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        scale = 1.0
        if getattr(cfg, "logit_scale", None):
            scale *= float(cfg.logit_scale)
        if getattr(cfg, "logits_scaling", None):
            scale /= float(cfg.logits_scaling)
        self.hidden_scale = scale
        self.device = self.weight.device

    # ------------------------------------------------------------------------------------------ head

    def head_nll(self, hidden: Any, targets: Any, *, entropy: bool = False) -> tuple[Any, Any | None]:
        """NLL (and entropy) of ``targets[t]`` given final hidden state ``hidden[t]``; float32 tensors ``[T]``."""
        torch = self.torch
        if self.hidden_scale != 1.0:
            hidden = hidden * self.hidden_scale
        if self.softcap:
            return self._softcapped_nll(hidden, targets, entropy)
        from ..kernels.fused_nll import fused_nll

        out = fused_nll(
            hidden, self.weight, targets.to(torch.long), bias=self.bias, return_entropy=entropy, backend=self.backend
        )
        return (out[0], out[1]) if entropy else (out, None)

    def _softcapped_nll(self, hidden: Any, targets: Any, entropy: bool) -> tuple[Any, Any | None]:
        torch = self.torch
        n, vocab = hidden.shape[0], self.weight.shape[0]
        chunk = max(1, (1 << 24) // vocab)
        nll = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device) if entropy else None
        cap = float(self.softcap)
        for s in range(0, n, chunk):
            z = hidden[s : s + chunk].float() @ self.weight.T
            if self.bias is not None:
                z += self.bias
            z = torch.tanh(z / cap) * cap
            lse = torch.logsumexp(z, dim=-1)
            nll[s : s + chunk] = lse - z.gather(1, targets[s : s + chunk].long().unsqueeze(1)).squeeze(1)
            if ent is not None:
                ent[s : s + chunk] = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
        return nll, ent

    # ------------------------------------------------------------------------------------------ core

    def _windows(self, item: int, head: list[int], body: list[int]) -> list[_Window]:
        w = self.window
        n = len(body)
        max_head = max(len(self.start_ids), w - min(n, w // 2))
        if len(head) > max_head:
            cut = len(head) - max_head
            head = head[: len(self.start_ids)] + head[len(self.start_ids) + cut :]
        cap = w - len(head)
        overlap = min(self.overlap, cap // 2)
        out: list[_Window] = []
        a, scored = 0, 0
        while scored < n:
            b = min(n, a + cap)
            out.append(_Window(item, head + body[a:b], len(head), a, scored, b))
            scored = b
            a = b - overlap
        return out

    def score_ids(
        self,
        bodies: Sequence[Sequence[int]],
        heads: Sequence[Sequence[int]] | None = None,
        *,
        return_entropy: bool = False,
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """NLL (and entropy) of every token of each ``body`` given ``start + head + body[:i]``.

        ``heads`` are token ids placed after the start token (a prefix); returns ``(nll, entropy|None)`` float32
        arrays per body.
        """
        torch = self.torch
        results: list[tuple[np.ndarray, np.ndarray | None]] = [
            (
                np.full(len(body), np.nan, dtype=np.float32),
                np.full(len(body), np.nan, dtype=np.float32) if return_entropy else None,
            )
            for body in bodies
        ]
        batches = self._batches(bodies, heads)
        with torch.inference_mode():
            for batch in batches:
                self._run_batch(batch, results, return_entropy)
        return results

    def _batches(
        self, bodies: Sequence[Sequence[int]], heads: Sequence[Sequence[int]] | None
    ) -> list[list[_Window]]:
        """The windows of every body (``start + head`` pinned in front), longest first, grouped into batches."""
        if heads is not None and len(heads) != len(bodies):
            raise InputError(f"got {len(bodies)} bodies but {len(heads)} heads; pass one head per body (or None)")
        windows: list[_Window] = []
        for i, body in enumerate(bodies):
            body = [int(t) for t in body]
            head = self.start_ids + ([int(t) for t in heads[i]] if heads is not None else [])
            if body:
                windows.extend(self._windows(i, head, body))
        windows.sort(key=lambda win: -len(win.ids))
        batches: list[list[_Window]] = []
        for win in windows:
            cur = batches[-1] if batches else None
            longest = len(cur[0].ids) if cur else 0
            if cur and len(cur) < self.batch_size and (len(cur) + 1) * longest * longest <= _ATTN_ELEMS:
                cur.append(win)
            else:
                batches.append([win])
        return batches

    def _run_batch(
        self, batch: list[_Window], results: list[tuple[np.ndarray, np.ndarray | None]], entropy: bool
    ) -> None:
        fwd = self._forward(batch)
        if fwd is None:
            return
        hidden, targets, items, pos = fwd
        nll, ent = self.head_nll(hidden, targets, entropy=entropy)
        nll_np = nll.float().cpu().numpy()
        ent_np = ent.float().cpu().numpy() if ent is not None else None
        for item in np.unique(items):
            sel = items == item
            results[item][0][pos[sel]] = nll_np[sel]
            if ent_np is not None:
                results[item][1][pos[sel]] = ent_np[sel]

    def _forward(self, batch: list[_Window]) -> tuple[Any, Any, np.ndarray, np.ndarray] | None:
        """Run one batch of windows through the decoder body.

        Returns the final hidden states that predict each scored body token ``[N, H]``, those tokens' ids ``[N]``
        (both on the model's device), and for each row the body it belongs to and its index in that body; ``None``
        when the batch scores nothing.
        """
        torch = self.torch
        length = len(batch[0].ids)
        ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        rows, targets, where = [], [], []
        for r, win in enumerate(batch):
            n = len(win.ids)
            ids[r, :n] = torch.tensor(win.ids, dtype=torch.long)
            mask[r, :n] = 1
            for j in range(win.score_from, win.b):
                pos = win.head + (j - win.a) - 1
                if pos >= 0:
                    rows.append(r * length + pos)
                    targets.append(win.ids[pos + 1])
                    where.append((win.item, j))
        if not rows:
            return None
        uniform = bool(mask.all())
        out = self.decoder(
            input_ids=ids.to(self.device),
            attention_mask=None if uniform else mask.to(self.device),
            use_cache=False,
        )
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])[torch.tensor(rows, device=hidden.device)]
        items = np.fromiter((w[0] for w in where), dtype=np.int64, count=len(where))
        pos = np.fromiter((w[1] for w in where), dtype=np.int64, count=len(where))
        return hidden, torch.tensor(targets, device=hidden.device), items, pos

    def contrastive_ids(self, bodies: Sequence[Sequence[int]], head: Sequence[int]) -> list[np.ndarray]:
        """LongLLMLingua's contrastive score of every token of each body, float32 arrays.

        ``score[i] = NLL(body[i] | start + body[:i]) - NLL(body[i] | start + head + body[:i])`` (``nan`` where
        either stream has no prediction). Where :func:`ctxzip.kernels.choose_backend` picks the PyTorch reference
        for the LM head (CPU by default), this is :meth:`score_ids` of both streams in one batched call and a
        NumPy difference, exactly as before the kernel existed. Where it picks Triton (CUDA, or
        ``CTXZIP_KERNELS=triton`` under ``TRITON_INTERPRET=1``), the final hidden states of both streams are
        gathered per token and :func:`ctxzip.kernels.contrastive_nll` computes the difference in one launch that
        reads each weight tile once for both. Soft-capped heads always take the first path.
        """
        from ..kernels._dispatch import choose_backend

        n = len(bodies)
        if self.softcap or choose_backend(self.weight, self.bias, backend=self.backend) == "torch":
            runs = self.score_ids(list(bodies) * 2, [[]] * n + [list(head)] * n)
            return [p - c for (p, _), (c, _) in zip(runs[:n], runs[n:], strict=True)]
        out: list[np.ndarray] = []
        group: list[int] = []
        size = 0
        for i, body in enumerate(bodies):
            group.append(i)
            size += len(body)
            if size >= _CONTRASTIVE_TOKENS or i == n - 1:
                out.extend(self._contrastive_group([bodies[k] for k in group], list(head)))
                group, size = [], 0
        return out

    def _contrastive_group(self, bodies: list[Sequence[int]], head: list[int]) -> list[np.ndarray]:
        """:meth:`contrastive_ids` of a few bodies through :func:`ctxzip.kernels.contrastive_nll`."""
        torch = self.torch
        from ..kernels.contrastive import contrastive_nll
        from ..kernels.fused_nll import IGNORE_INDEX

        n = len(bodies)
        heads = [[]] * n + [head] * n
        lengths = [len(b) for b in bodies]
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        total = int(offsets[-1])
        with torch.inference_mode():
            streams: list[Any] = [None, None]
            seen = [np.zeros(total, dtype=bool), np.zeros(total, dtype=bool)]
            for batch in self._batches(list(bodies) * 2, heads):
                fwd = self._forward(batch)
                if fwd is None:
                    continue
                hidden, _, items, pos = fwd
                for s in (0, 1):
                    sel = (items >= n) if s else (items < n)
                    if not sel.any():
                        continue
                    flat = offsets[items[sel] - s * n] + pos[sel]
                    if streams[s] is None:
                        streams[s] = torch.zeros((total, hidden.shape[-1]), dtype=hidden.dtype, device=hidden.device)
                    dest = torch.as_tensor(flat, device=hidden.device)
                    streams[s][dest] = hidden[torch.as_tensor(np.flatnonzero(sel), device=hidden.device)]
                    seen[s][flat] = True
            both = seen[0] & seen[1]
            scores = np.full(total, np.nan, dtype=np.float32)
            if both.any():
                ids = np.concatenate([np.asarray(b, dtype=np.int64) for b in bodies])
                targets = torch.as_tensor(np.where(both, ids, IGNORE_INDEX), device=self.device)
                plain, cond = streams
                if self.hidden_scale != 1.0:
                    plain, cond = plain * self.hidden_scale, cond * self.hidden_scale
                diff = contrastive_nll(plain, cond, self.weight, targets, bias=self.bias, backend=self.backend)
                scores[both] = diff.float().cpu().numpy()[both]
        return [scores[offsets[k] : offsets[k + 1]].copy() for k in range(n)]

    # ------------------------------------------------------------------------------------------ texts

    def encode(self, texts: Sequence[str]) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
        """Token ids and character offsets (starts, ends) of each text, without special tokens."""
        if not texts:
            return []
        enc = self.lm.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for ids, offs in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            arr = np.asarray(offs, dtype=np.int64).reshape(-1, 2)
            out.append((list(ids), arr[:, 0].copy(), arr[:, 1].copy()))
        return out

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def token_nll(
        self,
        texts: Sequence[str],
        *,
        prefixes: Sequence[str] | str | None = None,
        suffixes: Sequence[str] | str | None = None,
        return_entropy: bool = False,
    ) -> list[TokenScores]:
        """Score every token of every text (see the module docstring); one :class:`TokenScores` per text."""
        if isinstance(texts, str):
            raise InputError("token_nll takes a list of texts; wrap a single text in a list")
        texts = list(texts)
        pre = self._per_text(prefixes, len(texts), "prefixes")
        suf = self._per_text(suffixes, len(texts), "suffixes")
        encoded = self.encode(texts)
        pre_ids = [self.ids(p) for p in pre] if pre is not None else None
        suf_ids = [self.ids(s) for s in suf] if suf is not None else None
        bodies = [e[0] + (suf_ids[i] if suf_ids is not None else []) for i, e in enumerate(encoded)]
        scored = self.score_ids(bodies, pre_ids, return_entropy=return_entropy)
        out = []
        for i, (ids, starts, ends) in enumerate(encoded):
            nll, ent = scored[i]
            n = len(ids)
            out.append(
                TokenScores(
                    input_ids=np.asarray(ids, dtype=np.int64),
                    starts=starts,
                    ends=ends,
                    nll=nll[:n],
                    entropy=ent[:n] if ent is not None else None,
                    suffix_nll=nll[n:] if suf_ids is not None else None,
                )
            )
        return out

    @staticmethod
    def _per_text(value: Sequence[str] | str | None, n: int, what: str) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            return [value] * n
        value = list(value)
        if len(value) != n:
            raise InputError(f"{what} has {len(value)} entries for {n} texts; pass one per text or a single string")
        return value

    def conditional_nll(self, texts: Sequence[str], prefix: str, **kw: Any) -> list[TokenScores]:
        """:meth:`token_nll` of each text with the same ``prefix`` before it."""
        return self.token_nll(texts, prefixes=prefix, **kw)

    def suffix_nll(
        self, contexts: Sequence[str], suffix: str, *, prefixes: Sequence[str] | str | None = None
    ) -> np.ndarray:
        """Mean NLL of ``suffix`` given each context (float32 ``[len(contexts)]``): low = the context predicts it.

        To get the contexts' own token NLLs from the same forward pass, call :meth:`token_nll` with
        ``suffixes=suffix`` and read both ``nll`` and ``suffix_nll``.
        """
        scores = self.token_nll(contexts, prefixes=prefixes, suffixes=suffix)
        return np.asarray([s.suffix_mean_nll for s in scores], dtype=np.float32)

    def mean_nll(self, texts: Sequence[str]) -> np.ndarray:
        """Mean token NLL of each text (float32): the log-perplexity."""
        return np.asarray([s.mean_nll for s in self.token_nll(texts)], dtype=np.float32)

    def stream(self, head: Sequence[int] = ()) -> PrefixStream:
        """An incremental scorer conditioned on ``start + head`` (see :class:`PrefixStream`)."""
        return PrefixStream(self, list(head))


class PrefixStream:
    """Score segments one after another, each given the start token, a fixed head and the tokens committed so far.

    ``score(ids)`` returns the NLL of each of ``ids`` given the context, without changing it; ``commit(ids)``
    appends tokens to the context. With a plain (full-attention) KV cache the committed tokens are run once
    and cached; when the context outgrows the window it is rebuilt from the head and the most recent half window
    of committed tokens. Models with sliding-window layers recompute the context on every call instead.
    """

    def __init__(self, scorer: CausalLMScorer, head: list[int]):
        self.scorer = scorer
        self.head = scorer.start_ids + [int(t) for t in head]
        if len(self.head) > scorer.window // 2:
            cut = len(self.head) - scorer.window // 2
            self.head = self.head[: len(scorer.start_ids)] + self.head[len(scorer.start_ids) + cut :]
        self.committed: list[int] = []
        self._cache: Any = None
        self._cached = 0  # tokens in the cache
        self._pending: list[int] = list(self.head)  # context tokens not yet in the cache
        self._last_hidden: Any = None  # final hidden state of the last cached token
        cfg = scorer.lm.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        types = getattr(cfg, "layer_types", None) or []
        self._use_cache = not getattr(cfg, "sliding_window", None) or all(t == "full_attention" for t in types)
        if types and not all(t == "full_attention" for t in types):
            self._use_cache = False

    def __len__(self) -> int:
        return len(self.committed)

    def commit(self, ids: Sequence[int]) -> None:
        ids = [int(t) for t in ids]
        self.committed.extend(ids)
        self._pending.extend(ids)

    def _rebuild(self, room: int) -> None:
        keep = max(0, self.scorer.window - len(self.head) - room)
        keep = min(keep, max(0, self.scorer.window // 2 - len(self.head)), len(self.committed))
        tail = self.committed[len(self.committed) - keep :] if keep else []
        self._cache, self._cached, self._last_hidden = None, 0, None
        self._pending = self.head + tail

    def score(self, ids: Sequence[int], *, return_entropy: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """NLL (and entropy) of each of ``ids`` given the current context; float32 arrays."""
        torch = self.scorer.torch
        ids = [int(t) for t in ids]
        if not ids:
            empty = np.zeros(0, dtype=np.float32)
            return empty, (empty.copy() if return_entropy else None)
        if len(ids) > self.scorer.window // 2:
            raise InputError(f"segments must be at most half the window ({self.scorer.window // 2} tokens)")
        if self._cached + len(self._pending) + len(ids) > self.scorer.window:
            self._rebuild(len(ids))
        if not self._use_cache:
            self._cache, self._cached, self._last_hidden = None, 0, None
            self._pending = self._pending_full(len(ids))
        n_pending = len(self._pending)
        run = self._pending + ids
        with torch.inference_mode():
            if self._use_cache and self._cache is None:
                transformers = require("transformers", feature="iterative scoring")
                self._cache = transformers.DynamicCache(config=self.scorer.lm.model.config)
            out = self.scorer.decoder(
                input_ids=torch.tensor([run], dtype=torch.long, device=self.scorer.device),
                past_key_values=self._cache if self._use_cache else None,
                use_cache=self._use_cache,
            )
            hidden = (out[0] if isinstance(out, tuple) else out.last_hidden_state)[0]
            preds = hidden[n_pending - 1 : n_pending + len(ids) - 1] if n_pending else hidden[: len(ids) - 1]
            first_nan = False
            if n_pending == 0:
                if self._last_hidden is not None:
                    preds = torch.cat([self._last_hidden.unsqueeze(0), preds], dim=0)
                else:
                    first_nan = True
            targets = torch.tensor(ids[1:] if first_nan else ids, dtype=torch.long, device=hidden.device)
            nll, ent = self.scorer.head_nll(preds, targets, entropy=return_entropy)
            if self._use_cache:
                self._cache.crop(-len(ids))
                self._cached += n_pending
                if n_pending:
                    self._last_hidden = hidden[n_pending - 1].clone()
                self._pending = []
        nll_np = nll.float().cpu().numpy()
        ent_np = ent.float().cpu().numpy() if ent is not None else None
        if first_nan:
            nll_np = np.concatenate([[np.nan], nll_np]).astype(np.float32)
            if ent_np is not None:
                ent_np = np.concatenate([[np.nan], ent_np]).astype(np.float32)
        return nll_np, ent_np

    def _pending_full(self, room: int) -> list[int]:
        keep = min(max(0, self.scorer.window - len(self.head) - room), len(self.committed))
        tail = self.committed[len(self.committed) - keep :] if keep else []
        return self.head + tail
