"""A lean forward pass for Llama-architecture models, for the scheduler's prefill and decode.

transformers' model code costs ~0.5 ms of Python and small tensor ops per decoder layer
per call (module calls, mask and rotary plumbing, cache bookkeeping): about as much as the
matmuls themselves for one decode row of a 135M model on CPU. This computes the same thing
with fewer, larger ops: q/k/v and gate/up are each one matmul on a fused weight (prepacked
for oneDNN in bf16), rotary embeddings come from a precomputed table and are applied to
q and k together, keys/values go straight into :class:`~bot.models.batch_cache.BatchKV`'s
buffers, and single-token attention runs on the key/value heads without repeating them.

The arithmetic is the same as transformers' (same op order and dtypes), so output is
identical — except in decode steps on the 4-bit copies (``dtype`` "auto" or "int4", up to
``INT4_MAX_ROWS`` rows), which compute with other weights by design. LoRA adapters stacked
by :mod:`bot.models.multi_lora` are applied to each projection's slice of the fused output.
Models that are not plain Llama, or adapters on other modules than the decoder layers'
projections, use the normal forward instead.

The fused weights replace the separate ones (no copy is kept): the q/k/v and gate/up
``nn.Linear`` modules still work on their own (peft wraps them), computing their slice of
the fused matmul (slower, but only used outside this path).
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bot.models import int4 as int4_weights
from bot.models.fast_linear import PACK_HINT
from bot.models.multi_lora import BASE_SLOT, lora_delta

log = logging.getLogger(__name__)

# 4-bit decode steps up to this many rows: measured per step on the default model, the
# int4 kernel was faster than bf16 up to 6 rows and slower from 8 (2 threads; even at 1).
INT4_MAX_ROWS = 6
# 4-bit output layer: this many top candidates per row get their logits again in bf16.
RESCORE = 64
ROPE_TYPES = ("default", "linear", "llama3")  # position-only rotary: a table works
QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")


Quantize = Callable[[str, torch.Tensor], int4_weights.Int4Weight]


def _quantize_now(name: str, weight: torch.Tensor) -> int4_weights.Int4Weight:
    return int4_weights.quantize(weight)


def _slice_forward(self, x: torch.Tensor) -> torch.Tensor:
    fused, start, stop = self._fused_slice
    return fused.linear(x)[..., start:stop]


class _Fused:
    """One weight made of several Linear layers' weights stacked by rows."""

    def __init__(
        self,
        modules: list[torch.nn.Module],
        packed: bool,
        quantize: Callable[[torch.Tensor], int4_weights.Int4Weight] | None = None,
    ) -> None:
        weight = torch.cat([m.weight.detach() for m in modules])
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_HINT) if packed else None
        self.int4 = quantize(weight) if quantize is not None else None
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

    def linear(self, x: torch.Tensor, int4: bool = False) -> torch.Tensor:
        if int4:
            return int4_weights.linear(x, self.int4)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return F.linear(x, self.weight)


def _base_linear(module: torch.nn.Module) -> torch.nn.Module:
    """The ``nn.Linear`` that holds a projection's base weight.

    Once peft wraps a projection for any adapter, the wrapper keeps the original Linear as
    its base layer and stays in place after the adapter is unloaded. The wrapper's own
    ``weight`` is the base layer's, which prepacking replaced by a zero stand-in: base rows
    must be computed from the base layer itself.
    """
    base = module._modules.get("base_layer")  # a dict lookup: this runs twice per layer
    return module if base is None else _base_linear(base)


def _linear(module: torch.nn.Module, x: torch.Tensor, int4: bool = False) -> torch.Tensor:
    """The base projection (no LoRA term) of ``x``: 4-bit if ``int4``, else prepacked where
    the weight is."""
    base = _base_linear(module)
    if int4:
        return int4_weights.linear(x, base._lean_int4)
    packed = getattr(base, "_packed_weight", None)
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    return F.linear(x, base.weight)


