"""Training of the gist encoder against a frozen decoder: reconstruction + continuation, resumable, time-bounded.

Each step draws (seeded by ``(seed, step)``, so a resumed run sees the data an uninterrupted one would) a task —
reconstruction with probability ``recon_weight`` (0.2), continuation otherwise — a pooling factor from the
config's ``factors``, and ``batch_size`` windows of ``segment_tokens + continuation_tokens`` tokens:

* continuation: ``[SEP] gist(segment) [CONT]`` then the next tokens; loss = their NLL under the frozen decoder;
* reconstruction: ``[SEP] gist(segment) [RECON]`` then the segment itself; loss = its NLL.

Checkpoints (``checkpoint.safetensors``: float32 weights, AdamW moments, the step in the metadata; no pickle) are
written every ``checkpoint_every`` steps and at the end; the loss curve goes to ``log.jsonl``; the final fp16
weights to ``gist.safetensors``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import ConfigError
from .config import GistConfig, TrainConfig
from .data import TokenizedCorpus, load_corpus, split_corpus

__all__ = ["TrainSummary", "train", "batch_loss"]


@dataclass(frozen=True)
class TrainSummary:
    steps: int  # steps done in total (including earlier runs when resumed)
    start_step: int
    minutes: float  # wall-clock minutes of this run
    mean_cont_loss: float  # mean continuation loss over the last (up to) 20 continuation steps of this run
    mean_recon_loss: float  # same for reconstruction (nan when none)
    weights: str
    log: str


def batch_loss(encoder: Any, ids: Any, segment_tokens: int, factor: int, task: str) -> tuple[Any, int, int]:
    """``(mean NLL, correct argmax tokens, scored tokens)`` of one batch of windows ``ids (B, S+T)``."""
    torch = require("torch", feature="gist training")
    from .model import CONT, RECON, SEP, decoder_parts

    if task not in ("cont", "recon"):
        raise ConfigError(f"task must be 'cont' or 'recon', got {task!r}")
    decoder = encoder.decoder
    embed, _, _, head = decoder_parts(decoder)
    seg = ids[:, :segment_tokens]
    tail = ids[:, segment_tokens:] if task == "cont" else seg
    if tail.shape[1] == 0:
        raise ConfigError("continuation windows need continuation_tokens >= 1")
    bsz = ids.shape[0]
    lengths = torch.full((bsz,), segment_tokens, dtype=torch.long, device=ids.device)
    vecs, _ = encoder(seg, lengths, factor)
    hidden = vecs.shape[-1]
    marker = CONT if task == "cont" else RECON
    with torch.no_grad():
        tail_emb = embed(tail)
    dtype = tail_emb.dtype
    x = torch.cat(
        [encoder.special[SEP].expand(bsz, 1, hidden).to(dtype), vecs.to(dtype),
         encoder.special[marker].expand(bsz, 1, hidden).to(dtype), tail_emb], 1
    )
    p = vecs.shape[1] + 2
    t = tail.shape[1]
    h = decoder.model(inputs_embeds=x, use_cache=False).last_hidden_state[:, p - 1 : p - 1 + t]
    logits = head(h).float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tail.reshape(-1))
    correct = int((logits.argmax(-1) == tail).sum())
    return loss, correct, int(tail.numel())


def _save_checkpoint(path: Path, encoder: Any, opt: Any, step: int, gist: GistConfig, cfg: TrainConfig,
                     elapsed: float) -> None:
    st = require("safetensors.torch", feature="gist training")
    tensors = {f"model.{k}": v for k, v in encoder.trainable_state().items()}
    names = {id(p): n for n, p in encoder.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p)
            if state:
                name = names[id(p)]
                tensors[f"opt.{name}.exp_avg"] = state["exp_avg"].detach().cpu().contiguous()
                tensors[f"opt.{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().cpu().contiguous()
    meta = {"step": str(step), "elapsed": f"{elapsed:.3f}", "config": gist.to_json(),
            "train": json.dumps(asdict(cfg), sort_keys=True)}
    tmp = path.with_suffix(".tmp")
    st.save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def _load_checkpoint(path: Path, encoder: Any, opt: Any, gist: GistConfig) -> int:
    torch = require("torch", feature="gist training")
    safetensors = require("safetensors", feature="gist training")
    st = require("safetensors.torch", feature="gist training")
    with safetensors.safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    saved = GistConfig.from_mapping(json.loads(meta.get("config", "{}")))
    if saved != gist:
        raise ConfigError(
            f"{path} was trained with {saved}, not {gist}; resume with the same options or use another --out"
        )
    tensors = st.load_file(str(path))
    encoder.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    step = int(meta.get("step", "0"))
    for name, p in encoder.named_parameters():
        if f"opt.{name}.exp_avg" in tensors:
            opt.state[p] = {"step": torch.tensor(float(step)), "exp_avg": tensors[f"opt.{name}.exp_avg"],
                            "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"]}
    return step


def train(cfg: TrainConfig, gist: GistConfig, *, lm: Any = None, log: Callable[[str], None] | None = None,
          corpus: TokenizedCorpus | None = None) -> TrainSummary:
    """Train (or resume) a gist encoder; returns a summary. ``lm``: a LoadedLM (default: ``gist.decoder``)."""
    if not isinstance(cfg, TrainConfig) or not isinstance(gist, GistConfig):
        raise ConfigError("train(cfg, gist) takes a TrainConfig and a GistConfig")
    if cfg.segment_tokens > gist.max_segment_tokens:
        raise ConfigError(
            f"segment_tokens={cfg.segment_tokens} exceeds max_segment_tokens={gist.max_segment_tokens}; lower it"
        )
    torch = require("torch", feature="gist training")
    from ..models import load_causal_lm
    from .model import GistEncoder

    say = log or (lambda s: None)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if lm is None:
        lm = load_causal_lm(gist.decoder)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    if corpus is None:
        train_docs, _ = split_corpus(load_corpus(cfg.data_dir))
        corpus = TokenizedCorpus(train_docs, lm.tokenizer)
    device = next(lm.model.parameters()).device
    encoder = GistEncoder(gist, lm.model).to(device)
    encoder.train()
    params = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, log_path, weights = out / "checkpoint.safetensors", out / "log.jsonl", out / "gist.safetensors"
    step = _load_checkpoint(ckpt, encoder, opt, gist) if ckpt.is_file() else 0
    start_step = step
    if step:
        say(f"resumed from {ckpt} at step {step}")
    t0 = time.monotonic()
    budget = cfg.max_minutes * 60.0
    last = 0.0
    cont_losses: list[float] = []
    recon_losses: list[float] = []
    window = cfg.segment_tokens + cfg.continuation_tokens
    with log_path.open("a", encoding="utf-8") as logf:
        while step < cfg.max_steps:
            elapsed = time.monotonic() - t0
            if elapsed + last > budget:
                break
            rng = np.random.default_rng([cfg.seed, step])
            task = "recon" if rng.random() < cfg.recon_weight else "cont"
            factor = int(rng.choice(np.asarray(gist.factors)))
            ids = torch.from_numpy(corpus.windows(cfg.batch_size, window, rng)).to(device)
            lr = cfg.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            ts = time.monotonic()
            loss, correct, n = batch_loss(encoder, ids, cfg.segment_tokens, factor, task)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            last = time.monotonic() - ts
            value = float(loss.detach())
            (cont_losses if task == "cont" else recon_losses).append(value)
            rec = {"step": step, "task": task, "factor": factor, "loss": round(value, 5),
                   "acc": round(correct / n, 5), "lr": round(lr, 8), "seconds": round(last, 3),
                   "elapsed": round(time.monotonic() - t0, 2)}
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            say(json.dumps(rec))
            if step % cfg.checkpoint_every == 0:
                _save_checkpoint(ckpt, encoder, opt, step, gist, cfg, time.monotonic() - t0)
    _save_checkpoint(ckpt, encoder, opt, step, gist, cfg, time.monotonic() - t0)
    encoder.save(weights, extra={"steps": str(step)})

    def tail(xs: list[float]) -> float:
        return float(np.mean(xs[-20:])) if xs else float("nan")

    return TrainSummary(step, start_step, (time.monotonic() - t0) / 60.0, tail(cont_losses), tail(recon_losses),
                        str(weights), str(log_path))
