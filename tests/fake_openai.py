"""A local fake OpenAI-compatible model server on 127.0.0.1, scripted per request.

It speaks what vLLM and llama-server speak to charbot: ``POST /v1/chat/completions`` with
server-sent events, ``POST /tokenize`` (one token per word here), ``POST
/v1/load_lora_adapter``. Each request takes the next scripted action; with the script empty
it streams ``default`` word by word. It records every request's JSON body and headers.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    """Stream ``text`` word by word, then usage and [DONE]."""

    text: str
    delay: float = 0.0  # seconds before each chunk


@dataclass
class Refuse:
    """Answer with an HTTP error status (and a Retry-After header when given)."""

    status: int
    retry_after: str | None = None
    message: str = "refused"


@dataclass
class Drop:
    """Stream ``text``, then close the connection without finishing the response."""

    text: str


@dataclass
class Stall:
    """Send the response headers, then nothing for ``seconds``."""

    seconds: float


@dataclass
class Garbage:
    """Stream ``text``, then a line that is not SSE."""

    text: str
    line: str = "<html>502 Bad Gateway</html>"


@dataclass
class Unfinished:
    """Stream ``text`` and end the body cleanly without a finish reason or [DONE]."""

    text: str


Action = Reply | Refuse | Drop | Stall | Garbage | Unfinished


@dataclass
class FakeOpenAI:
    """Start with ``await fake.start()``; ``fake.base_url`` ends in /v1."""

    default: str = "Hello there, traveller."
    script: list[Action] = field(default_factory=list)
    tokenize: bool = True  # answer POST /tokenize
    runtime_lora: bool = True  # answer POST /v1/load_lora_adapter
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    loaded: dict[str, str] = field(default_factory=dict)  # lora_name -> lora_path
    port: int = 0

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/v1/load_lora_adapter", self._load_lora)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ---------------------------------------------------------------------------

    async def _tokenize(self, request: web.Request) -> web.Response:
        if not self.tokenize:
            raise web.HTTPNotFound()
        body = await request.json()
        text = body.get("prompt") or body.get("content") or ""
        return web.json_response({"tokens": list(range(len(text.split())))})

    async def _load_lora(self, request: web.Request) -> web.Response:
        if not self.runtime_lora:
            raise web.HTTPNotFound()
        body = await request.json()
        self.loaded[body["lora_name"]] = body["lora_path"]
        return web.Response(text=f"Success: LoRA '{body['lora_name']}' added.")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        action = self.script.pop(0) if self.script else Reply(self.default)
        if isinstance(action, Refuse):
            headers = {"Retry-After": action.retry_after} if action.retry_after else {}
            error = {"error": {"message": action.message, "code": action.status}}
            return web.json_response(error, status=action.status, headers=headers)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if isinstance(action, Stall):
            await asyncio.sleep(action.seconds)
            return response
        model = body["model"]
        words = getattr(action, "text", "").split(" ")
        for index, word in enumerate(words):
            await asyncio.sleep(getattr(action, "delay", 0.0))
            piece = word if index == 0 else " " + word
            await self._event(response, model, {"delta": {"content": piece}})
        if isinstance(action, Drop):
            assert request.transport is not None
            request.transport.close()  # mid-body: the client sees the connection cut
            return response
        if isinstance(action, Garbage):
            await response.write(action.line.encode() + b"\n\n")
            return response
        if isinstance(action, Unfinished):
            await response.write_eof()
            return response
        await self._event(response, model, {"delta": {}, "finish_reason": "stop"})
        usage = {"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 0}
        event = {"model": model, "choices": [], "usage": usage}
        await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    async def _event(response: web.StreamResponse, model: str, choice: dict[str, Any]) -> None:
        event = {"id": "chatcmpl-1", "model": model, "choices": [{"index": 0, **choice}]}
        await response.write(f"data: {json.dumps(event)}\n\n".encode())
