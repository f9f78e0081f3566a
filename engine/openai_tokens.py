"""Counting prompt tokens for a model that runs on another server.

The prompt budget (``[model] context_tokens``) is counted before the request is sent, and
``ChatModel.count_tokens`` is synchronous (history trimming calls it many times), so a
network round trip per count is out. Three ways, best first:

1. ``[model] tokenizer`` — the served model's own tokenizer and chat template: exact.
2. The server's ``/tokenize`` endpoint (vLLM and llama-server have one), asked once at start
   how many tokens per UTF-8 byte sample texts take; the worst ratio seen plus 20% is used.
3. Otherwise a stated, conservative estimate: one token per two UTF-8 bytes. English text
   in the BPE tokenizers of current chat models takes about one token per four bytes, so the
   budget holds with about 2x headroom; scripts that take more (many emoji) may not.

Every message is counted with :data:`TEMPLATE_TOKENS` for the chat template around it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

from engine.base import ChatMessages

DEFAULT_TOKENS_PER_BYTE = 0.5
# The chat template's own tokens: ChatML takes 5 per message and 3 to open the reply, Llama 3
# 5 per message and 5 for the reply with its BOS; 7 per message + 1 covers both from two
# messages on, and keeps one message's overhead at the 8 that build_prompt assumes.
TEMPLATE_TOKENS = 7
GENERATION_PROMPT_TOKENS = 1
CALIBRATION_MARGIN = 1.2

# Calibration text besides the caller's own samples: prose, digits, punctuation, non-ASCII.
CALIBRATION_SAMPLES = (
    "The lighthouse keeper poured two cups of tea and watched the storm roll in.",
    "Order #4471: 3× brass gears (12.5 mm), 2 springs — ship by 2026-03-14, 09:30 UTC!",
    "Ça va? Schön, danke. ¿Qué tal? Привет, как дела? 你好，今天天气很好。 🌊⚓🐈",
)


class EstimateCounter:
    """Counts ``ratio`` tokens per UTF-8 byte of content, rounded up, plus template tokens."""

    def __init__(self, tokens_per_byte: float = DEFAULT_TOKENS_PER_BYTE, how: str = "") -> None:
        self.tokens_per_byte = tokens_per_byte
        self.how = how or f"estimated at {tokens_per_byte:.2f} tokens per UTF-8 byte"

    def _text_tokens(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8")) * self.tokens_per_byte)

    def count(self, messages: ChatMessages) -> int:
        body = sum(self._text_tokens(m["content"]) + TEMPLATE_TOKENS for m in messages)
        return body + GENERATION_PROMPT_TOKENS

    def truncate(self, text: str, max_tokens: int) -> str:
        budget = int(max(0, max_tokens) / self.tokens_per_byte)
        cut = text.encode("utf-8")[:budget]
        return cut.decode("utf-8", "ignore")  # never split a character


def calibrated(samples: Sequence[tuple[str, int]]) -> EstimateCounter:
    """An estimate from (text, tokens the server counted) pairs: the worst ratio + 20%."""
    ratios = [tokens / len(text.encode("utf-8")) for text, tokens in samples if text]
    ratio = min(1.0, max(ratios) * CALIBRATION_MARGIN)
    return EstimateCounter(ratio, f"calibrated on the server's /tokenize: {ratio:.3f} per byte")


class TokenizerCounter:
    """Exact counts with the served model's tokenizer and its chat template."""

    def __init__(self, tokenizer: Any, source: str) -> None:
        self.tokenizer = tokenizer
        self.how = f"counted with the tokenizer of {source}"

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one counter per backend, bounded
    def _count_frozen(self, frozen: tuple[tuple[str, str], ...]) -> int:
        messages = [{"role": role, "content": content} for role, content in frozen]
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return len(ids)

    def count(self, messages: ChatMessages) -> int:
        return self._count_frozen(tuple((m["role"], m["content"]) for m in messages))

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= max_tokens:
            return text
        return self.tokenizer.decode(ids[: max(0, max_tokens)], skip_special_tokens=True)
