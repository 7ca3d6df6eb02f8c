"""The gist encoder (a torch module) and the decoder-side input builders.

Importing this module imports torch; :mod:`ctxzip.gist` imports it only when a model is built.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from .._lazy import require
from ..errors import ConfigError, ModelError
from .config import GistConfig

torch = require("torch", feature="gist compression")
nn = torch.nn
F = torch.nn.functional

__all__ = ["GistEncoder", "decoder_parts", "FORMAT", "SEP", "CONT", "RECON", "build_prefix", "file_fingerprint"]

FORMAT = "ctxzip-gist-v1"
SEP, CONT, RECON = 0, 1, 2  # rows of GistEncoder.special: segment separator, "continue", "reconstruct"


def decoder_parts(model: Any) -> tuple[Any, Any, Any, Any]:
    """``(embed_tokens, layers, rotary_emb, lm_head)`` of a Llama-family Hugging Face causal LM."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    rotary = getattr(base, "rotary_emb", None)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if layers is None or rotary is None or embed is None or head is None:
        raise ModelError(
            f"{type(model).__name__} is not a Llama-family causal LM (needs .model.layers, .model.rotary_emb and "
            "input/output embeddings); gist supports SmolLM2, Llama, Qwen and Mistral-style decoders"
        )
    return embed, layers, rotary, head


