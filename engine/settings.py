"""The engine's settings: which model to serve, where, and how. ``[model]`` in config.toml
holds them (the bot's config adds the prompt's budget and sampling defaults and builds
these from the same table)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("local", "openai", "echo")
# Older names still accepted in config files and on the command line.
BACKEND_ALIASES = {"transformers": "local"}
ENGINES = ("auto", "transformers")
KERNELS = ("auto", "torch")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Which backend and base model, and how the local engine or the server client runs."""

    backend: str = "local"  # one of BACKENDS
    base: str = "smollm2"  # alias of the bundled SmolLM2-135M-Instruct, an HF id or a directory
    dtype: str = "auto"  # "auto" (bf16 + 4-bit decoding) | "bfloat16" | "float32" | "int4"
    context_tokens: int = 1536  # the longest prompt, in the model's own tokens
    max_batch_size: int = 16  # local: rows in one batch
    batch_wait_ms: float = 5.0  # local: how long a request waits for others to join
    max_queue: int = 64  # waiting requests before "busy"
    # local: keys and values of prompts kept for the next prompt that starts the same
    # (engine/prefix_cache.py); 0 turns the cache off. 256 MB holds ~11,000 tokens of the
    # bundled model in bf16 (22.5 KB a token): a handful of long conversations.
    kv_cache_mb: int = 256
    threads: int | str = "auto"  # matmul threads: "auto" (yield cores to busy neighbours) or N
    # "auto": a plain Llama runs on charbot's own code in the model process (no transformers
    # or peft imports: seconds off every start); "transformers": always transformers + peft
    engine: str = "auto"
    # "auto": charbot's own matmul kernels for small decode steps where the CPU and a C
    # compiler allow (engine/native.py); "torch": torch's kernels only
    kernels: str = "auto"
    cache_dir: Path = Path("data/models")  # converted model cache
    # backend = "openai": an OpenAI-compatible server (vLLM, llama-server, Ollama, LM Studio).
    base_url: str | None = None  # the API root, e.g. "http://127.0.0.1:8000/v1"
    api_key_env: str | None = None  # environment variable holding the API key (never a value)
    model: str | None = None  # the served base model's name (per LoRA: ServedLora)
    tokenizer: str | None = None  # HF id or directory to count prompt tokens exactly
    timeout_s: float = 60.0  # connect, and the longest wait for the next streamed token
    max_concurrency: int = 16  # requests in flight to the server at once


def engine_settings(settings: EngineSettings) -> EngineSettings:
    """``settings`` as a plain EngineSettings (a caller's subclass adds fields of its own;
    the model process is sent only the engine's)."""
    if type(settings) is EngineSettings:
        return settings
    names = (f.name for f in dataclasses.fields(EngineSettings))
    return EngineSettings(**{name: getattr(settings, name) for name in names})


def backend_name(name: str) -> str:
    """The backend's name, its older alias resolved."""
    return BACKEND_ALIASES.get(name, name)


def parse_threads(value: str | int) -> int | None:
    """``threads`` → a fixed count, or None for "auto". ValueError if neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError('must be at least 1, or "auto"')
        return value
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return parse_threads(int(value))
    raise ValueError(f'{value!r} is not a thread count; use a whole number or "auto"')
