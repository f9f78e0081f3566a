"""The lean forward's projection weights (engine/lean_llama.py), and which copy of a weight
a matmul runs on.

q/k/v and gate/up are each one :class:`Fused` weight, one matmul (prepacked for oneDNN in
bf16). A weight may also have a 4-bit copy (engine/int4.py) and a blocked bf16 copy for
charbot's kernels (engine/native.py); :func:`matmul` picks the one a step runs on.

The fused weights replace the separate ones (no copy is kept): the q/k/v and gate/up
``nn.Linear`` modules still work on their own (peft wraps them), computing their slice of
the fused matmul (slower, but only used outside this path).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine import int4 as int4_weights
from engine import native
from engine.fast_linear import PACK_HINT

QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")

Quantize = Callable[[str, torch.Tensor], int4_weights.Int4]
Block = Callable[[torch.Tensor], native.BlockedBf16 | None]


def quantize_now(name: str, weight: torch.Tensor) -> int4_weights.Int4:
    return int4_weights.quantize(weight)


def _slice_forward(self, x: torch.Tensor) -> torch.Tensor:
    fused, start, stop = self._fused_slice
    return fused.linear(x)[..., start:stop]


class Fused:
    """One weight made of several Linear layers' weights stacked by rows."""

    def __init__(
        self,
        modules: list[torch.nn.Module],
        packed: bool,
        quantize: Callable[[torch.Tensor], int4_weights.Int4] | None = None,
        block: Block | None = None,
    ) -> None:
        weight = torch.cat([m.weight.detach() for m in modules])
        # Qwen2's q/k/v biases, fused likewise (a module without one adds zeros)
        biases = [getattr(m, "bias", None) for m in modules]
        self.bias = None
        if any(b is not None for b in biases):
            self.bias = torch.cat(
                [
                    torch.zeros(m.out_features, dtype=weight.dtype) if b is None else b.detach()
                    for m, b in zip(modules, biases, strict=True)
                ]
            )
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_HINT) if packed else None
        self.int4 = quantize(weight) if quantize is not None else None
        self.blocked = block(weight) if block is not None else None
        self.weight = None if packed else weight
        self.slices = []
        start = 0
        for module in modules:
            stop = start + module.out_features
            self.slices.append((start, stop))
            if packed:  # no float copy is kept: the module computes its slice of ours
                stand_in = torch.zeros(1, dtype=module.weight.dtype)
                module.weight.data = stand_in.expand(module.weight.shape)
                module._fused_slice = (self, start, stop)
                module.forward = types.MethodType(_slice_forward, module)
            else:  # the module's weight becomes a view of the fused one: no copy
                module.weight.data = weight[start:stop]
            start = stop

    def linear(
        self, x: torch.Tensor, mode: str | None = None, term: native.LoraTerm | None = None
    ) -> torch.Tensor:
        """``term``: a LoRA term for charbot's kernels (the 4-bit or blocked copy is theirs)."""
        return matmul(x, mode, term, self.int4, self.blocked, self.packed, self.weight, self.bias)


def base_linear(module: torch.nn.Module) -> torch.nn.Module:
    """The ``nn.Linear`` that holds a projection's base weight.

    Once peft wraps a projection for any LoRA, the wrapper keeps the original Linear as
    its base layer and stays in place after the LoRA is unloaded. The wrapper's own
    ``weight`` is the base layer's, which prepacking replaced by a zero stand-in: base rows
    must be computed from the base layer itself.
    """
    base = module._modules.get("base_layer")  # a dict lookup: this runs twice per layer
    return module if base is None else base_linear(base)


def project_base(
    module: torch.nn.Module,
    x: torch.Tensor,
    mode: str | None = None,
    term: native.LoraTerm | None = None,
) -> torch.Tensor:
    """The base projection of ``x`` (plus ``term``, a LoRA term for charbot's kernels), as
    :func:`matmul` picks it."""
    base = base_linear(module)
    int4, blocked = getattr(base, "_lean_int4", None), getattr(base, "_lean_blocked", None)
    packed = getattr(base, "_packed_weight", None)
    return matmul(x, mode, term, int4, blocked, packed, base.weight)


def matmul(x, mode, term, int4, blocked, packed, weight, bias=None) -> torch.Tensor:
    """``x`` times one projection's weight (plus ``bias``, if any): on its 4-bit copy
    ``int4`` if ``mode`` is "int4", on its blocked bf16 copy if "blocked" and there is one
    (with ``term``, a LoRA term, added in charbot's call), else on oneDNN's ``packed``
    weight where there is one, else on the plain ``weight``."""
    if term is not None:
        out = (int4 if mode == "int4" else blocked).linear(x, term)
    elif mode == "int4":
        out = int4_weights.linear(x, int4)
    elif mode == "blocked" and blocked is not None:
        out = blocked.linear(x)
    elif packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    else:
        return F.linear(x, weight, bias)
    # the copies' kernels take no bias: added after, rounded as charbot's layer call does
    return out if bias is None else out.add_(bias)


def int4_shapes_fit(model) -> bool:
    """Whether every projection the int4 form quantizes has a shape the kernel takes."""
    layer = model.model.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    shapes = [
        (sum(getattr(attn, n).out_features for n in QKV), attn.q_proj.in_features),
        (sum(getattr(mlp, n).out_features for n in GATE_UP), mlp.gate_proj.in_features),
        tuple(attn.o_proj.weight.shape),
        tuple(mlp.down_proj.weight.shape),
    ]
    return all(int4_weights.fits_shape(*shape) for shape in shapes)
