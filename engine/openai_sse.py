"""Reading an OpenAI-compatible chat completions stream (server-sent events) into Chunks.

Kept apart from the HTTP client so that what the servers send — vLLM, llama-server,
Ollama, LM Studio all differ a little — is handled in one place.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from engine.base import Chunk, Usage
from engine.errors import ModelError


class StreamCut(ModelError):
    """The stream ended before the reply did (no ``[DONE]``, no finish reason)."""


def _error_text(event: dict[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    return str(error)[:300]


async def read_stream(
    lines: AsyncIterator[str], *, served: str, version: str | None
) -> AsyncIterator[Chunk]:
    """Text deltas from the ``data:`` lines; the last chunk carries :class:`Usage`.

    ``served`` is the model name asked for, used until the server names it itself (the name
    the server reports is what the stored reply records). Raises ModelError on a line that
    is not SSE or JSON, on an ``error`` event, and StreamCut when the stream stops early.
    """
    usage = Usage(model=served, lora_version=version)
    finished = False
    async for line in lines:
        if not line or line.startswith(":"):  # keep-alive blank lines and comments
            continue
        if line.startswith(("event:", "id:", "retry:")):
            continue
        if not line.startswith("data:"):
            raise ModelError(f"malformed stream from the model server: {line[:80]!r}")
        data = line[5:].strip()
        if data == "[DONE]":
            finished = True
            break
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise ModelError(
                f"malformed stream from the model server (not JSON): {data[:80]!r}"
            ) from None
        if not isinstance(event, dict):
            raise ModelError(f"malformed stream from the model server: {data[:80]!r}")
        if "error" in event:
            raise ModelError(f"the model server failed mid-reply: {_error_text(event)}")
        if isinstance(event.get("model"), str) and event["model"]:
            usage.model = event["model"]
        counts = event.get("usage")
        if isinstance(counts, dict):
            usage.prompt_tokens = int(counts.get("prompt_tokens") or 0)
            usage.completion_tokens = int(counts.get("completion_tokens") or 0)
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                yield Chunk(text)
            reason = choice.get("finish_reason")
            if reason:
                finished = True
                usage.finish_reason = "length" if reason == "length" else "stop"
    if not finished:
        raise StreamCut("the model server ended the stream before the reply was finished")
    yield Chunk("", usage)


def error_message(body: bytes) -> str:
    """The server's own words from an error response body (JSON ``error.message`` or text)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return text[:300] or "(no message)"
    if isinstance(event, dict) and "error" in event:
        return _error_text(event)
    if isinstance(event, dict) and "detail" in event:  # FastAPI's own 404/422 bodies
        return str(event["detail"])[:300]
    return text[:300]


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delay-seconds or an HTTP date; None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