def _attention_mask(lengths: Any, length: int, causal: bool, dtype: Any) -> Any:
    """Additive 4D mask ``(B, 1, L, L)``: valid keys only (and no future keys when causal)."""
    idx = torch.arange(length, device=lengths.device)
    allowed = (idx[None, :] < lengths[:, None])[:, None, None, :]  # (B,1,1,L)
    if causal:
        allowed = allowed & (idx[None, :] <= idx[:, None])[None, None]
    zero = torch.zeros((), dtype=dtype, device=lengths.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


class GistEncoder(nn.Module):
    """Maps token segments to ``ceil(n / factor)`` vectors in the decoder's input-embedding space.

    Only the trainable parts are parameters of this module (and of its state dict): the copied top layers, the
    pooled-state norm, the projector, the three special embeddings and the pooled-embedding gain. The decoder's
    embeddings and first ``frozen_layers`` layers are used in place, never copied or stored.
    """

    def __init__(self, config: GistConfig, decoder: Any) -> None:
        super().__init__()
        if not isinstance(config, GistConfig):
            raise ConfigError(f"config must be a GistConfig, got {type(config).__name__}")
        embed, layers, rotary, _ = decoder_parts(decoder)
        need = config.frozen_layers + config.trainable_layers
        if need > len(layers):
            raise ConfigError(
                f"frozen_layers + trainable_layers = {need} but the decoder has {len(layers)} layers; lower them"
            )
        self.config = config
        object.__setattr__(self, "_decoder", decoder)  # not a submodule: never trained, never saved
        hidden = embed.weight.shape[1]
        self.hidden_size = int(hidden)
        self.layers = nn.ModuleList(
            copy.deepcopy(layers[config.frozen_layers + i]).float() for i in range(config.trainable_layers)
        )
        for p in self.layers.parameters():
            p.requires_grad_(True)
        self.norm = nn.LayerNorm(hidden)
        self.proj_in = nn.Linear(hidden, config.projector_hidden)
        self.proj_out = nn.Linear(config.projector_hidden, hidden)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        with torch.no_grad():
            special = embed.weight[:3].detach().float().clone()
        self.special = nn.Parameter(special)
        self.gain = nn.Parameter(torch.ones(()))

    @property
    def decoder(self) -> Any:
        return self._decoder

    def forward(self, input_ids: Any, lengths: Any, factor: int) -> tuple[Any, Any]:
        """``input_ids (B, L)`` right-padded, ``lengths (B,)`` → ``(vectors (B, K, H), counts (B,))``, K=ceil(L/f)."""
        if factor not in self.config.factors:
            raise ConfigError(f"factor={factor} is not one of the trained factors {self.config.factors}")
        embed, layers, rotary, _ = decoder_parts(self._decoder)
        bsz, length = input_ids.shape
        dtype = self.special.dtype
        with torch.no_grad():
            emb = embed(input_ids).to(dtype)
            pos = torch.arange(length, device=input_ids.device)[None].expand(bsz, -1)
            cos_sin = rotary(emb, pos)
            mask = _attention_mask(lengths, length, self.config.causal, dtype)
            h = emb
            for layer in layers[: self.config.frozen_layers]:
                h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
        for layer in self.layers:
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
        k = math.ceil(length / factor)
        pad = k * factor - length
        valid = (torch.arange(length, device=input_ids.device)[None] < lengths[:, None]).to(dtype)
        if pad:
            h = F.pad(h, (0, 0, 0, pad))
            emb = F.pad(emb, (0, 0, 0, pad))
            valid = F.pad(valid, (0, pad))
        w = valid.view(bsz, k, factor, 1)
        denom = w.sum(2).clamp_min(1.0)
        pooled_h = (h.view(bsz, k, factor, -1) * w).sum(2) / denom
        pooled_e = (emb.view(bsz, k, factor, -1) * w).sum(2) / denom
        out = self.gain * pooled_e + self.proj_out(F.gelu(self.proj_in(self.norm(pooled_h))))
        counts = torch.div(lengths + factor - 1, factor, rounding_mode="floor")
        return out, counts

    # ------------------------------------------------------------------ weights
    def trainable_state(self, dtype: Any = None) -> dict[str, Any]:
        out = {}
        for name, tensor in self.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            out[name] = t.to(dtype) if dtype is not None else t.clone()
        return out

    def save(self, path: str | Path, *, dtype: str = "float16", extra: dict[str, str] | None = None) -> Path:
        """Write the trainable weights (safetensors, ``dtype``) with the config in the metadata."""
        st = require("safetensors.torch", feature="gist weights")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "config": self.config.to_json(), "hidden_size": str(self.hidden_size)}
        meta.update(extra or {})
        tmp = path.with_suffix(path.suffix + ".tmp")
        st.save_file(self.trainable_state(getattr(torch, dtype)), str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def read_config(cls, path: str | Path) -> tuple[GistConfig, dict[str, str]]:
        safetensors = require("safetensors", feature="gist weights")
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"gist weights {path} do not exist; train them with `ctxzip train-gist`")
        try:
            with safetensors.safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
        except Exception as exc:  # safetensors raises its own error type for files that are not safetensors
            raise ModelError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
        if meta.get("format") != FORMAT or "config" not in meta:
            raise ModelError(f"{path} is not a ctxzip gist weights file (format {meta.get('format')!r})")
        return GistConfig.from_mapping(json.loads(meta["config"])), meta

    @classmethod
    def load(cls, path: str | Path, decoder: Any, **overrides: Any) -> GistEncoder:
        """Build an encoder for ``decoder`` from weights written by :meth:`save` (``overrides``: e.g. factor=8)."""
        st = require("safetensors.torch", feature="gist weights")
        config, meta = cls.read_config(path)
        if overrides:
            config = config.replace(**overrides)
        enc = cls(config, decoder)
        if str(enc.hidden_size) != meta.get("hidden_size"):
            raise ModelError(
                f"{path} was trained for a decoder with hidden size {meta.get('hidden_size')}, this decoder has "
                f"{enc.hidden_size}; use the decoder named in its config ({config.decoder!r})"
            )
        tensors = st.load_file(str(path))
        try:
            enc.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{path} does not match the gist encoder layout ({exc})") from None
        enc.eval()
        return enc


def build_prefix(encoder: GistEncoder, segments: list[Any], marker: int) -> Any:
    """Decoder input embeddings ``(N, H)``: ``[SEP] vectors`` for each segment, then the ``marker`` embedding."""
    parts = []
    for vecs in segments:
        parts.append(encoder.special[SEP][None])
        parts.append(vecs.to(encoder.special.dtype))
    parts.append(encoder.special[marker][None])
    return torch.cat(parts, 0)


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
