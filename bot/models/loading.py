"""Loading the base model and building its scheduler — shared by the in-process worker
thread and the separate model process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.config import ModelSettings
from bot.errors import ModelError
from bot.models.local_files import ModelSource


@dataclass
class Loaded:
    """What a model process or thread serves from."""

    model: Any  # PreTrainedModel
    tokenizer: Any  # PreTrainedTokenizerBase
    dtype: Any  # torch.dtype
    weight_bytes: int


def load_tokenizer(source: ModelSource, settings: ModelSettings):
    from transformers import AutoTokenizer

    extra = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **extra)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {settings.base!r}: {exc}") from exc
    if tokenizer.chat_template is None:
        raise ModelError(f"model {settings.base!r} has no chat template")
    return tokenizer


def load_model(
    source: ModelSource, settings: ModelSettings, tokenizer=None, *, with_tokenizer: bool = True
) -> Loaded:
    """Weights in the configured dtype, eval mode, bf16 Linear weights prepacked.

    ``with_tokenizer=False`` (the model process) skips the tokenizer: its first load costs
    over a second of imports, and the parent process has one anyway.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from bot.models.precision import pick_dtype

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
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    from bot.models.lean_llama import LeanLlama

    if dtype == torch.bfloat16:
        from bot.models.fast_linear import prepack_linears

        prepack_linears(model)
    int4 = settings.dtype == "int4"
    if int4:
        from bot.models.int4 import available

        if not available():
            raise ModelError(
                '[model] dtype = "int4" needs torch\'s CPU int4 kernel, which this torch '
                'build lacks; fix: use dtype = "auto"'
            )
    # The scheduler's fast path, if the model is a plain Llama (with 4-bit copies: int4).
    model._charbot_lean = LeanLlama.build(model, int4=int4)
    if int4 and model._charbot_lean is None:
        raise ModelError(
            f'[model] dtype = "int4" works for Llama-architecture models; {settings.base!r} '
            'is not one; fix: use dtype = "auto"'
        )
    if int4:
        weight_bytes += model._charbot_lean.int4_bytes
    from bot.models.multi_lora import trim_heap

    trim_heap()  # the float32 → bf16 load leaves ~200 MB of freed heap otherwise
    torch.set_grad_enabled(False)
    return Loaded(model, tokenizer, dtype, weight_bytes)


def build_scheduler(loaded: Loaded, settings: ModelSettings, **extra):
    """A Scheduler over ``loaded`` with the settings' batching limits."""
    from bot.config import parse_threads
    from bot.models.adapters import AdapterRegistry
    from bot.models.scheduler import Scheduler
    from bot.models.threads import ThreadPolicy

    eos_ids, pad = stop_ids(loaded.model, loaded.tokenizer)
    return Scheduler(
        AdapterRegistry(loaded.model, loaded.dtype),
        eos_ids=eos_ids,
        pad_id=pad if pad is not None else min(eos_ids, default=0),
        max_positions=getattr(loaded.model.config, "max_position_embeddings", 1 << 30),
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        max_queue=settings.max_queue,
        threads=ThreadPolicy(parse_threads(settings.threads)),
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
