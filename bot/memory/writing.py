"""Asking the memory model for a whole text: a summary, a note. Not a chat reply: no
LoRA, low temperature, and the caller learns whether it ran out of tokens."""

from __future__ import annotations

from dataclasses import dataclass

from engine import ChatMessages, ChatModel, GenerationRequest, Sampling


@dataclass(frozen=True, slots=True)
class Written:
    """What the model wrote, and whether it stopped on its own (not cut at the limit)."""

    text: str
    complete: bool
    model: str


async def write(model: ChatModel, messages: ChatMessages, max_new_tokens: int) -> Written:
    """Generate one text for ``messages`` with the bare base model. Raises what the model
    raises (the caller retries later)."""
    sampling = Sampling(
        max_new_tokens=max_new_tokens, temperature=0.2, top_p=0.9, repetition_penalty=1.1
    )
    parts: list[str] = []
    finish, name = "stop", model.name
    stream = model.stream(GenerationRequest(messages=messages, sampling=sampling))
    try:
        async for chunk in stream:
            parts.append(chunk.text)
            if chunk.usage is not None:
                finish, name = chunk.usage.finish_reason, chunk.usage.model or model.name
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return Written("".join(parts).strip(), finish == "stop", name)
