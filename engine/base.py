"""The model contract: stream a reply for (chat messages, sampling settings, LoRA)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from engine.errors import ModelError

ChatMessages = list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": ...}]

BASE_LORA = "__base__"  # peft's name for "no LoRA" in a mixed batch


@dataclass(frozen=True, slots=True)
class Sampling:
    """Generation settings; stored with every reply so it can be reproduced."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int | None = None
    # > 1 makes tokens the reply already used less likely (on the reply's own tokens only,
    # not the prompt's: a system prompt's words are meant to be used). Small models loop without it.
    repetition_penalty: float = 1.0

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
        }


def lora_version(path: str | Path) -> str:
    """A LoRA's version is its directory's own name: ``data/loras/Aria/v0003-1a2b`` →
    ``"v0003-1a2b"``."""
    return Path(path).name or str(path)


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """A LoRA to generate with: ``name`` is the slot it fills (one per speaker; a new
    directory under the same name is a new version of it), ``path`` its directory."""

    name: str
    path: str


@dataclass(frozen=True, slots=True)
class ServedLora:
    """How a model server serves the LoRA named ``name``: under a model name of its own
    (vLLM ``--lora-modules name=DIR``, Ollama, LM Studio), as an adapter id applied per
    request (llama-server's ``--lora-scaled`` list, from 0), or a ``path`` for the server to
    load at start. With none of them, ``name`` speaks through the served base model."""

    name: str
    model: str | None = None
    server_id: int | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One reply to generate. ``lora`` is None for the bare base model."""

    messages: ChatMessages
    sampling: Sampling = field(default_factory=Sampling)
    lora: LoraSpec | None = None
    # Whose LoRA: a model server routes the name to the LoRA it serves under it
    # (ServedLora), also where no directory is given here.
    lora_name: str | None = None


@dataclass(slots=True)
class Usage:
    """What a finished generation cost and which weights produced it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    lora_version: str | None = None
    finish_reason: str = "stop"  # "stop" | "length" | "cancelled"


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of streamed text. The last chunk of a generation carries ``usage``."""

    text: str
    usage: Usage | None = None


class ChatModel(ABC):
    """A model backend. One required method: :meth:`stream`.

    ``stream`` is an async generator: closing it early (``aclose()``, or cancelling the task
    that iterates it) must cancel the generation and free its resources. It must never block
    the event loop: heavy work runs in a thread or another process.
    """

    name: ClassVar[str] = "model"
    supports_loras: ClassVar[bool] = False

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights, start workers. Called once before the first request."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop workers, cancel what is running, free memory."""

    @abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Yield the reply as text deltas; the final chunk carries :class:`Usage`."""

    async def load_lora(self, name: str, path: str) -> str:
        """Load the LoRA at ``path`` as ``name`` (switching ``name`` to it); return its version.

        Replies already generating keep the version they started with.
        """
        raise ModelError(f"the {self.name} backend does not serve LoRAs")

    async def unload_lora(self, name: str) -> None:  # noqa: B027 - optional hook
        """Drop ``name``'s LoRA; requests for it use the bare base model from now on."""

    def count_tokens(self, messages: ChatMessages) -> int:
        """Tokens the prompt takes once the chat template is applied.

        The default is a rough estimate for backends without a tokenizer; real backends
        use their own tokenizer and chat template.
        """
        return sum(len(m["content"]) // 4 + 4 for m in messages) + 2

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut ``text`` to at most ``max_tokens`` tokens (used for over-long single messages)."""
        return text[: max(0, max_tokens) * 4]
