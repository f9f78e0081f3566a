"""A checkpoint of a family the lean forward computes (plain Llama, Llama 3.x rope scaling,
Qwen2/2.5, Qwen3: engine/lean_family.py) loaded with torch and safetensors alone, for the
model process.

Why: importing transformers' model code cost the model process ~4 s of a ~9 s cached start
(torch itself 1.6 s, reading the weights 0.4 s). The scheduler only calls the lean forward
(engine/lean_llama.py), which reads weights and a few config numbers: this builds the
same module tree transformers would (same names, same weights, same rotary frequencies), so
LeanLlama, prepacking, the 4-bit copies and the LoRA stacks work on it unchanged.

Only checkpoints the lean forward computes exactly are taken (:func:`unsupported`), in
safetensors weights on disk. Anything else — another architecture, a GGUF file, an HF id
not in the local cache, a ``[model] engine = "transformers"`` setting — loads through
transformers as before.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from engine.errors import ModelError
from engine.lean_family import Family, family_of, rope_kind

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# LlamaConfig's defaults (Qwen2's and Qwen3's are the same where they matter here, but
# for Qwen3's head size), for fields a config.json leaves out
DEFAULTS: dict[str, Any] = {
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
    "pretraining_tp": 1,
}


def find_checkpoint(path: str) -> Path | None:
    """The local directory holding ``path``'s config and safetensors weights, or None.

    ``path`` is a directory or an HF id; an id is looked up in the local Hugging Face cache
    only (a download is transformers' job, on the fallback path)."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        found = try_to_load_from_cache(str(path), "config.json")
        if not isinstance(found, str):
            return None
        directory = Path(found).parent
    if not (directory / "config.json").is_file():
        return None
    if (directory / WEIGHTS).is_file() or (directory / WEIGHTS_INDEX).is_file():
        return directory
    return None


def unsupported(config: dict[str, Any]) -> str | None:
    """Why ``config`` is not a checkpoint this module serves exactly, or None if it is."""
    family = family_of(config)
    return family if isinstance(family, str) else None


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """The rotary settings of config.json (``rope_parameters``, or the older
    ``rope_scaling`` beside a top-level ``rope_theta``), with the type and base filled in."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope.pop("type", None)
    rope["rope_type"] = rope_kind(config)
    rope.setdefault("rope_theta", float(config.get("rope_theta", DEFAULTS["rope_theta"])))
    return rope


class _Norm(nn.Module):
    """Holds an RMSNorm weight; LeanLlama computes the norm."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """An ``nn.Linear`` around a loaded weight (and bias). Not via its constructor: that
    initialises a weight of its own (on the meta device, it imports torch's compiler: 2 s)."""
    module = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(module)
    module.out_features, module.in_features = weight.shape
    module.weight = nn.Parameter(weight, requires_grad=False)
    if bias is None:
        module.register_parameter("bias", None)
    else:
        module.bias = nn.Parameter(bias, requires_grad=False)
    return module


class _Rotary:
    """transformers' rotary frequencies for the position-only kinds (default, linear,
    llama3), computed the same way (same bits)."""

    def __init__(self, head_dim: int, rope: dict[str, Any]) -> None:
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float)
        inv_freq = 1.0 / (rope["rope_theta"] ** (exponents / head_dim))
        if rope["rope_type"] == "linear":
            inv_freq = inv_freq / rope["factor"]
        elif rope["rope_type"] == "llama3":
            inv_freq = _llama3_frequencies(inv_freq, rope)
        self.inv_freq = inv_freq
        self.attention_scaling = 1.0


def _llama3_frequencies(inv_freq: torch.Tensor, rope: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1's scaling: frequencies whose wavelength exceeds the original context over
    ``low_freq_factor`` are divided by ``factor``, those shorter than it over
    ``high_freq_factor`` kept, and the ones between blended smoothly."""
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    context = rope["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    slow = torch.where(wavelength > context / low, inv_freq / factor, inv_freq)
    blend = (context / wavelength - low) / (high - low)
    blended = (1 - blend) * slow / factor + blend * slow
    between = ~(wavelength < context / high) * ~(wavelength > context / low)
    return torch.where(between, blended, slow)


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """config.json with LlamaConfig's defaults filled in."""
    settings = {**DEFAULTS, **config}
    settings.setdefault("num_key_value_heads", settings["num_attention_heads"])
    if settings["model_type"] == "qwen3":
        settings.setdefault("head_dim", 128)  # Qwen3Config's default, not hidden / heads
    settings["head_dim"] = settings.get("head_dim") or (
        settings["hidden_size"] // settings["num_attention_heads"]
    )
    settings["rope_parameters"] = _rope(config)
    settings["family"] = family_of(config)
    return settings


def _shapes(settings: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every weight a checkpoint of this config holds, with its shape."""
    hidden, head_dim = settings["hidden_size"], settings["head_dim"]
    q, kv = settings["num_attention_heads"] * head_dim, settings["num_key_value_heads"] * head_dim
    inter = settings["intermediate_size"]
    family: Family = settings["family"]
    shapes = {"model.embed_tokens.weight": (settings["vocab_size"], hidden)}
    for index in range(settings["num_hidden_layers"]):
        prefix = f"model.layers.{index}"
        shapes |= {
            f"{prefix}.self_attn.q_proj.weight": (q, hidden),
            f"{prefix}.self_attn.k_proj.weight": (kv, hidden),
            f"{prefix}.self_attn.v_proj.weight": (kv, hidden),
            f"{prefix}.self_attn.o_proj.weight": (hidden, q),
            f"{prefix}.mlp.gate_proj.weight": (inter, hidden),
            f"{prefix}.mlp.up_proj.weight": (inter, hidden),
            f"{prefix}.mlp.down_proj.weight": (hidden, inter),
            f"{prefix}.input_layernorm.weight": (hidden,),
            f"{prefix}.post_attention_layernorm.weight": (hidden,),
        }
        if family.qkv_bias:
            shapes |= {
                f"{prefix}.self_attn.q_proj.bias": (q,),
                f"{prefix}.self_attn.k_proj.bias": (kv,),
                f"{prefix}.self_attn.v_proj.bias": (kv,),
            }
        if family.qk_norm:
            shapes |= {
                f"{prefix}.self_attn.q_norm.weight": (head_dim,),
                f"{prefix}.self_attn.k_norm.weight": (head_dim,),
            }
    shapes["model.norm.weight"] = (hidden,)
    if not settings["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (settings["vocab_size"], hidden)
    return shapes


class StandaloneLlama(nn.Module):
    """A Llama-like model for causal LM (any family of engine/lean_family.py) with
    transformers' module names and no forward of its own."""

    def __init__(self, settings: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        """``settings``: config.json filled in by :func:`_settings`; ``weights``: every
        tensor :func:`_shapes` names, in the compute dtype."""
        super().__init__()
        self.config = SimpleNamespace(**settings)
        inner = nn.Module()
        embed = weights["model.embed_tokens.weight"]
        inner.embed_tokens = nn.Embedding.from_pretrained(embed, freeze=True)
        inner.layers = nn.ModuleList()
        for index in range(settings["num_hidden_layers"]):
            prefix = f"model.layers.{index}"
            layer = nn.Module()
            layer.self_attn = nn.Module()
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                key = f"{prefix}.self_attn.{name}"
                module = _linear(weights[f"{key}.weight"], weights.get(f"{key}.bias"))
                setattr(layer.self_attn, name, module)
            for name in ("q_norm", "k_norm"):  # Qwen3
                if f"{prefix}.self_attn.{name}.weight" in weights:
                    norm = _Norm(weights[f"{prefix}.self_attn.{name}.weight"])
                    setattr(layer.self_attn, name, norm)
            layer.mlp = nn.Module()
            for name in ("gate_proj", "up_proj", "down_proj"):
                setattr(layer.mlp, name, _linear(weights[f"{prefix}.mlp.{name}.weight"]))
            for name in ("input_layernorm", "post_attention_layernorm"):
                setattr(layer, name, _Norm(weights[f"{prefix}.{name}.weight"]))
            inner.layers.append(layer)
        inner.norm = _Norm(weights["model.norm.weight"])
        inner.rotary_emb = _Rotary(settings["head_dim"], settings["rope_parameters"])
        self.model = inner
        if settings["tie_word_embeddings"]:
            self.lm_head = _linear(embed)
            self.lm_head.weight = inner.embed_tokens.weight  # one Parameter, as transformers
        else:
            self.lm_head = _linear(weights["lm_head.weight"])
        self.generation_config = SimpleNamespace(eos_token_id=None, pad_token_id=None)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype


def load(directory: Path, config: dict[str, Any], dtype: torch.dtype) -> StandaloneLlama:
    """The checkpoint in ``directory`` (see :func:`find_checkpoint`; ``config`` is its
    config.json, which :func:`unsupported` accepted) in ``dtype``, eval mode.

    Raises ModelError when its weights do not fit its config."""
    from safetensors import safe_open

    settings = _settings(config)
    expected = _shapes(settings)
    weights: dict[str, torch.Tensor] = {}
    for file in weight_files(directory):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key in expected:
                    weights[key] = handle.get_tensor(key).to(dtype)
                elif key != "lm_head.weight" and "rotary_emb" not in key:  # tied: unused
                    raise ModelError(
                        f"{directory}: unexpected weight {key} for {config['model_type']}"
                    )
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ModelError(f"{directory}: missing weights {', '.join(missing[:3])}")
    for key, tensor in weights.items():
        if tuple(tensor.shape) != expected[key]:
            raise ModelError(
                f"{directory}: {key} has shape {tuple(tensor.shape)}, "
                f"the config says {expected[key]}"
            )
    model = StandaloneLlama(settings, weights)
    model.generation_config = _generation_config(directory, config)
    return model.eval()


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's safetensors files (one, or the shards its index names)."""
    index = directory / WEIGHTS_INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / name for name in names]
    return [directory / WEIGHTS]


def _generation_config(directory: Path, config: dict[str, Any]) -> SimpleNamespace:
    """EOS and padding ids: generation_config.json's, else config.json's (as transformers)."""
    source = config
    path = directory / "generation_config.json"
    if path.is_file():
        try:
            source = {**config, **json.loads(path.read_text())}
        except ValueError:
            log.warning("ignoring unreadable %s", path)
    return SimpleNamespace(
        eos_token_id=source.get("eos_token_id"), pad_token_id=source.get("pad_token_id")
    )
