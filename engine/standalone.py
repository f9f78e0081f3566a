"""A plain Llama checkpoint loaded with torch and safetensors alone, for the model process.

Why: importing transformers' Llama code cost the model process ~4 s of a ~9 s cached start
(torch itself 1.6 s, reading the weights 0.4 s). The scheduler only calls the lean forward
(engine/lean_llama.py), which reads weights and a few config numbers: this builds the
same module tree transformers would (same names, same weights, same rotary table), so
LeanLlama, prepacking, the 4-bit copies and the LoRA stacks work on it unchanged.

Only checkpoints the lean forward computes exactly are taken (:func:`plain_llama`):
model_type "llama", no biases, SiLU, position-only rotary of the default kind, and
safetensors weights on disk. Anything else — another architecture, a GGUF file, an HF id
not in the local cache, a ``[model] engine = "transformers"`` setting — loads through
transformers as before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from engine.errors import ModelError

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# LlamaConfig's defaults, for fields a config.json leaves out
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


def plain_llama(config: dict[str, Any]) -> str | None:
    """Why ``config`` is not a checkpoint this module serves exactly, or None if it is."""
    if config.get("model_type") != "llama":
        return f"model_type {config.get('model_type')!r}"
    if config.get("architectures", ["LlamaForCausalLM"]) != ["LlamaForCausalLM"]:
        return f"architectures {config.get('architectures')}"
    settings = {**DEFAULTS, **config}
    for key in ("attention_bias", "mlp_bias"):
        if settings[key]:
            return key
    if settings["hidden_act"] != "silu":
        return f"hidden_act {settings['hidden_act']!r}"
    if settings["pretraining_tp"] != 1:
        return "pretraining_tp"
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        return f"rope_type {kind!r}"
    return None


def _rope_theta(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or {}
    return float(rope.get("rope_theta", config.get("rope_theta", DEFAULTS["rope_theta"])))


class _Norm(nn.Module):
    """Holds an RMSNorm weight; LeanLlama computes the norm."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)


def _linear(weight: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` around a loaded weight. Not via its constructor: that initialises
    a weight of its own (on the meta device, it imports torch's compiler: 2 s)."""
    module = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(module)
    module.out_features, module.in_features = weight.shape
    module.weight = nn.Parameter(weight, requires_grad=False)
    module.register_parameter("bias", None)
    return module


class _Rotary:
    """transformers' default rotary frequencies, computed the same way (same bits)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float)
        self.inv_freq = 1.0 / (theta ** (exponents / head_dim))
        self.attention_scaling = 1.0


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """config.json with LlamaConfig's defaults filled in."""
    settings = {**DEFAULTS, **config}
    settings.setdefault("num_key_value_heads", settings["num_attention_heads"])
    settings["head_dim"] = settings.get("head_dim") or (
        settings["hidden_size"] // settings["num_attention_heads"]
    )
    settings["rope_parameters"] = {"rope_type": "default", "rope_theta": _rope_theta(config)}
    return settings


def _shapes(settings: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every weight a checkpoint of this config holds, with its shape."""
    hidden, head_dim = settings["hidden_size"], settings["head_dim"]
    q, kv = settings["num_attention_heads"] * head_dim, settings["num_key_value_heads"] * head_dim
    inter = settings["intermediate_size"]
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
    shapes["model.norm.weight"] = (hidden,)
    if not settings["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (settings["vocab_size"], hidden)
    return shapes


class StandaloneLlama(nn.Module):
    """A Llama for causal LM with transformers' module names and no forward of its own."""

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
                module = _linear(weights[f"{prefix}.self_attn.{name}.weight"])
                setattr(layer.self_attn, name, module)
            layer.mlp = nn.Module()
            for name in ("gate_proj", "up_proj", "down_proj"):
                setattr(layer.mlp, name, _linear(weights[f"{prefix}.mlp.{name}.weight"]))
            for name in ("input_layernorm", "post_attention_layernorm"):
                setattr(layer, name, _Norm(weights[f"{prefix}.{name}.weight"]))
            inner.layers.append(layer)
        inner.norm = _Norm(weights["model.norm.weight"])
        inner.rotary_emb = _Rotary(settings["head_dim"], settings["rope_parameters"]["rope_theta"])
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
    config.json, which :func:`plain_llama` accepted) in ``dtype``, eval mode.

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
                    raise ModelError(f"{directory}: unexpected weight {key} for a plain Llama")
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
