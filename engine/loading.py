"""Loading the base model and building its scheduler — shared by the in-process worker
thread and the separate model process."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ModelError
from engine.local_files import ModelSource
from engine.settings import EngineSettings

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """What a model process or thread serves from."""

    model: Any  # PreTrainedModel
    tokenizer: Any  # PreTrainedTokenizerBase
    dtype: Any  # torch.dtype
    weight_bytes: int

    @property
    def path(self) -> str:
        """Which path serves the model and why, for the start-up line (see :func:`_prepare`)."""
        return getattr(self.model, "_charbot_path", "plain transformers path")

    @property
    def step_bytes(self) -> int:
        """What a one-row decode step reads from memory (see LeanLlama.step_bytes)."""
        lean = getattr(self.model, "_charbot_lean", None)
        return lean.step_bytes if lean is not None else self.weight_bytes


# Tokenizers that are plain tokenizer.json files: loaded without AutoTokenizer, which reads the
# model config and imports its model family first (1.1 s instead of 3.3 s here).
PLAIN_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _tokenizer_class(source: ModelSource):
    directory = Path(source.path)
    if source.gguf_file is None and (directory / "tokenizer.json").is_file():
        try:
            config = json.loads((directory / "tokenizer_config.json").read_text())
        except (OSError, ValueError):
            config = {}
        if config.get("tokenizer_class") in PLAIN_TOKENIZERS:
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast
    from transformers import AutoTokenizer

    return AutoTokenizer


def load_tokenizer(source: ModelSource, settings: EngineSettings):
    extra = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        tokenizer = _tokenizer_class(source).from_pretrained(source.path, **extra)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {settings.base!r}: {exc}") from exc
    if tokenizer.chat_template is None:
        raise ModelError(f"model {settings.base!r} has no chat template")
    return tokenizer


def load_model(
    source: ModelSource, settings: EngineSettings, tokenizer=None, *, with_tokenizer: bool = True
) -> Loaded:
    """Weights in the configured dtype, eval mode, bf16 Linear weights prepacked, and
    4-bit copies for decoding where ``dtype`` is "int4" or "auto" (see :func:`_wants_int4`).

    ``with_tokenizer=False`` (the model process) skips the tokenizer: its first load costs
    over a second of imports, and the parent process has one anyway.
    """
    from transformers import AutoModelForCausalLM

    from engine.precision import pick_dtype

    dtype = pick_dtype(settings.dtype)
    if tokenizer is None and with_tokenizer:
        tokenizer = load_tokenizer(source, settings)
    extra = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype, attn_implementation="sdpa", **extra
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {settings.base!r}: {exc}") from exc
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.eval()
    weight_bytes = _prepare(model, settings, dtype)
    return Loaded(model, tokenizer, dtype, weight_bytes)


def load_standalone(source: ModelSource, settings: EngineSettings) -> Loaded | None:
    """The base model without transformers (engine/standalone.py) where it is a plain
    Llama in safetensors on disk and ``[model] engine`` is "auto"; None otherwise. No
    tokenizer: this serves the model process."""
    if settings.engine != "auto" or source.gguf_file is not None:
        return None
    from engine import standalone
    from engine.precision import pick_dtype

    directory = standalone.find_checkpoint(source.path)
    if directory is None:
        return None
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None  # transformers' loader reports what is wrong with it
    reason = standalone.unsupported(config)
    if reason is not None:
        log.info("%s: transformers serves it (%s)", settings.base, reason)
        return None
    dtype = pick_dtype(settings.dtype)
    from concurrent.futures import ThreadPoolExecutor

    # On a first start the kernels compile (0.5-1.3 s, a compiler process) while the
    # weights are read.
    with ThreadPoolExecutor(1) as pool:
        building = pool.submit(load_kernels, settings, dtype)
        model = standalone.load(directory, config, dtype)
        kernels = building.result()
    from engine.int4_cache import Int4Store

    files = standalone.weight_files(directory)
    store = Int4Store.for_checkpoint(settings.cache_dir, directory, files, kernels)
    weight_bytes = _prepare(model, settings, dtype, store, kernels)
    if model._charbot_lean is None:  # cannot happen for a plain Llama; transformers can
        return None
    return Loaded(model, None, dtype, weight_bytes)


def load_kernels(settings: EngineSettings, dtype):
    """charbot's own matmul kernels (engine/native.py) for a bf16 model where ``[model]
    kernels`` is "auto" and this machine can build them; else None (torch's kernels)."""
    import torch

    if settings.kernels != "auto" or dtype != torch.bfloat16:
        return None
    from engine import native

    return native.load(settings.cache_dir)


def _prepare(model, settings: EngineSettings, dtype, store=None, kernels=None) -> int:
    """The scheduler's fast path on a loaded model; returns the bytes of its weights.
    ``store``: an :class:`~engine.int4_cache.Int4Store` to read 4-bit copies from;
    ``kernels``: charbot's own (:func:`load_kernels`; looked up here when no store)."""
    import torch

    from engine import int4 as int4_weights
    from engine.fast_linear import can_prepack, prepack_linears
    from engine.lean_llama import LeanLlama

    if store is None:
        kernels = load_kernels(settings, dtype)

    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    pack = dtype == torch.bfloat16 and can_prepack(model)
    int4 = _wants_int4(settings.dtype, dtype)

    # The lean forward, if the model is a plain Llama: it fuses (and packs) q/k/v and
    # gate/up from the plain weights — before the rest is packed, as unpacking costs
    # seconds — and makes the 4-bit copies.
    def quantize_now(name: str, weight):
        return int4_weights.quantize(weight, kernels)

    quantize = store.get if store is not None else quantize_now
    model._charbot_lean = LeanLlama.build(
        model, pack=pack, int4=int4, quantize=quantize, kernels=kernels
    )
    if store is not None:
        store.save()
    if model._charbot_lean is not None:  # after saving: they then share one mapping
        model._charbot_lean.to_huge_pages()
    if store is not None:
        store.release()  # before trimming the heap: else the moved originals stay resident
    if int4 and model._charbot_lean is None and settings.dtype == "auto":
        model._charbot_lean = LeanLlama.build(model, pack=pack)  # no Llama: no fast path
    elif int4 and model._charbot_lean is None:
        raise ModelError(
            f'[model] dtype = "int4" works for the fast path\'s families (llama, qwen2, qwen3); '
            f"{settings.base!r} is not one ({LeanLlama.refusal(model, int4=True)}); "
            'fix: use dtype = "auto"'
        )
    lean = model._charbot_lean
    if lean is not None:
        model._charbot_path = lean.describe()
    else:
        reason = LeanLlama.refusal(model) or "the fast path could not be built (see the log)"
        model._charbot_path = f"plain transformers path: {reason}"
    if pack:
        prepack_linears(model)  # what the fast path did not take: o/down, lm_head, others
    if model._charbot_lean is not None:
        weight_bytes += model._charbot_lean.copy_bytes
    from engine.multi_lora import trim_heap

    trim_heap()  # the float32 → bf16 load leaves ~200 MB of freed heap otherwise
    return weight_bytes


def _wants_int4(setting: str, dtype) -> bool:
    """Whether decode steps get 4-bit weight copies: "int4" always (or a clear error), and
    "auto" where bf16 is native and the kernel works. Measured on the default model
    (benchmarks/side_by_side.py): one stream 1.6-1.7× faster, 16 conversations about as fast,
    all 16 greedy replies identical to bf16's."""
    import torch

    from engine.int4 import available

    if setting == "int4":
        if not available():
            raise ModelError(
                '[model] dtype = "int4" needs torch\'s CPU int4 kernel, which this torch '
                'build lacks; fix: use dtype = "bfloat16"'
            )
        return True
    return setting == "auto" and dtype == torch.bfloat16 and available()


def build_scheduler(loaded: Loaded, settings: EngineSettings, **extra):
    """A Scheduler over ``loaded`` with the settings' batching limits."""
    from engine.direct_loras import DirectLoras
    from engine.lora_registry import LoraRegistry
    from engine.prefix_cache import PrefixCache
    from engine.scheduler import Scheduler
    from engine.settings import parse_threads
    from engine.standalone import StandaloneLlama
    from engine.threads import ThreadPolicy

    eos_ids, pad = stop_ids(loaded.model, loaded.tokenizer)
    standalone = isinstance(loaded.model, StandaloneLlama)
    registry = DirectLoras if standalone else LoraRegistry
    if "threads" not in extra:  # the model process made its policy before loading
        extra["threads"] = ThreadPolicy(parse_threads(settings.threads))
        extra["threads"].settle()
    return Scheduler(
        registry(loaded.model, loaded.dtype),
        eos_ids=eos_ids,
        pad_id=pad if pad is not None else min(eos_ids, default=0),
        max_positions=getattr(loaded.model.config, "max_position_embeddings", 1 << 30),
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        max_queue=settings.max_queue,
        prefixes=PrefixCache(settings.kv_cache_mb << 20) if settings.kv_cache_mb > 0 else None,
        **extra,
    )


def stop_ids(model, tokenizer=None) -> tuple[set[int], int | None]:
    """(EOS ids, padding id) from the generation config and, if given, the tokenizer."""
    config = model.generation_config
    eos = config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    pad = config.pad_token_id
    if tokenizer is not None:
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        if tokenizer.pad_token_id is not None:
            pad = tokenizer.pad_token_id
    return eos_ids, pad


def load_for_training(source: ModelSource, settings: EngineSettings):
    """(model in float32, tokenizer, source path): the same base the bot serves, trainable
    (a de-quantized GGUF is marked quantized, which training refuses; the mark is removed)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(source, settings)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    extra = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32, **extra)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model, tokenizer, source.path
