"""The local backend: one base model in this machine's memory, named LoRAs, continuous
batching. A plain Llama runs on charbot's own forward and kernels (engine/lean_llama.py);
other models on transformers + peft.

Usage::

    model = LocalModel(EngineSettings(base="smollm2"))
    await model.start()                       # loads (converting the bundled GGUF once)
    async for chunk in model.stream(GenerationRequest(messages, lora=LoraSpec(...))):
        ...                                   # text deltas; the last chunk carries Usage
    await model.load_lora("aria", "data/loras/Aria/v0004-1a2b3c")   # switch while serving
    await model.unload_lora("aria")
    await model.close()

Generation runs in the scheduler (engine/scheduler.py: continuous batching, mixed
LoRAs) on the main thread of a child process (engine/worker_process.py: oneDNN's
bf16 kernels are ~1.4× slower on a secondary thread), or with ``worker="thread"`` on a
thread of this process. This process keeps the tokenizer: it encodes prompts, counts
tokens and decodes the streamed token ids.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, ClassVar

from engine.base import ChatMessages, ChatModel, Chunk, GenerationRequest, Usage
from engine.errors import ModelError
from engine.scheduler_like import SchedulerLike
from engine.settings import EngineSettings

if TYPE_CHECKING:
    from engine.local_files import ModelSource
    from engine.worker_process import ProcessScheduler

log = logging.getLogger(__name__)


class LocalModel(ChatModel):
    """A local Hugging Face causal LM served with batching and per-name LoRAs."""

    name: ClassVar[str] = "local"
    supports_loras: ClassVar[bool] = True

    def __init__(
        self, settings: EngineSettings, *, progress: bool = True, worker: str = "process"
    ) -> None:
        """``worker``: "process" (default; the fast path, see engine/worker_process.py)
        or "thread" (generation on a thread of this process: quicker to start, for tests)."""
        if worker not in ("process", "thread"):
            raise ModelError(f"worker must be 'process' or 'thread', not {worker!r}")
        self.settings = settings
        self.progress = progress
        self.worker = worker
        self.model_name = settings.base
        self.tokenizer = None
        self.model = None  # the torch model, in "thread" mode only
        self.dtype: str | None = None
        self.scheduler: SchedulerLike | None = None  # once started
        self.load_seconds: float | None = None
        self.weight_bytes = 0  # the base model's parameters, as loaded
        self.step_bytes = 0  # what one one-row decode step reads of them (or their copies)
        self.source_path: str | None = None  # what from_pretrained loaded
        self.path = ""  # which path serves the model and why (engine/loading.py Loaded.path)

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Load tokenizer and weights off the event loop, then start the generation worker."""
        if self.scheduler is not None:
            return
        self.scheduler = await asyncio.to_thread(self._load)

    async def close(self) -> None:
        """Stop the worker; running and waiting requests end with a ModelError."""
        if self.scheduler is not None:
            scheduler, self.scheduler = self.scheduler, None
            await asyncio.to_thread(scheduler.stop)

    def _load(self) -> SchedulerLike:
        started = time.perf_counter()
        from engine.local_files import resolve_base

        process = None
        if self.worker == "process":
            from engine.worker_process import ProcessScheduler

            process = ProcessScheduler(self.settings)
            process.spawn()  # imports torch while we find (once: convert) the base model
        if self.settings.kernels == "auto":  # once per machine: compiled meanwhile too
            from engine.native_build import build_in_background

            build_in_background(self.settings.cache_dir)
        try:
            source = resolve_base(
                self.settings.base, self.settings.cache_dir, progress=self.progress
            )
        except BaseException:
            if process is not None:
                process.stop()
            raise
        self.model_name = source.name
        self.source_path = source.path
        if process is None:
            scheduler = self._load_here(source)
        else:
            scheduler = self._load_in_process(process, source)
        self.dtype = self.dtype.removeprefix("torch.")
        self.load_seconds = time.perf_counter() - started
        log.info(
            "loaded %s (%s) in %.1fs; %s", source.name, self.dtype, self.load_seconds, self.path
        )
        return scheduler

    def _load_here(self, source: ModelSource) -> SchedulerLike:
        """Tokenizer and weights in this process; the scheduler's thread started."""
        from engine.loading import build_scheduler, load_model

        loaded = load_model(source, self.settings)
        self.tokenizer, self.model = loaded.tokenizer, loaded.model
        self.dtype, self.weight_bytes = str(loaded.dtype), loaded.weight_bytes
        self.step_bytes, self.path = loaded.step_bytes, loaded.path
        scheduler = build_scheduler(loaded, self.settings)
        scheduler.start()
        return scheduler

    def _load_in_process(self, process: ProcessScheduler, source: ModelSource) -> SchedulerLike:
        """The weights in the model process, the tokenizer here meanwhile."""
        from engine.loading import load_tokenizer

        process.load(source)  # the child loads the weights while we load the tokenizer
        try:
            self.tokenizer = load_tokenizer(source, self.settings)
            info = process.wait_ready()
            if self.tokenizer.eos_token_id is not None:
                process.add_stop_ids({self.tokenizer.eos_token_id})
        except BaseException:
            process.stop()
            raise
        self.dtype, self.weight_bytes = info.dtype, info.weight_bytes
        self.step_bytes, self.path = info.step_bytes, info.path
        return process

    # --- LoRAs -------------------------------------------------------------------------
    async def load_lora(self, name: str, path: str) -> str:
        """Load ``path`` as ``name``'s LoRA (or switch to it); returns its version.

        Replies already generating keep the version they started with. Raises
        LoraLoadError (naming name and path) if it is missing or does not fit; the
        model keeps serving everyone else.
        """
        scheduler = self._require_started()
        return await asyncio.wrap_future(scheduler.load_lora(name, str(path)))

    async def unload_lora(self, name: str) -> None:
        """Drop ``name``'s LoRA; running replies on it finish first."""
        scheduler = self._require_started()
        await asyncio.wrap_future(scheduler.unload_lora(name))

    def loaded_loras(self) -> dict[str, str]:
        """name → version of the current LoRAs (a snapshot)."""
        return {} if self.scheduler is None else self.scheduler.current_loras()

    # --- generation -----------------------------------------------------------------------
    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        from engine.jobs import Job

        scheduler = self._require_started()
        prompt = self._encode(request.messages)
        usage = Usage(prompt_tokens=len(prompt), model=self.model_name)
        if request.sampling.max_new_tokens <= 0:
            usage.finish_reason = "length"
            yield Chunk("", usage)
            return
        job = Job(
            prompt=prompt,
            sampling=request.sampling,
            lora=request.lora,
            loop=asyncio.get_running_loop(),
            events=asyncio.Queue(),
        )
        scheduler.submit(job)  # Busy when the queue is full
        decoder = _StreamDecoder(self.tokenizer)
        finished = False
        try:
            while True:
                kind, value = await job.events.get()
                batch = [(kind, value)]
                while not job.events.empty():  # catch up in one chunk if we fell behind
                    batch.append(job.events.get_nowait())
                text = ""
                for kind, value in batch:
                    if kind == "token":
                        usage.completion_tokens += 1
                        text += decoder.push(value)
                    elif kind == "done":
                        finished = True
                        usage.finish_reason, usage.lora_version = value
                        if usage.finish_reason == "stop":
                            usage.completion_tokens += 1  # the EOS token was generated too
                        text += decoder.flush()
                    else:
                        finished = True
                        raise value
                if text:
                    yield Chunk(text)
                if finished:
                    yield Chunk("", usage)
                    return
        finally:
            if not finished:
                scheduler.cancel(job)  # the worker drops the row at its next step

    def _require_started(self) -> SchedulerLike:
        if self.scheduler is None:
            raise ModelError("the model is not started; call start() first")
        return self.scheduler

    # --- tokens ---------------------------------------------------------------------------
    def _encode(self, messages: ChatMessages) -> list[int]:
        if self.tokenizer is None:
            raise ModelError("the model is not started; call start() first")
        return list(self._encode_cached(_freeze(messages)))

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one model per process, bounded
    def _encode_cached(self, frozen: tuple[tuple[str, str], ...]) -> tuple[int, ...]:
        messages = [{"role": role, "content": content} for role, content in frozen]
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return tuple(ids)

    def count_tokens(self, messages: ChatMessages) -> int:
        """Exact prompt length with the chat template (cached: history trimming repeats it)."""
        if self.tokenizer is None:
            return super().count_tokens(messages)
        return len(self._encode_cached(_freeze(messages)))

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut ``text`` to at most ``max_tokens`` of the model's tokens."""
        if self.tokenizer is None:
            return super().truncate(text, max_tokens)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= max_tokens:
            return text
        cut = self.tokenizer.decode(ids[: max(0, max_tokens)])
        return cut.rstrip("\ufffd")  # a half-decoded UTF-8 character at the cut


def _freeze(messages: ChatMessages) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"]) for m in messages)


class _StreamDecoder:
    """Turns token ids into text deltas that are always complete characters.

    Decodes the whole reply so far and emits the new suffix; a trailing U+FFFD means a
    multi-byte UTF-8 character is not complete yet, so it is held back until it is.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
