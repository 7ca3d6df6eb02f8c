"""The reader: a small local causal LM that answers from, or completes code after, a compressed prompt.

* code rows: greedy completion of ``instruction + compressed context + prefix`` (plain text, no chat template)
  until the first non-blank line is finished (at most ``max_new_tokens``); that line is the prediction. The
  prompt's last token is *healed* when it is only white space (the prefix ends with a newline): it is taken off
  and the first generated token must start with its text. Code tokenizers merge a newline with the next line's
  indentation ("\n        "), so a prompt that ends in a bare newline token is one the model never saw in
  training, and SmolLM2 answered it with a ``#`` line on every code.dev row (reader version 1; exact match 0).
* QA rows: the lost-in-the-middle prompt ("Write a high-quality answer for the given question using only the
  provided search results ...", the compressed context, ``Question: ...``, ``Answer:``), wrapped in the model's
  chat template when it has one; greedy answer of at most ``max_new_tokens`` tokens; and the mean negative
  log-likelihood (nats per token) of the gold answer as the continuation of that prompt.

Prompts longer than the model's context are cut from the left (the question or code prefix at the end stays).
The default model is the shipped SmolLM2-135M-Instruct, loaded through :func:`ctxzip.models.load_causal_lm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._lazy import require
from ..errors import ConfigError

__all__ = ["DEFAULT_READER", "READER_VERSION", "Reader", "load_reader", "qa_prompt"]

DEFAULT_READER = "smollm2-135m"
# bumped when the reader's predictions change for the same model and prompt (bench records store it and only
# resume from records of the same version): 2 = token healing of code prompts
READER_VERSION = 2

QA_INSTRUCTION = (
    "Write a high-quality answer for the given question using only the provided search results "
    "(some of which might be irrelevant)."
)


def qa_prompt(context: str, question: str) -> str:
    """The lost-in-the-middle QA prompt around a (compressed) context."""
    ctx = context.strip()
    return f"{QA_INSTRUCTION}\n\n{ctx}\n\nQuestion: {question.strip()}\nAnswer:"


def _line_done(text: str) -> bool:
    """True once ``text`` holds a non-blank line followed by a newline."""
    for i, line in enumerate(text.split("\n")):
        if line.strip():
            return i < text.count("\n")
    return False


@dataclass
class Reader:
    """Greedy generation and answer NLL with a causal LM (``model``, fast ``tokenizer``)."""

    model: Any
    tokenizer: Any
    name: str = DEFAULT_READER
    max_length: int = 8192
    code_max_new_tokens: int = 48
    qa_max_new_tokens: int = 32
    use_chat_template: bool = True
    heal_code_prompts: bool = True
    _device: Any = field(default=None, repr=False)
    _starting: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for attr in ("max_length", "code_max_new_tokens", "qa_max_new_tokens"):
            v = getattr(self, attr)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"reader {attr} must be a positive integer, got {v!r}")
        if self.max_length <= self.code_max_new_tokens or self.max_length <= self.qa_max_new_tokens:
            raise ConfigError("reader max_length must exceed max_new_tokens")
        if self._device is None:
            try:
                self._device = next(self.model.parameters()).device
            except (StopIteration, AttributeError):
                self._device = "cpu"

    # ------------------------------------------------------------ prompt ids
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def chat(self) -> bool:
        """Whether QA prompts go through the model's chat template."""
        return bool(self.use_chat_template and getattr(self.tokenizer, "chat_template", None))

    def _chat_ids(self, user: str) -> list[int]:
        tok = self.tokenizer
        if self.chat:
            ids = tok.apply_chat_template(
                [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(x) for x in ids]
        return self._encode(user)

    def _fit(self, ids: list[int], room: int) -> list[int]:
        keep = self.max_length - room
        return ids if len(ids) <= keep else ids[len(ids) - keep :]

    def _tokens_starting_with(self, text: str) -> list[int]:
        """Ids of the vocabulary tokens whose text starts with ``text`` (computed once per text)."""
        if text not in self._starting:
            tok = self.tokenizer
            self._starting[text] = [i for i in range(len(tok)) if tok.decode([i]).startswith(text)]
        return self._starting[text]

    def _heal(self, ids: list[int]) -> tuple[list[int], str, list[int] | None]:
        """Token healing: a prompt whose last token is only white space loses it, and the first generated token
        must start with that text. Returns ``(ids, healed text, allowed first tokens or None)``."""
        if len(ids) < 2:
            return ids, "", None
        last = self.tokenizer.decode([ids[-1]])
        if not last or last.strip():
            return ids, "", None
        allowed = self._tokens_starting_with(last)
        if not allowed:
            return ids, "", None
        return ids[:-1], last, allowed

    # ------------------------------------------------------------ generation
    def _greedy(self, ids: list[int], max_new: int, stop_at_line: bool, first_allowed: list[int] | None = None) -> str:
        torch = require("torch", feature="the benchmark reader")
        ids = self._fit(ids, max_new)
        eos = self.tokenizer.eos_token_id
        out_ids: list[int] = []
        with torch.inference_mode():
            inp = torch.tensor([ids], dtype=torch.long, device=self._device)
            res = self.model(input_ids=inp, use_cache=True)
            past = res.past_key_values
            for step_i in range(max_new):
                logits = res.logits[0, -1]
                if step_i == 0 and first_allowed:
                    allowed = torch.tensor(first_allowed, dtype=torch.long, device=logits.device)
                    nxt = int(allowed[int(logits[allowed].argmax())])
                else:
                    nxt = int(logits.argmax())
                if eos is not None and nxt == eos:
                    break
                out_ids.append(nxt)
                if stop_at_line and _line_done(self.tokenizer.decode(out_ids)):
                    break
                step = torch.tensor([[nxt]], dtype=torch.long, device=self._device)
                res = self.model(input_ids=step, past_key_values=past, use_cache=True)
                past = res.past_key_values
        return str(self.tokenizer.decode(out_ids, skip_special_tokens=True))

    def complete_line(self, prompt: str) -> str:
        """The first non-blank line the model writes after ``prompt`` (greedy)."""
        ids, healed, allowed = self._heal(self._encode(prompt)) if self.heal_code_prompts else (self._encode(prompt), "", None)
        text = self._greedy(ids, self.code_max_new_tokens, stop_at_line=True, first_allowed=allowed)
        if healed and text.startswith(healed):
            text = text[len(healed) :]
        for line in text.split("\n"):
            if line.strip():
                return line
        return ""

    def answer(self, context: str, question: str) -> str:
        """Greedy answer to ``question`` from ``context`` (the whole generation, stripped)."""
        text = self._greedy(self._chat_ids(qa_prompt(context, question)), self.qa_max_new_tokens, False)
        return text.strip()

    def answer_nll(self, context: str, question: str, answer: str) -> float:
        """Mean negative log-likelihood (nats per token) of ``answer`` after the QA prompt."""
        torch = require("torch", feature="the benchmark reader")
        # after a chat template's assistant header the answer starts the turn; after "Answer:" it follows a space
        ans = self._encode(answer.strip() if self.chat else " " + answer.strip())
        if not ans:
            raise ConfigError("answer_nll needs a non-empty answer")
        ans = ans[: self.max_length // 2]
        prompt = self._fit(self._chat_ids(qa_prompt(context, question)), len(ans))
        with torch.inference_mode():
            inp = torch.tensor([prompt + ans], dtype=torch.long, device=self._device)
            logits = self.model(input_ids=inp).logits[0, len(prompt) - 1 : -1].float()
            target = torch.tensor(ans, dtype=torch.long, device=logits.device)
            nll = torch.nn.functional.cross_entropy(logits, target, reduction="mean")
        return float(nll)


def load_reader(spec: str = DEFAULT_READER, **kwargs: Any) -> Reader:
    """A :class:`Reader` on the causal LM ``spec`` (a ctxzip model name, a local path or a hub id)."""
    from ..models import load_causal_lm

    lm = load_causal_lm(spec)
    return Reader(model=lm.model, tokenizer=lm.tokenizer, name=spec, max_length=int(lm.max_length), **kwargs)
