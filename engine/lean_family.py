"""Which model families the lean forward (engine/lean_llama.py) computes, and what each does
differently from plain Llama.

A family is a small description — q/k/v biases, a per-head RMSNorm on q and k before the
rotary embedding — read by the lean forward, charbot's kernels and the standalone loader
(engine/standalone.py); everything else (SiLU MLP, RMSNorm, position-only rotary from a
table, tied or separate output layer) is what plain Llama does. :func:`family_of` also
says, in words for the start-up line, why a model gets the plain transformers path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """What a family's decoder layer adds to plain Llama's: ``qkv_bias``, biases on the
    q/k/v projections (Qwen2); ``qk_norm``, an RMSNorm over each query and key head before
    the rotary embedding (Qwen3). ``architecture``: its transformers class."""

    name: str
    architecture: str
    qkv_bias: bool = False
    qk_norm: bool = False


FAMILIES = {
    "llama": Family("llama", "LlamaForCausalLM"),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", qkv_bias=True),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM", qk_norm=True),
}
# Rotary embeddings that depend on the position alone: one cos/sin table serves them.
ROPE_TYPES = ("default", "linear", "llama3")
GEMMA3 = "sliding-window layers, GeGLU, pre/post feed-forward norms, (1 + w) RMSNorm"
# What the lean forward lacks for families people ask for, said on the start-up line.
MISSING = {
    "gemma3": GEMMA3,
    "gemma3_text": GEMMA3,
    "gemma2": "sliding-window layers, logit soft-capping, GeGLU",
    "gemma": "GeGLU, (1 + w) RMSNorm, embedding scale",
    "mistral": "sliding-window attention",
    "phi3": "fused q/k/v and gate/up weights in the checkpoint",
}


def _get(config: Any, key: str, default: Any = None) -> Any:
    """``key`` of a config.json dict or a transformers config object."""
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def rope_kind(config: Any) -> str:
    """The rotary embedding's type: "default", "llama3", … (old and new config names);
    "per layer type" where layers have rotary settings of their own (Gemma 3)."""
    rope = _get(config, "rope_parameters") or _get(config, "rope_scaling") or {}
    if not isinstance(rope, dict):
        return "default"
    if any(isinstance(value, dict) for value in rope.values()):
        return "per layer type"
    return rope.get("rope_type", rope.get("type", "default"))


def family_of(config: Any) -> Family | str:
    """The family of a model's config (a config.json dict or a transformers config), or
    why the lean forward does not compute it exactly, in words for the start-up line."""
    model_type = _get(config, "model_type")
    family = FAMILIES.get(model_type)
    if family is None:
        missing = MISSING.get(model_type)
        detail = f" ({missing})" if missing else ""
        return f"{model_type} not supported by the fast path{detail}"
    architectures = _get(config, "architectures") or [family.architecture]
    if list(architectures) != [family.architecture]:
        return f"architectures {list(architectures)} not supported by the fast path"
    if model_type == "llama":
        for key in ("attention_bias", "mlp_bias"):
            if _get(config, key, False):
                return f"llama with {key} not supported by the fast path"
        if _get(config, "pretraining_tp", 1) != 1:
            return "llama with pretraining_tp not supported by the fast path"
    if model_type == "qwen3" and _get(config, "attention_bias", False):
        return "qwen3 with attention_bias not supported by the fast path (o_proj bias)"
    if _get(config, "hidden_act", "silu") != "silu":
        return f"{model_type} with hidden_act {_get(config, 'hidden_act')!r} not supported"
    if _get(config, "use_sliding_window", False) or "sliding_attention" in (
        _get(config, "layer_types") or []
    ):
        return f"{model_type} not supported by the fast path (sliding-window layers)"
    rope = _get(config, "rope_parameters") or _get(config, "rope_scaling") or {}
    partial = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    if (partial or _get(config, "partial_rotary_factor", 1.0) or 1.0) != 1.0:
        return f"{model_type} not supported by the fast path (partial rotary)"
    kind = rope_kind(config)
    if kind not in ROPE_TYPES:
        return f"{model_type} not supported by the fast path (rope_type {kind!r})"
    return family
