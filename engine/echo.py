"""The echo backend: instant and deterministic, for smoke tests and connectivity checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import ClassVar

from engine.base import ChatModel, Chunk, GenerationRequest, Usage


class EchoModel(ChatModel):
    """Replies with the last user message, streamed word by word. Loads nothing."""

    name: ClassVar[str] = "echo"

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        last = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        words = f"You said: {last}".split(" ")
        # Capped like a real model, so a 100,000-character message gets a bounded reply.
        words = words[: request.sampling.max_new_tokens]
        for index, word in enumerate(words):
            yield Chunk(word if index == 0 else " " + word)
            await asyncio.sleep(0)  # a real backend yields to the loop between tokens
        yield Chunk(
            "",
            Usage(
                prompt_tokens=self.count_tokens(request.messages),
                completion_tokens=len(words),
                model="echo",
                lora_version=None,
                finish_reason="stop",
            ),
        )
