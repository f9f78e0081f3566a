"""Weight-only 4-bit Linear layers for CPU decoding (``[model] dtype = "int4"``).

Why: one decode row reads every weight once per token, so on CPU a step costs what moving
the weights from memory costs (measured here: a bf16 step spent 26 of its 33 ms in matmuls
that ran 2× slower than the same matmuls with their weight already in cache). 4-bit
weights with a bf16 scale and offset per group of 32 are ~3.6× fewer bytes than bf16.

The format is the bundled model's own: its GGUF stores the decoder layers as Q4_1 (a scale
and a minimum per 32 weights), so re-quantizing them with a group's minimum and maximum
gives back the same grid up to bf16 rounding of each group's scale and offset (relative to
the group's largest weight, about what storing the weights in bf16 costs). The embedding and
output projection (Q8_0 in the GGUF) stay as they are.

Where charbot's own kernels load (engine/native.py), the copies are in their layout
and they do the matmul (~2× faster for one row); else torch's own CPU kernel
(``aten._weight_int4pack_mm_for_cpu``, the one torchao and gpt-fast use). LoRA terms are
added by the caller in float32 as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from engine import native

log = logging.getLogger(__name__)

GROUP = 32  # weights per scale/offset pair: Q4_1's block size
INNER_K_TILES = 2  # the kernel's packing parameter (2, 4 or 8; all measured alike here)


@dataclass(frozen=True, slots=True)
class Int4Weight:
    """A ``[out, in]`` weight as packed 4-bit codes plus a scale and offset per group."""

    packed: torch.Tensor
    scales_zeros: torch.Tensor  # [in / GROUP, out, 2]: scale, and offset (min + 8 × scale)
    out_features: int
    in_features: int

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """What holds the weight's data (as for charbot's layouts in engine/native.py)."""
        return (self.packed, self.scales_zeros)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)


Int4 = Int4Weight | native.NativeInt4  # a 4-bit copy in either layout


def fits(weight: torch.Tensor) -> bool:
    """Whether the kernel takes this weight's shape (see :func:`fits_shape`)."""
    return fits_shape(*weight.shape)


def fits_shape(out_features: int, in_features: int) -> bool:
    """Whether the kernel takes an ``[out, in]`` weight: in a multiple of the group, out of
    16."""
    return in_features % GROUP == 0 and out_features % 16 == 0


def quantize(weight: torch.Tensor, kernels: native.Kernels | None = None) -> Int4:
    """Asymmetric 4-bit codes per group of 32 along ``in``, rounded to nearest: in the
    layout of ``kernels`` where given and the weight fits it, else in torch's."""
    if kernels is not None:
        packed = native.pack_int4(weight, kernels)
        if packed is not None:
            return packed
    out_features, in_features = weight.shape
    # a copy even of a float32 weight: the steps below work in place
    groups = weight.detach().to(torch.float32, copy=True)
    groups = groups.reshape(out_features, in_features // GROUP, GROUP)
    low, high = torch.aminmax(groups, dim=-1)  # one pass (amin + amax took 4× longer)
    scale = high.sub_(low).div_(15).clamp_(min=1e-10)
    codes = groups.sub_(low[..., None]).div_(scale[..., None]).round_().clamp_(0, 15)
    codes = codes.to(torch.int32).reshape(out_features, in_features)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, INNER_K_TILES)
    # The kernel computes code × scale + (offset − 8 × scale): store offset = low + 8 × scale.
    scales_zeros = torch.stack((scale.t(), (low + 8 * scale).t()), dim=-1)
    return Int4Weight(packed, scales_zeros.to(torch.bfloat16).contiguous(), *weight.shape)


def linear(x: torch.Tensor, weight: Int4) -> torch.Tensor:
    """``x @ W.T`` for any leading shape (at most ``native.MAX_ROWS`` rows for charbot's
    kernels); the result has ``x``'s dtype."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    dtype = rows.dtype
    if dtype != torch.bfloat16:
        rows = rows.to(torch.bfloat16)
    if isinstance(weight, native.NativeInt4):
        out = weight.linear(rows)
    else:
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows.contiguous(), weight.packed, GROUP, weight.scales_zeros
        )
    if out.dtype != dtype:
        out = out.to(dtype)
    return out.view(*shape[:-1], weight.out_features)


def available() -> bool:
    """True when this torch build has the CPU int4 kernel and it computes correctly."""
    try:
        weight = torch.arange(64 * 64).remainder_(16).float().view(64, 64) - 7  # on the grid
        x = torch.randn(2, 64).to(torch.bfloat16)
        got = linear(x, quantize(weight)).float()
    except (RuntimeError, AttributeError) as exc:
        log.info("int4 weights unavailable: %s", exc)
        return False
    expected = x.float() @ weight.t()
    return bool((got - expected).abs().max() <= 0.01 * expected.abs().max() + 1e-3)


def dequantize(weight: Int4) -> torch.Tensor:
    """The bf16 ``[out, in]`` weight the kernel computes with (for checks and reports)."""
    if isinstance(weight, native.NativeInt4):
        return native.unpack_int4(weight).to(torch.bfloat16)
    eye = torch.eye(weight.in_features, dtype=torch.bfloat16)
    return linear(eye, weight).t().contiguous()
