"""A Llama GGUF file's weights and config as a Hugging Face directory, without transformers.

Why not ``from_pretrained(gguf_file=...)``: that took ~16 s of a first start here (it parses
the file again for the config, builds the model with initialised weights, then fills
them), against ~4 s for reading the tensors once with the ``gguf`` package, dequantising
them with its vectorised numpy code and writing one safetensors file. The tokenizer is
still converted by transformers (its GGUF tokenizer rules are many and easy to get wrong).

The output is the same as transformers' conversion: the same float32 tensors (q and k
rows un-permuted back from llama.cpp's rotary layout) under the same names, and a config
with the same fields; ``tests/test_gguf_convert.py`` compares the two on the bundled model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.errors import ModelError
from engine.gguf_lora import GGML_NAMES

# llama.cpp tensor names → transformers' Llama names: the LoRA converter's projections,
# read the other way, and the two norms (which LoRAs never touch)
LAYER_NAMES = {ggml: hf for hf, ggml in GGML_NAMES.items()} | {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` → ``model.layers.3.self_attn.q_proj.weight``."""
    match = _LAYER.match(gguf_name)
    if match:
        index, part, kind = match.groups()
        if part in LAYER_NAMES:
            return f"model.layers.{index}.{LAYER_NAMES[part]}.{kind}"
    else:
        stem, _, kind = gguf_name.rpartition(".")
        if stem in TOP_NAMES:
            return f"{TOP_NAMES[stem]}.{kind}"
    raise ModelError(f"unexpected tensor {gguf_name!r} in a Llama GGUF file")


def unpermute(weight, heads: int):  # numpy [out, in] → numpy
    """Undo llama.cpp's q/k row order (its rotary pairs are interleaved, transformers' are
    split in halves): the inverse of :func:`engine.gguf_lora.permute`."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _value(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def hf_config(reader) -> tuple[dict, dict]:
    """(config.json, generation_config.json) from the file's llama.* and tokenizer keys."""
    heads = int(_value(reader, "llama.attention.head_count"))
    hidden = int(_value(reader, "llama.embedding_length"))
    names = {t.name for t in reader.tensors}
    bos = _value(reader, "tokenizer.ggml.bos_token_id")
    eos = _value(reader, "tokenizer.ggml.eos_token_id")
    pad = _value(reader, "tokenizer.ggml.padding_token_id")
    vocab = _value(reader, "llama.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "unk_token_id": _value(reader, "tokenizer.ggml.unknown_token_id"),
        "dtype": "float32",
        "head_dim": int(_value(reader, "llama.rope.dimension_count", hidden // heads)),
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": int(_value(reader, "llama.feed_forward_length")),
        "max_position_embeddings": int(_value(reader, "llama.context_length")),
        "mlp_bias": False,
        "num_attention_heads": heads,
        "num_hidden_layers": int(_value(reader, "llama.block_count")),
        "num_key_value_heads": int(_value(reader, "llama.attention.head_count_kv", heads)),
        "pretraining_tp": 1,
        "rms_norm_eps": float(_value(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_parameters": {
            "rope_theta": float(_value(reader, "llama.rope.freq_base", 10000.0)),
            "rope_type": "default",
        },
        "tie_word_embeddings": "output.weight" not in names,
        "use_cache": True,
        "vocab_size": int(vocab),
    }
    generation = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    return config, generation


def convert_llama_gguf(gguf_path: Path, out_dir: Path, bar=None) -> None:
    """Write ``config.json``, ``generation_config.json`` and ``model.safetensors`` for the
    Llama GGUF at ``gguf_path`` into ``out_dir``. ``bar``: a tqdm bar to advance per tensor."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    reader = GGUFReader(str(gguf_path))
    if _value(reader, "general.architecture") != "llama":
        raise ModelError(f"{gguf_path.name} is not a Llama GGUF file")
    if _value(reader, "llama.rope.scaling.type") not in (None, "none"):
        raise ModelError(f"{gguf_path.name} uses rope scaling, which this converter leaves out")
    config, generation = hf_config(reader)
    if bar is not None:
        bar.total = (bar.total or 0) + len(reader.tensors)
        bar.refresh()
    tensors = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        data = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        data = data.reshape([int(n) for n in reversed(tensor.shape)])
        if name.endswith("q_proj.weight"):
            data = unpermute(data, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            data = unpermute(data, config["num_key_value_heads"])
        tensors[name] = np.ascontiguousarray(data)
        if bar is not None:
            bar.update()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