class LeanLlama:
    """Built once over a loaded Llama model; :meth:`forward` replaces ``model(...)``."""

    def __init__(
        self, model, *, pack: bool = False, int4: bool = False, quantize: Quantize | None = None
    ) -> None:
        config = model.config
        if int4 and quantize is None:
            quantize = _quantize_now
        inner = model.model
        self.model = model
        self.embed = inner.embed_tokens
        self.final_norm = inner.norm
        self.lm_head = model.lm_head
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.groups = self.heads // self.kv_heads
        self.scaling = self.head_dim**-0.5
        self.eps = config.rms_norm_eps
        self.dtype = model.dtype
        self.layers = []
        for index, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            named = None if not int4 else functools.partial(quantize, f"layers.{index}.qkv")
            qkv = _Fused([getattr(attn, n) for n in QKV], pack, named)
            named = None if not int4 else functools.partial(quantize, f"layers.{index}.gate_up")
            gate_up = _Fused([getattr(mlp, n) for n in GATE_UP], pack, named)
            self.layers.append((layer, qkv, gate_up))
            if int4:
                for name, module in (("o", attn.o_proj), ("down", mlp.down_proj)):
                    module._lean_int4 = quantize(f"layers.{index}.{name}", module.weight)
        # The output projection (a quarter of a 4-bit decode step in bf16): 4-bit logits for
        # the whole vocabulary, then the top RESCORE candidates computed again from the
        # bf16 rows (rescored_head). Kept: a reference to the bf16 weight, which prepacking
        # would otherwise replace (a tied head shares the embeddings' anyway).
        head = model.lm_head.weight.detach()
        self.head_int4 = quantize("head", head) if int4 and int4_weights.fits(head) else None
        self.head_weight = head if self.head_int4 is not None else None
        self.int4 = int4
        rotary = inner.rotary_emb
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = positions[:, None] * rotary.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = rotary.attention_scaling
        self.cos = (emb.cos() * scale).to(self.dtype)
        sin = (emb.sin() * scale).to(self.dtype)
        half = self.head_dim // 2
        # rotate_half(x) * sin == flip(x) * [-sin, sin] (halves swapped; negation is exact)
        self.sin_signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        self._lora_version = -1
        self._lora_ok = True

    @property
    def int4_bytes(self) -> int:
        """Bytes of the 4-bit copies ([model] dtype = "int4"; 0 otherwise)."""
        if not self.int4:
            return 0
        total = 0
        for layer, qkv, gate_up in self.layers:
            total += qkv.int4.nbytes + gate_up.int4.nbytes
            for module in (layer.self_attn.o_proj, layer.mlp.down_proj):
                total += module._lean_int4.nbytes
        return total + (self.head_int4.nbytes if self.head_int4 is not None else 0)

    @classmethod
    def build(
        cls, model, *, pack: bool = False, int4: bool = False, quantize: Quantize | None = None
    ) -> LeanLlama | None:
        """The lean path for ``model``, or None when it is not a plain Llama.

        ``int4``: the decoder's projections also get 4-bit copies (bot/models/int4.py),
        used by decode steps of up to ``INT4_MAX_ROWS`` rows; ``quantize(name, weight)``
        makes each (default: quantize now; bot/models/int4_cache.py reads saved ones)."""
        try:
            config = model.config
            kind = type(model).__name__
            if kind not in ("LlamaForCausalLM", "StandaloneLlama") or config.model_type != "llama":
                return None
            rope = getattr(config, "rope_parameters", None) or {}
            if rope.get("rope_type", "default") not in ROPE_TYPES:
                return None
            if config.attention_bias or config.mlp_bias or config.hidden_act != "silu":
                return None
            if getattr(config, "pretraining_tp", 1) != 1:
                return None
            if int4 and not _int4_shapes_fit(model):
                return None
            return cls(model, pack=pack, int4=int4, quantize=quantize)
        except (AttributeError, RuntimeError) as exc:
            log.info("lean Llama forward unavailable: %s", exc)
            return None

    def usable(self, registry) -> bool:
        """False when adapters touch modules this path does not apply LoRA to."""
        multi = registry.multi
        if multi.version != self._lora_version:
            self._lora_version = multi.version
            allowed = set()
            for layer, _, _ in self.layers:
                allowed.update(id(getattr(layer.self_attn, n)) for n in (*QKV, "o_proj"))
                allowed.update(id(getattr(layer.mlp, n)) for n in (*GATE_UP, "down_proj"))
            self._lora_ok = all(id(m) in allowed for m in multi.modules)
        return self._lora_ok and not registry._hooked  # other LoRA layer types

    def forward(self, ids, mask, positions, kv, multi) -> torch.Tensor:
        """float32 logits ``[B, vocab]`` of each row's last position (grad must be off;
        not inference_mode: the cache and logits are modified in place outside it later)."""
        lora = multi.uniform != BASE_SLOT
        batch, length = ids.shape
        rows = batch * length
        # Few rows: reading the weights is the cost, and 4-bit ones are 3.6× fewer bytes.
        # Many rows (a prompt, a big batch): the int4 kernel's arithmetic is the cost.
        int4 = self.int4 and rows <= INT4_MAX_ROWS
        h = self.embed(ids.view(rows))  # hidden states as [rows, hidden]: oneDNN likes 2D
        cos = self.cos[positions].unsqueeze(2)  # [B, T, 1, D]
        sin = self.sin_signed[positions].unsqueeze(2)
        if length == 1 and bool(mask.all()):
            mask = None  # one query on an unpadded history: nothing to mask
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        qk_heads = heads + kv_heads
        half = dim // 2
        for (layer, qkv_w, gate_up_w), cache in zip(self.layers, kv.layers, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            x = self._norm(h, layer.input_layernorm.weight)
            qkv = qkv_w.linear(x, int4)
            if lora:
                _add_deltas(qkv, attn, QKV, qkv_w.slices, x, batch)
            qkv = qkv.view(batch, length, heads + 2 * kv_heads, dim)
            qk = qkv[:, :, :qk_heads]
            flipped = qk.unflatten(-1, (2, half)).flip(-2).flatten(-2)
            qk = (qk * cos).add_(flipped * sin)
            k = qk[:, :, heads:].transpose(1, 2)
            v = qkv[:, :, qk_heads:].transpose(1, 2)
            keys, values = cache.update(k, v)
            if length == 1:  # query heads grouped by their key/value head (no repeat)
                q = qk[:, 0, :heads].view(batch, kv_heads, self.groups, dim)
                out = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=mask, scale=self.scaling
                )
                out = out.view(rows, heads * dim)
            else:
                q = qk[:, :, :heads].transpose(1, 2)
                keys = _repeat_kv(keys, self.groups)
                values = _repeat_kv(values, self.groups)
                out = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=mask, scale=self.scaling
                )
                out = out.transpose(1, 2).reshape(rows, heads * dim)
            o = _project(attn.o_proj, out, batch, int4) if lora else _linear(attn.o_proj, out, int4)
            h = h + o
            x = self._norm(h, layer.post_attention_layernorm.weight)
            gu = gate_up_w.linear(x, int4)
            if lora:
                _add_deltas(gu, mlp, GATE_UP, gate_up_w.slices, x, batch)
            inter = gu.shape[-1] // 2
            act = F.silu(gu[:, :inter]).mul_(gu[:, inter:])
            down = mlp.down_proj
            d = _project(down, act, batch, int4) if lora else _linear(down, act, int4)
            h = h + d
        last = h.view(batch, length, -1)[:, -1]
        x = self._norm(last, self.final_norm.weight)
        if int4 and self.head_int4 is not None:
            return rescored_head(x, self.head_int4, self.head_weight)
        return self.lm_head(x).float()

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # LlamaRMSNorm's arithmetic (float32, then the weight in x's dtype) with torch's
        # one-op norm: same values, 3 ops instead of 7 (a decode step has 61 of these)
        normed = F.rms_norm(x.to(torch.float32), (x.shape[-1],), eps=self.eps)
        return weight * normed.to(x.dtype)


