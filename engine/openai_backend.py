"""The openai backend: replies streamed from an OpenAI-compatible model server.

vLLM, llama.cpp's llama-server, Ollama and LM Studio all serve ``POST /v1/chat/completions``
with server-sent events. Each LoRA name is routed to its LoRA the way the server does
it: a served model name (vLLM ``--lora-modules bram=DIR``; Ollama and LM Studio model
names) or a llama-server LoRA id sent with every request (``"lora": [{"id", "scale"}]``).

The client is httpx, not the ``openai`` package: httpx is already installed with
python-telegram-bot, and this backend needs what the ``openai`` client wraps away — its own
bounded retries that honour ``Retry-After`` only before the first token, the servers'
non-standard fields (``lora``, ``repetition_penalty``) and endpoints (``/tokenize``,
``/v1/load_lora_adapter``), and the raw SSE lines to tell a malformed stream from a cut one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from engine.base import (
    ChatMessages,
    ChatModel,
    Chunk,
    GenerationRequest,
    ServedLora,
    lora_version,
)
from engine.errors import Busy, LoraLoadError, ModelError, SettingsError
from engine.openai_sse import StreamCut, error_message, read_stream, retry_after_seconds
from engine.openai_tokens import (
    CALIBRATION_SAMPLES,
    EstimateCounter,
    TokenizerCounter,
    calibrated,
)
from engine.settings import EngineSettings

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # one request and two retries, all before the reply's first token
RETRY_WITHIN_S = 10.0  # and all within this long: a user is waiting
RETRY_STATUSES = (429, 502, 503, 504)


@dataclass(frozen=True, slots=True)
class Route:
    """What to ask the server for on behalf of one LoRA name."""

    served: str  # the "model" field: the base model's name or a LoRA module's
    lora: int | None = None  # llama-server LoRA id, applied with scale 1 per request
    version: str | None = None  # recorded with each reply as its LoRA version


class _Retryable(ModelError):
    """A failure worth another try if the reply has not started: busy, down, cut, slow."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIModel(ChatModel):
    """Streams replies from an OpenAI-compatible server; see the module docstring."""

    name: ClassVar[str] = "openai"
    supports_loras: ClassVar[bool] = True

    def __init__(
        self,
        settings: EngineSettings,
        served: Sequence[ServedLora] = (),
        samples: Sequence[str] = (),
        *,
        retry_within_s: float = RETRY_WITHIN_S,
    ) -> None:
        if not settings.base_url or not settings.model:
            raise SettingsError('[model] backend "openai" needs base_url and model')
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.retry_within_s = retry_within_s
        self._routes = {lora.name.lower(): self._configured_route(lora) for lora in served}
        # llama-server applies its start-up adapter scales to a request without "lora"; once
        # any name uses an adapter id, every request says which adapters it wants.
        self._lora_ids = any(lora.server_id is not None for lora in served)
        self._to_load = [
            lora for lora in served if lora.path and lora.model is None and lora.server_id is None
        ]
        self._samples = list(samples)  # prompts' own text, to calibrate the token estimate
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._waiting = 0
        self.counter: EstimateCounter | TokenizerCounter = EstimateCounter()
        self._warned_budget = False

    def __repr__(self) -> str:  # never the headers: they hold the API key
        return f"OpenAIModel(base_url={self.base_url!r}, model={self.settings.model!r})"

    def _configured_route(self, lora: ServedLora) -> Route:
        if lora.server_id is not None:
            return Route(self.settings.model or "", lora.server_id, f"lora:{lora.server_id}")
        if lora.model:
            return Route(lora.model, None, lora.model)
        return Route(self.settings.model or "")

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        headers = {}
        if self.settings.api_key_env:
            key = os.environ.get(self.settings.api_key_env, "").strip()
            if not key:
                raise SettingsError(
                    f"[model] api_key_env names {self.settings.api_key_env}, which is empty; "
                    f"export {self.settings.api_key_env}=<the server's API key>"
                )
            headers["Authorization"] = f"Bearer {key}"
        timeout = self.settings.timeout_s
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=self.settings.max_concurrency),
        )
        self.counter = await self._choose_counter()
        log.info("openai backend at %s; prompt tokens %s", self.base_url, self.counter.how)
        for lora in self._to_load:
            try:
                await self.load_lora(lora.name, lora.path or "")
            except LoraLoadError as exc:  # still serving: that name uses the base model
                log.warning("%s", exc)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise ModelError("the openai backend is not started; call start() first")
        return self._client

    # -- tokens ----------------------------------------------------------------------------

    async def _choose_counter(self) -> EstimateCounter | TokenizerCounter:
        if self.settings.tokenizer:
            return await asyncio.to_thread(self._load_tokenizer, self.settings.tokenizer)
        samples = []
        for text in (*CALIBRATION_SAMPLES, *self._samples):
            if not text.strip():
                continue
            tokens = await self._server_token_count(text)
            if tokens is None:
                return EstimateCounter()
            samples.append((text, tokens))
        return calibrated(samples)

    def _load_tokenizer(self, name: str) -> TokenizerCounter:
        from engine.loading import load_tokenizer
        from engine.local_files import resolve_base

        source = resolve_base(name, self.settings.cache_dir)
        return TokenizerCounter(load_tokenizer(source, self.settings), name)

    async def _server_token_count(self, text: str) -> int | None:
        """Tokens in ``text`` by the server's ``/tokenize`` (vLLM's and llama-server's
        fields both sent; each ignores the other's), or None where there is none."""
        url = re.sub(r"/v1$", "", self.base_url) + "/tokenize"
        body = {"model": self.settings.model, "prompt": text, "content": text}
        body["add_special_tokens"] = False
        try:
            response = await self._http().post(url, json=body)
            tokens = response.json().get("tokens") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return len(tokens) if isinstance(tokens, list) and tokens else None

    def count_tokens(self, messages: ChatMessages) -> int:
        return self.counter.count(messages)

    def truncate(self, text: str, max_tokens: int) -> str:
        return self.counter.truncate(text, max_tokens)

    # -- generation ------------------------------------------------------------------------

    def route(self, name: str | None) -> Route:
        """Where requests for LoRA ``name`` go (the base model for an unknown one)."""
        return self._routes.get((name or "").lower()) or Route(self.settings.model or "")

    def _body(self, request: GenerationRequest, route: Route) -> dict[str, Any]:
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": route.served,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.repetition_penalty != 1.0:
            # vLLM's name and llama-server's; both servers ignore the other's field.
            body["repetition_penalty"] = sampling.repetition_penalty
            body["repeat_penalty"] = sampling.repetition_penalty
        if self._lora_ids:
            body["lora"] = [] if route.lora is None else [{"id": route.lora, "scale": 1.0}]
        return body

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        name = request.lora_name or (request.lora.name if request.lora else None)
        route = self.route(name)
        body = self._body(request, route)
        if self._waiting >= self.settings.max_queue:
            raise Busy("too many requests are waiting for the model server")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            async for chunk in self._with_retries(body, route):
                if chunk.usage is not None:
                    self._check_budget(chunk.usage.prompt_tokens)
                yield chunk
        finally:
            self._slots.release()

    async def _with_retries(self, body: dict[str, Any], route: Route) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.retry_within_s
        for attempt in range(1, MAX_ATTEMPTS + 1):
            started = False
            try:
                async with contextlib.aclosing(self._attempt(body, route)) as chunks:
                    async for chunk in chunks:
                        started = started or bool(chunk.text)
                        yield chunk
                return
            except _Retryable as exc:
                if started:  # text is on the user's screen: a retry would repeat it
                    raise ModelError(f"{exc} (after part of the reply)") from None
                wait = exc.retry_after if exc.retry_after is not None else 0.5 * attempt
                if attempt == MAX_ATTEMPTS or loop.time() + wait > give_up_at:
                    raise ModelError(f"{exc}; gave up after {attempt} tries") from None
                log.warning("%s; try %d of %d in %.1f s", exc, attempt + 1, MAX_ATTEMPTS, wait)
                await asyncio.sleep(wait)

    async def _attempt(self, body: dict[str, Any], route: Route) -> AsyncIterator[Chunk]:
        try:
            async with self._http().stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._refusal(response, route)
                lines = response.aiter_lines()
                async for chunk in read_stream(lines, served=route.served, version=route.version):
                    yield chunk
        except StreamCut as exc:
            raise _Retryable(str(exc)) from None
        except httpx.TimeoutException:
            waited = f"{self.settings.timeout_s:g} s"
            raise _Retryable(
                f"the model server at {self.base_url} sent nothing for {waited}"
            ) from None
        except httpx.ConnectError:
            raise _Retryable(f"cannot reach the model server at {self.base_url}") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            raise _Retryable(
                f"the model server at {self.base_url} dropped the connection"
            ) from None
        except httpx.HTTPError as exc:  # anything else from the transport, without the request
            raise ModelError(f"talking to the model server failed: {type(exc).__name__}") from None

    def _refusal(self, response: httpx.Response, route: Route) -> ModelError:
        status, said = response.status_code, error_message(response.content)
        if status in RETRY_STATUSES:
            wait = retry_after_seconds(response.headers.get("retry-after"))
            return _Retryable(f"the model server is busy ({status}: {said})", wait)
        if status in (401, 403):
            return ModelError(
                f"the model server refused the API key ({status}); "
                "check the variable named by [model] api_key_env"
            )
        if status == 404:
            return ModelError(
                f"the model server has no model {route.served!r} ({said}); check [model] model "
                f"and the served LoRAs' model names against GET {self.base_url}/models"
            )
        return ModelError(f"the model server refused the request ({status}: {said})")

    def _check_budget(self, prompt_tokens: int) -> None:
        """The server's own count says whether the estimate kept the prompt in budget."""
        if prompt_tokens > self.settings.context_tokens and not self._warned_budget:
            self._warned_budget = True
            log.warning(
                "a prompt took %d tokens on the server, over context_tokens = %d (%s); "
                "set [model] tokenizer to count exactly",
                prompt_tokens,
                self.settings.context_tokens,
                self.counter.how,
            )

    # -- LoRA versions on the server --------------------------------------------------------

    async def load_lora(self, name: str, path: str) -> str:
        """Load the LoRA at ``path`` on the server and route ``name`` to it.

        vLLM loads LoRAs at run time (``POST /v1/load_lora_adapter``, allowed by
        ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``); ``path`` is read by the server, so it must
        exist there. Where the server cannot, LoraLoadError carries the command to run.
        """
        version = lora_version(path)
        served = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{name.lower()}-{version}")
        if self.route(name).lora is not None:
            raise LoraLoadError(
                name,
                path,
                "llama-server loads LoRAs only at start: convert it with "
                f"`python convert_lora_to_gguf.py {path} --outfile {served}.gguf`, add "
                f"`--lora-scaled {served}.gguf:0` to llama-server's command and set lora_id = <its "
                f"place in that list, from 0> for {name} in config.toml",
            )
        url = self.base_url + "/load_lora_adapter"
        try:
            response = await self._http().post(url, json={"lora_name": served, "lora_path": path})
        except httpx.HTTPError:
            raise LoraLoadError(
                name, path, f"cannot reach the model server at {self.base_url}"
            ) from None
        said = error_message(response.content)
        if response.status_code in (404, 405):
            raise LoraLoadError(
                name,
                path,
                f"the server cannot load LoRAs while running ({response.status_code} from "
                f"POST {url}); start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or restart "
                f"it with `--enable-lora --lora-modules {served}={path}` and set "
                f'model = "{served}" for {name} in config.toml',
            )
        if response.status_code != 200 and "already" not in said.lower():
            raise LoraLoadError(name, path, f"the server refused it: {said}")
        self._routes[name.lower()] = Route(served, None, version)
        log.info("%s now speaks through %s on %s", name, served, self.base_url)
        return version

    async def unload_lora(self, name: str) -> None:
        """Route ``name`` to the bare base model (the server keeps the LoRA loaded:
        replies still streaming from it finish on it)."""
        self._routes[name.lower()] = Route(self.settings.model or "")
