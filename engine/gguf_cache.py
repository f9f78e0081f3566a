"""Any GGUF file as a plain transformers directory in the cache, converted once.

A Llama file goes through charbot's own converter (engine/gguf_convert.py, ~4 s); every
other architecture transformers' GGUF reader knows (Gemma 3, Qwen, Mistral, ...) through
``from_pretrained(gguf_file=...)``, which takes ~46 s for Gemma 3 270M here — so it runs
once and later starts load the safetensors directory it leaves.

The directory is written into a temporary sibling and renamed at the end, so a killed
conversion never leaves a half-written cache that a later start would trust.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from engine.errors import ModelError

# A complete cache holds these; a directory without them is ignored and rebuilt.
REQUIRED = ("config.json", "model.safetensors", "tokenizer_config.json")


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a finished conversion (a killed one never does)."""
    return all((directory / name).is_file() for name in REQUIRED)


# Gemma's turn format (its instruction-tuned models use it). The pre-trained Gemma 3 file
# carries no chat template, and the bot cannot build a prompt without one; a LoRA trained
# on this layout teaches the base to answer in it.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{% if role == 'system' %}{% set role = 'user' %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def cache_name(gguf_path: Path) -> str:
    """A cache directory name for a user's GGUF file: its stem and a short hash of where
    it is, its size and its modification time, so a replaced file is converted again."""
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"gguf-{gguf_path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def architecture(gguf_path: Path) -> str:
    """The file's ``general.architecture`` (a ModelError if it is not a GGUF file)."""
    from engine.gguf_tokenizer import read_metadata

    value = read_metadata(gguf_path).get("general.architecture")
    if not isinstance(value, str):
        raise ModelError(f"{gguf_path.name} names no general.architecture; is it a model file?")
    return value


def convert_once(gguf_path: Path, target: Path, *, label: str, progress: bool = True) -> Path:
    """Convert ``gguf_path`` into ``target`` unless a complete copy is there; return it."""
    if is_complete(target):
        return target
    if not gguf_path.is_file():
        raise ModelError(f"no GGUF file at {gguf_path}; fix: check [model] base")
    arch = architecture(gguf_path)
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=2, desc=f"converting {label} (once)", unit="step", disable=not progress)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        if arch == "llama" and _plain_llama(gguf_path):
            _convert_llama(gguf_path, tmp, bar)
        else:
            _convert_with_transformers(gguf_path, tmp, arch)
        bar.update()
        publish(tmp, target)
        bar.update()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return target


def _plain_llama(gguf_path: Path) -> bool:
    from engine.gguf_tokenizer import read_metadata

    return read_metadata(gguf_path).get("llama.rope.scaling.type") in (None, "none")


def publish(tmp: Path, target: Path) -> None:
    """Move the finished conversion ``tmp`` into place as ``target`` (another process may
    have finished the same conversion first: then its copy stands and ``tmp`` goes)."""
    if target.exists() and not is_complete(target):  # a leftover from an older layout
        shutil.rmtree(target)
    try:
        os.replace(tmp, target)
    except OSError:
        if not is_complete(target):  # not just another process finishing first
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_llama(gguf_path: Path, out: Path, bar) -> None:
    """charbot's own Llama converter, the tokenizer by ours or else by transformers."""
    from engine.gguf_convert import convert_llama_gguf
    from engine.gguf_tokenizer import UnsupportedTokenizer, write_tokenizer

    try:
        write_tokenizer(gguf_path, out)
    except UnsupportedTokenizer:
        _write_tokenizer_with_transformers(gguf_path, out, "llama")
    convert_llama_gguf(gguf_path, out, bar)


def _convert_with_transformers(gguf_path: Path, out: Path, arch: str) -> None:
    """transformers' GGUF reader (it shows its own bar over the tensors), saved plain."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise ModelError(
            f"transformers cannot read {gguf_path.name} (architecture {arch!r}): {exc}; "
            "fix: use an HF id or a directory of this model instead"
        ) from exc
    # The reader marks the model as quantized; saved with that mark, it would not reload.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer = _write_tokenizer_with_transformers(gguf_path, out, model.config.model_type)
    # A Gemma turn ends with <end_of_turn>, not with the file's EOS: stop at either.
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if model.config.model_type.startswith("gemma") and end_of_turn != tokenizer.unk_token_id:
        eos = model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
        model.generation_config.eos_token_id = sorted({*eos, end_of_turn})
    model.save_pretrained(str(out))


def _write_tokenizer_with_transformers(gguf_path: Path, out: Path, model_type: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    if tokenizer.chat_template is None and model_type.startswith("gemma"):
        tokenizer.chat_template = GEMMA_TEMPLATE
    tokenizer.save_pretrained(str(out))
    return tokenizer