def rescored_head(x: torch.Tensor, quantized, weight: torch.Tensor, k: int = RESCORE):
    """float32 logits ``[B, vocab]`` of ``x`` ``[B, hidden]`` from the 4-bit output layer
    ``quantized``, with each row's top ``k`` computed again from the bf16 ``weight``.

    The bundled model's output layer is its 8-bit embedding table: in 4 bits its logits
    were up to 4.5 off (cosine 0.998), enough to swap close candidates. The bf16 argmax was
    never below 4-bit rank 8 (benchmarks/int4_head.py), so the top 64 get bf16 logits — on
    the default model bit for bit the bf16 layer's — and greedy and top-p picks are made on
    them; the rest keep 4-bit logits, which only move the sampling distribution of flat
    rows a little (figures in the README). For one row the layer took 5.5 ms in bf16 and
    2.5 ms this way."""
    logits = int4_weights.linear(x, quantized).float()
    top = logits.topk(min(k, logits.shape[-1]), dim=-1, sorted=False).indices  # [B, k]
    exact = torch.bmm(weight[top], x.unsqueeze(-1)).squeeze(-1)  # [B, k] in x's dtype
    return logits.scatter_(1, top, exact.float())


def _int4_shapes_fit(model) -> bool:
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


def _delta(module: torch.nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor | None:
    """The LoRA term of a projection that multi_lora patched; None for a plain Linear."""
    if not hasattr(module, "_multi_lora_owner"):
        return None
    # Per-row adapters need the rows apart from the positions: [B, T, in].
    delta = lora_delta(module, x.view(batch, -1, x.shape[-1]))
    return delta.view(x.shape[0], -1)


def _add_deltas(
    fused: torch.Tensor,
    owner: torch.nn.Module,
    names: tuple[str, ...],
    slices: list[tuple[int, int]],
    x: torch.Tensor,
    batch: int,
) -> None:
    """Add each LoRA-patched projection's term to its slice of a fused matmul's output."""
    for name, (start, stop) in zip(names, slices, strict=True):
        delta = _delta(getattr(owner, name), x, batch)
        if delta is not None:
            fused[:, start:stop].add_(delta)


def _project(module: torch.nn.Module, x: torch.Tensor, batch: int, int4: bool) -> torch.Tensor:
    """A maybe LoRA-patched projection of ``x``: the base part, plus the rows' LoRA terms."""
    out = _linear(module, x, int4)
    delta = _delta(module, x, batch)
    return out if delta is None else out.add_(delta)  # in place: back to the base dtype


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)
