"""A lean forward pass for Llama-architecture models, for the scheduler's prefill and decode.

transformers' model code costs ~0.5 ms of Python and small tensor ops per decoder layer
per call (module calls, mask and rotary plumbing, cache bookkeeping): about as much as the
matmuls themselves for one decode row of a 135M model on CPU. This computes the same thing
with fewer, larger ops: q/k/v and gate/up are each one matmul on a fused weight (prepacked
for oneDNN in bf16), rotary embeddings come from a precomputed table and are applied to
q and k together, keys/values go straight into :class:`~engine.batch_cache.BatchKV`'s
buffers, and single-token attention runs on the key/value heads without repeating them.

The arithmetic is the same as transformers' (same op order and dtypes), so output is
identical — except in decode steps on the 4-bit copies (``dtype`` "auto" or "int4", up to
``INT4_MAX_ROWS`` rows), which compute with other weights by design, and in small steps on
charbot's own kernels (engine/native.py), which sum in another order. LoRAs stacked
by :mod:`engine.multi_lora` are applied to each projection's slice of the fused output.
Models that are not plain Llama, or LoRAs on other modules than the decoder layers'
projections, use the normal forward instead.

Beside this module: the fused weights and their copies (engine/lean_weights.py), the
rows' LoRA terms (engine/lean_lora_terms.py), whole layers in one call of charbot's
kernels (engine/lean_layer_calls.py) and the 4-bit output layer (engine/rescored_head.py).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine import huge_pages, native
from engine import int4 as int4_weights
from engine.lean_family import family_of
from engine.lean_layer_calls import LayerCalls, LayerShape
from engine.lean_lora_terms import add_deltas, lora_term, project, single_term
from engine.lean_weights import (
    GATE_UP,
    QKV,
    Block,
    Fused,
    Quantize,
    base_linear,
    int4_shapes_fit,
    project_base,
    quantize_now,
)
from engine.multi_lora import BASE_SLOT, MultiLora
from engine.rescored_head import rescored_head

log = logging.getLogger(__name__)

# 4-bit decode steps up to this many rows: measured per step on the default model, torch's
# int4 kernel was faster than bf16 up to 6 rows and slower from 8 (2 threads; even at 1);
# so was charbot's (engine/bench/kernel_speed.py: 25 against 23 ms at 8 rows, 20 against 20 at 6).
INT4_MAX_ROWS = 6
# bf16 steps up to this many rows on charbot's kernel, more on oneDNN's (benchmarks/
# kernels.py, a step's matmuls on one thread: 13.8/13.2/13.6/18.3 ms for 1/2/4/6 rows
# against oneDNN's 25.8/26.3/20.2/19.7 ms).
BLOCKED_MAX_ROWS = 4


class LeanLlama:
    """Built once over a loaded Llama model; :meth:`forward` replaces ``model(...)``."""

    def __init__(
        self,
        model,
        *,
        pack: bool = False,
        int4: bool = False,
        quantize: Quantize | None = None,
        kernels: native.Kernels | None = None,
    ) -> None:
        config = model.config
        if int4 and quantize is None:
            quantize = quantize_now
        # bf16 copies in charbot's block order for small steps: only without 4-bit copies
        # (they take those steps) — it is a second copy of the weights
        blocked = kernels is not None and not int4 and model.dtype == torch.bfloat16
        block = functools.partial(native.block_bf16, kernels=kernels) if blocked else None
        inner = model.model
        self.model = model
        self.family = family_of(config)
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
        self.layers = _fuse_layers(inner.layers, pack, quantize if int4 else None, block)
        # The output projection (a quarter of a 4-bit decode step in bf16): 4-bit logits for
        # the whole vocabulary, then the top RESCORE candidates computed again from the
        # bf16 rows (rescored_head). Kept: a reference to the bf16 weight, which prepacking
        # would otherwise replace (a tied head shares the embeddings' anyway).
        head = model.lm_head.weight.detach()
        self.head_int4 = quantize("head", head) if int4 and int4_weights.fits(head) else None
        self.head_weight = head if self.head_int4 is not None else None
        self.head_blocked = block(head) if block is not None else None
        # all in charbot's layout: the rows' LoRA terms can go into the same calls
        copies = [copy for layer in self.copies("int4") for copy in layer]
        self.native_int4 = int4 and all(isinstance(w, native.NativeInt4) for w in copies)
        # a shape the blocked layout does not take: no blocked steps at all (simpler, and
        # no default model has one)
        blocks = [copy for layer in self.copies("blocked") for copy in layer]
        blocked = blocked and all(copy is not None for copy in blocks)
        self.int4 = int4
        # charbot's kernels also take the norms and one-query attention of small steps
        fits = model.dtype == torch.bfloat16 and config.hidden_size % 16 == 0
        self.kernels = kernels if fits else None
        self.fast_attention = self.head_dim % 32 == 0 and self.head_dim <= 256 and self.groups <= 16
        self.blocked = blocked
        self.cos, self.sin_signed = _rope_tables(
            inner.rotary_emb, config.max_position_embeddings, self.head_dim, self.dtype
        )
        self.rope_tables = (self.cos, self.sin_signed)
        self._lora_version = -1
        self._lora_ok = True
        self.layer_calls = self._layer_calls()

    def _layer_calls(self) -> LayerCalls:
        """Whole layers in one call of charbot's kernels where they take the attention."""
        shape = LayerShape(
            self.cos,
            self.sin_signed,
            self.eps,
            self.scaling,
            self.heads,
            self.kv_heads,
            self.head_dim,
        )
        kernels = self.kernels if self.fast_attention else None
        return LayerCalls(self.layers, self.copies, kernels, shape)

    @property
    def copy_bytes(self) -> int:
        """Bytes of the 4-bit copies ([model] dtype = "int4" or "auto") or the blocked bf16
        ones (charbot's kernels in bf16); 0 without either."""
        return sum(copy.nbytes for copy in self._all_copies())

    @property
    def step_bytes(self) -> int:
        """Bytes a one-row decode step reads: its 4-bit or blocked copies where it runs on
        them, else the decoder's and output layer's weights (the embedding gives one row)."""
        if self.int4 or self.blocked:
            return self.copy_bytes
        weights = [p for layer, _, _ in self.layers for p in layer.parameters()]
        weights.append(self.lm_head.weight)
        return sum(p.numel() * p.element_size() for p in weights)

    def to_huge_pages(self) -> int:
        """Move the 4-bit and blocked copies (every small step reads all of them) onto huge
        pages (engine/huge_pages.py); the bytes moved. Called once they are saved:
        afterwards they share one mapping."""
        moved = huge_pages.settle(t for copy in self._all_copies() for t in copy.tensors)
        # the one-call layer descriptions hold the copies' addresses: made again on use
        self.layer_calls.forget()
        return moved

    def _all_copies(self) -> list:
        """Every 4-bit and blocked copy, the output projection's included."""
        copies = [self.head_int4, self.head_blocked]
        for kind in ("int4", "blocked"):
            copies += [copy for layer in self.copies(kind) for copy in layer]
        return [copy for copy in copies if copy is not None]

    def copies(self, kind: str) -> list[tuple]:
        """Per layer, the q/k/v, o, gate/up and down copies of ``kind`` ("int4" or
        "blocked"; None where there is none), in the order the one-call layer takes them."""
        out = []
        for layer, qkv, gate_up in self.layers:
            o, down = base_linear(layer.self_attn.o_proj), base_linear(layer.mlp.down_proj)
            attribute = f"_lean_{kind}"
            out.append(
                (
                    getattr(qkv, kind),
                    getattr(o, attribute, None),
                    getattr(gate_up, kind),
                    getattr(down, attribute, None),
                )
            )
        return out

    @classmethod
    def build(
        cls,
        model,
        *,
        pack: bool = False,
        int4: bool = False,
        quantize: Quantize | None = None,
        kernels: native.Kernels | None = None,
    ) -> LeanLlama | None:
        """The lean path for ``model``, or None when it is not a plain Llama.

        ``int4``: the decoder's projections also get 4-bit copies (engine/int4.py),
        used by decode steps of up to ``INT4_MAX_ROWS`` rows; ``quantize(name, weight)``
        makes each (default: quantize now; engine/int4_cache.py reads saved ones).
        ``kernels``: charbot's own (engine/native.py); without 4-bit copies, bf16
        steps of up to ``BLOCKED_MAX_ROWS`` rows run on them from blocked copies."""
        try:
            if cls.refusal(model, int4=int4) is not None:
                return None
            return cls(model, pack=pack, int4=int4, quantize=quantize, kernels=kernels)
        except (AttributeError, RuntimeError) as exc:
            log.info("lean Llama forward unavailable: %s", exc)
            return None

    @staticmethod
    def refusal(model, *, int4: bool = False) -> str | None:
        """Why the lean path does not serve ``model`` (words for the start-up line), or
        None where it does: a family of engine/lean_family.py, as its own transformers
        class or charbot's standalone one."""
        family = family_of(model.config)
        if isinstance(family, str):
            return family
        kind = type(model).__name__
        if kind not in (family.architecture, "StandaloneLlama"):
            return f"{kind} not supported by the fast path"
        if int4 and not int4_shapes_fit(model):
            return f"{family.name} with weight shapes the 4-bit kernel cannot take"
        return None

    def describe(self) -> str:
        """The start-up line's words for this path: family and the copies it decodes on."""
        if self.int4:
            copies = "bf16 + 4-bit copies" if self.dtype == torch.bfloat16 else "4-bit copies"
        elif self.blocked:
            copies = "bf16, blocked copies for charbot's kernels"
        else:
            copies = str(self.dtype).removeprefix("torch.")
        return f"fast path: {self.family.name} ({copies})"

    def usable(self, registry) -> bool:
        """False when LoRAs touch modules this path does not apply LoRA to."""
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
        batch, length = ids.shape
        step = self._plan(batch, length, multi)
        if self.kernels is not None:
            # Steps on charbot's kernels: their threads, torch's one (torch's idle OpenMP
            # threads spin on the cores ours need: a 4-bit step took 18.0 ms with 2 of
            # each, 9.0 ms with torch on 1). Others: torch's, as [model] threads says.
            _torch_threads(1 if step.fast is not None else self.kernels.threads)
        h = self.embed(ids.view(batch * length))  # hidden states as [rows, hidden]: oneDNN likes 2D
        if length == 1 and bool(mask.all()):
            mask = None  # one query on an unpadded history: nothing to mask
        rotary = None  # charbot's kernels read the tables themselves (and the padding)
        if step.fast is None or length != 1:
            rotary = (self.cos[positions].unsqueeze(2), self.sin_signed[positions].unsqueeze(2))
        structs = None
        if rotary is None and (step.in_call or not step.lora) and kv.layers[0].kbuf is not None:
            structs = self.layer_calls.described(step.mode)
        if structs is not None:  # a whole layer per call: one position per row
            self.layer_calls.set_lora(structs, step.mode, step.lora, multi)
            valid = None if mask is None else mask.view(batch, -1)
            pending = self.layer_calls.run(structs, h, positions.contiguous(), kv, valid)
        else:
            h, pending = self._each_layer(step, h, positions, rotary, mask, kv)
        return self._logits(step, h + pending)

    def _plan(self, batch: int, length: int, multi) -> _Step:
        """Which copies and kernels a call of ``batch`` rows of ``length`` positions runs on."""
        lora = multi.uniform != BASE_SLOT
        rows = batch * length
        # Few rows: reading the weights is the cost, and 4-bit ones are 3.6× fewer bytes.
        # Many rows (a prompt, a big batch): the int4 kernel's arithmetic is the cost.
        if self.int4 and rows <= INT4_MAX_ROWS:
            mode = "int4"
        elif self.blocked and rows <= BLOCKED_MAX_ROWS:
            mode = "blocked"
        else:
            mode = None
        # On charbot's kernels the rows' LoRA terms are added inside the matmul calls (as
        # separate ops they took a one-stream reply from 49 to 38 tok/s): one LoRA's for
        # all rows, or each row's when one position per row uses different LoRAs.
        in_call = lora and (multi.uniform is not None or length == 1)
        in_call = in_call and (mode == "blocked" or (mode == "int4" and self.native_int4))
        fast = self.kernels if mode is not None else None
        return _Step(batch, length, mode, fast, lora, in_call, multi)

    def _each_layer(self, step: _Step, h, positions, rotary, mask, kv):
        """The decoder layers one op at a time: (``h``, the last layer's output, which the
        caller adds)."""
        fast, shape = step.fast, (step.batch, step.length)
        pending = None  # the last layer's output, added to h by the next norm
        for (layer, qkv_w, gate_up_w), cache in zip(self.layers, kv.layers, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            h, x = self._residual_norm(h, pending, layer.input_layernorm.weight, fast)
            qkv = _fused(step, qkv_w, attn, QKV, x)
            out = self._attention(layer, qkv, shape, positions, rotary, mask, cache, fast)
            o = _single(step, attn, "o_proj", out)
            h, x = self._residual_norm(h, o, layer.post_attention_layernorm.weight, fast)
            gu = _fused(step, gate_up_w, mlp, GATE_UP, x)
            inter = gu.shape[-1] // 2
            if fast is not None and inter % 16 == 0:
                act = fast.silu_mul(gu)
            else:
                act = F.silu(gu[:, :inter]).mul_(gu[:, inter:])
            pending = _single(step, mlp, "down_proj", act)
        return h, pending

    def _logits(self, step: _Step, h: torch.Tensor) -> torch.Tensor:
        """float32 logits of each row's last position of the final hidden states ``h``."""
        last = h.view(step.batch, step.length, -1)[:, -1]
        x = self._norm(last, self.final_norm.weight)
        if step.mode == "int4" and self.head_int4 is not None:
            return rescored_head(x, self.head_int4, self.head_weight)
        if step.mode == "blocked" and self.head_blocked is not None:
            return self.head_blocked.linear(x).float()
        return self.lm_head(x).float()

    def _attention(self, layer, qkv, shape, positions, rotary, mask, cache, fast) -> torch.Tensor:
        """Self-attention of a layer from its fused q/k/v output ``[rows, ...]``, updating
        its ``cache``; ``[rows, heads * dim]``. One position per row on charbot's kernels
        (``fast``) is two calls: rotary into the cache, attention (padding masked)."""
        batch, length = shape
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        rows = batch * length
        if rotary is None and self.fast_attention and cache.kbuf is not None:
            buffers = cache.reserve(1)
            q = fast.rope_to_cache(
                qkv,
                (heads, kv_heads, dim),
                self.rope_tables,
                positions,
                buffers[:2],
                buffers[2],
                _qk_norms(layer, self.eps) if self.family.qk_norm else None,
            )
            cache.commit(1)
            q = q.view(batch, kv_heads, self.groups, dim)
            valid = None if mask is None else mask.view(batch, -1)
            return fast.decode_attention(q, *buffers[:2], self.scaling, buffers[2] + 1, valid)
        qk_heads = heads + kv_heads
        if rotary is None:  # a first step with no cache yet (not reached from the scheduler)
            rotary = (self.cos[positions].unsqueeze(2), self.sin_signed[positions].unsqueeze(2))
        cos, sin = rotary
        qkv = qkv.view(batch, length, heads + 2 * kv_heads, dim)
        qk = qkv[:, :, :qk_heads]
        if self.family.qk_norm:  # Qwen3: each head RMS-normed before the rotation
            attn = layer.self_attn
            qk = torch.cat(
                (
                    self._norm(qk[:, :, :heads], attn.q_norm.weight),
                    self._norm(qk[:, :, heads:], attn.k_norm.weight),
                ),
                dim=2,
            )
        flipped = qk.unflatten(-1, (2, dim // 2)).flip(-2).flatten(-2)
        qk = (qk * cos).add_(flipped * sin)
        k = qk[:, :, heads:].transpose(1, 2)
        v = qkv[:, :, qk_heads:].transpose(1, 2)
        keys, values = cache.update(k, v)
        if length == 1:  # query heads grouped by their key/value head (no repeat)
            q = qk[:, 0, :heads].view(batch, kv_heads, self.groups, dim)
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scaling
            )
            return out.view(rows, heads * dim)
        q = qk[:, :, :heads].transpose(1, 2)
        keys = _repeat_kv(keys, self.groups)
        values = _repeat_kv(values, self.groups)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling)
        return out.transpose(1, 2).reshape(rows, heads * dim)

    def _residual_norm(self, h, delta, weight, fast):
        """``h + delta`` (``delta`` None: ``h``) and its RMSNorm; on charbot's kernels
        (``fast``) in one call that adds in place."""
        if fast is not None:
            return h, fast.rms_norm(h, weight, self.eps, delta)
        if delta is not None:
            h = h + delta
        return h, self._norm(h, weight)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # LlamaRMSNorm's arithmetic (float32, then the weight in x's dtype) with torch's
        # one-op norm: same values, 3 ops instead of 7 (a decode step has 61 of these)
        normed = F.rms_norm(x.to(torch.float32), (x.shape[-1],), eps=self.eps)
        return weight * normed.to(x.dtype)


@dataclass(frozen=True)
class _Step:
    """How one forward call runs: its rows' shape, the copies its matmuls use (``mode``:
    "int4", "blocked" or None), charbot's kernels for the small ops (``fast``) or not, and
    whether the rows' LoRA terms (``lora``) are added inside the matmul calls."""

    batch: int
    length: int
    mode: str | None
    fast: native.Kernels | None
    lora: bool
    in_call: bool
    multi: MultiLora


def _fused(step: _Step, weights: Fused, owner, names: tuple[str, ...], x: torch.Tensor):
    """A fused projection with the rows' LoRA terms: in the call, or added after."""
    if step.in_call:
        term = lora_term(weights, owner, names, weights.slices, step.multi)
        return weights.linear(x, step.mode, term)
    out = weights.linear(x, step.mode)
    if step.lora:
        add_deltas(out, owner, names, weights.slices, x, step.batch)
    return out


def _single(step: _Step, owner, name: str, x: torch.Tensor):
    """A projection of its own (o_proj, down_proj), likewise."""
    module = getattr(owner, name)
    if step.in_call:
        return project_base(module, x, step.mode, single_term(owner, name, step.multi))
    if step.lora:
        return project(module, x, step.batch, step.mode)
    return project_base(module, x, step.mode)


def _fuse_layers(layers, pack: bool, quantize: Quantize | None, block: Block | None) -> list:
    """Per decoder layer (the layer, its fused q/k/v, its fused gate/up); o_proj and
    down_proj get their 4-bit copies (``quantize``: None for none) and blocked ones
    (``block``) as attributes."""
    fused = []
    for index, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        named = None if quantize is None else functools.partial(quantize, f"layers.{index}.qkv")
        qkv = Fused([getattr(attn, n) for n in QKV], pack, named, block)
        named = None if quantize is None else functools.partial(quantize, f"layers.{index}.gate_up")
        gate_up = Fused([getattr(mlp, n) for n in GATE_UP], pack, named, block)
        fused.append((layer, qkv, gate_up))
        for name, module in (("o", attn.o_proj), ("down", mlp.down_proj)):
            if quantize is not None:
                module._lean_int4 = quantize(f"layers.{index}.{name}", module.weight)
            if block is not None:
                module._lean_blocked = block(module.weight.detach())
    return fused


def _rope_tables(rotary, max_positions: int, head_dim: int, dtype) -> tuple:
    """(cos, signed sin) for every position, in ``dtype``: rotary embeddings by lookup."""
    positions = torch.arange(max_positions, dtype=torch.float32)
    freqs = positions[:, None] * rotary.inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    scale = rotary.attention_scaling
    cos = (emb.cos() * scale).to(dtype)
    sin = (emb.sin() * scale).to(dtype)
    half = head_dim // 2
    # rotate_half(x) * sin == flip(x) * [-sin, sin] (halves swapped; negation is exact)
    sin_signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
    return cos, sin_signed


def _qk_norms(layer, eps: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A Qwen3 layer's q and k norm weights and eps, as charbot's rotary kernel takes them."""
    attn = layer.self_attn
    return attn.q_norm.weight, attn.k_norm.weight, eps


def _torch_threads(count: int) -> None:
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)
