"""Whole decoder layers in one call of charbot's kernels, for the lean forward's small
decode steps (engine/lean_llama.py): one position per row, on the 4-bit or blocked bf16
copies, with the rows' LoRA terms added inside the matmuls.

Each layer is described once (:class:`~engine.native.Layer`: the addresses of its norms,
rotary tables and copies, its sizes) and the descriptions are kept; they are pointed at
the rows' LoRA terms again only when the rows or LoRAs change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine import native
from engine.lean_lora_terms import lora_term, single_term
from engine.lean_weights import GATE_UP, QKV

PROJECTIONS = ("qkv", "o", "gate_up", "down")  # as native.Layer names them


@dataclass(frozen=True)
class LayerShape:
    """What every layer's description shares: the rotary tables (cos, signed sin), the
    norms' eps, attention's scale and head counts and size."""

    cos: torch.Tensor
    sin: torch.Tensor
    eps: float
    scale: float
    heads: int
    kv_heads: int
    dim: int


class LayerCalls:
    """The layer descriptions of one :class:`~engine.lean_llama.LeanLlama`, per copy kind
    ("int4" or "blocked"). ``layers``: its (layer, fused q/k/v, fused gate/up) triples;
    ``copies(kind)``: each layer's q/k/v, o, gate/up and down copies of that kind;
    ``kernels``: charbot's, None where they cannot take these layers' attention."""

    def __init__(
        self,
        layers: list[tuple],
        copies: Callable[[str], list[tuple]],
        kernels: native.Kernels | None,
        shape: LayerShape,
    ) -> None:
        self.layers = layers
        self.copies = copies
        self.kernels = kernels
        self.shape = shape
        # per kind: the descriptions, or None where the copies or sizes do not fit
        self.structs: dict[str, list[native.Layer] | None] = {}
        self._lora_keys: dict[str, int | None] = {}  # what each kind's terms were set for

    def forget(self) -> None:
        """The copies moved (huge pages): the descriptions hold their old addresses."""
        self.structs.clear()
        self._lora_keys.clear()

    def described(self, mode: str) -> list[native.Layer] | None:
        """The layers described for charbot's whole-layer call on the ``mode`` copies
        ("int4" or "blocked"), made on first use; None where a weight is not in their
        layout or a size does not fit the kernels."""
        if mode in self.structs:
            return self.structs[mode]
        structs = None
        inter = self.layers[0][0].mlp.down_proj.in_features
        if self.kernels is not None and inter % 16 == 0:
            kind = native.NativeInt4 if mode == "int4" else native.BlockedBf16
            structs = []
            for (layer, qkv, _), weights in zip(self.layers, self.copies(mode), strict=True):
                if not all(isinstance(weight, kind) for weight in weights):
                    structs = None
                    break
                structs.append(self._describe(layer, qkv, weights, inter))
        self.structs[mode] = structs
        self._lora_keys[mode] = None
        return structs

    def _describe(self, layer, qkv, weights: tuple, inter: int) -> native.Layer:
        shape = self.shape
        attn = layer.self_attn
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        struct = native.Layer(
            input_norm=layer.input_layernorm.weight.data_ptr(),
            post_norm=layer.post_attention_layernorm.weight.data_ptr(),
            cos=shape.cos.data_ptr(),
            sin=shape.sin.data_ptr(),
            eps=shape.eps,
            scale=shape.scale,
            heads=shape.heads,
            kv_heads=shape.kv_heads,
            dim=shape.dim,
            hidden=weights[1].out_features,  # o_proj: back to the hidden size
            inter=inter,
            qkv_bias=None if qkv.bias is None else qkv.bias.data_ptr(),
            q_norm=None if q_norm is None else q_norm.weight.data_ptr(),
            k_norm=None if k_norm is None else k_norm.weight.data_ptr(),
        )
        for name, weight in zip(PROJECTIONS, weights, strict=True):
            getattr(struct, name).set_weight(weight)
        return struct

    def set_lora(self, structs: list[native.Layer], mode: str, lora: bool, multi) -> None:
        """Point the layer descriptions at the rows' LoRA terms (none for base rows);
        redone only when the rows or LoRAs change."""
        key = multi.version if lora else -1
        if self._lora_keys[mode] == key:
            return
        for struct, (layer, qkv, gate_up) in zip(structs, self.layers, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            terms = (None, None, None, None)
            if lora:
                terms = (
                    lora_term(qkv, attn, QKV, qkv.slices, multi),
                    single_term(attn, "o_proj", multi),
                    lora_term(gate_up, mlp, GATE_UP, gate_up.slices, multi),
                    single_term(mlp, "down_proj", multi),
                )
            for name, term in zip(PROJECTIONS, terms, strict=True):
                getattr(struct, name).set_lora(term)
        self._lora_keys[mode] = key

    def run(self, structs, h: torch.Tensor, positions, kv, valid) -> torch.Tensor:
        """All layers on charbot's whole-layer call; ``h`` is updated in place but for the
        last layer's output, which is returned (the caller adds it)."""
        kernels = self.kernels
        rows = h.shape[0]
        scratch = torch.empty(rows * structs[0].scratch_per_row(), dtype=torch.bfloat16)
        outs = (torch.empty_like(h), torch.empty_like(h))  # this layer's, the one before's
        pending = None
        for index, (struct, cache) in enumerate(zip(structs, kv.layers, strict=True)):
            out = outs[index % 2]
            buffers = cache.reserve(1)
            kernels.decode_layer(struct, h, pending, positions, buffers, out, scratch, valid)
            cache.commit(1)
            pending = out
        return pending
