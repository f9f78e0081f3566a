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

from engine import huge_pages, native
from engine import int4 as int4_weights
from engine.fast_linear import PACK_HINT
from engine.multi_lora import BASE_SLOT, lora_delta

log = logging.getLogger(__name__)

# 4-bit decode steps up to this many rows: measured per step on the default model, torch's
# int4 kernel was faster than bf16 up to 6 rows and slower from 8 (2 threads; even at 1);
# so was charbot's (engine/bench/kernel_speed.py: 25 against 23 ms at 8 rows, 20 against 20 at 6).
INT4_MAX_ROWS = 6
# bf16 steps up to this many rows on charbot's kernel, more on oneDNN's (benchmarks/
# kernels.py, a step's matmuls on one thread: 13.8/13.2/13.6/18.3 ms for 1/2/4/6 rows
# against oneDNN's 25.8/26.3/20.2/19.7 ms).
BLOCKED_MAX_ROWS = 4
# 4-bit output layer: this many top candidates per row get their logits again in bf16.
RESCORE = 64
ROPE_TYPES = ("default", "linear", "llama3")  # position-only rotary: a table works
QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")


Quantize = Callable[[str, torch.Tensor], int4_weights.Int4]
Block = Callable[[torch.Tensor], native.BlockedBf16 | None]


def _quantize_now(name: str, weight: torch.Tensor) -> int4_weights.Int4:
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
        quantize: Callable[[torch.Tensor], int4_weights.Int4] | None = None,
        block: Block | None = None,
    ) -> None:
        weight = torch.cat([m.weight.detach() for m in modules])
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
        return _matmul(x, mode, term, self.int4, self.blocked, self.packed, self.weight)


def _base_linear(module: torch.nn.Module) -> torch.nn.Module:
    """The ``nn.Linear`` that holds a projection's base weight.

    Once peft wraps a projection for any LoRA, the wrapper keeps the original Linear as
    its base layer and stays in place after the LoRA is unloaded. The wrapper's own
    ``weight`` is the base layer's, which prepacking replaced by a zero stand-in: base rows
    must be computed from the base layer itself.
    """
    base = module._modules.get("base_layer")  # a dict lookup: this runs twice per layer
    return module if base is None else _base_linear(base)


def _linear(
    module: torch.nn.Module,
    x: torch.Tensor,
    mode: str | None = None,
    term: native.LoraTerm | None = None,
) -> torch.Tensor:
    """The base projection of ``x`` (plus ``term``, a LoRA term for charbot's kernels), as
    :func:`_matmul` picks it."""
    base = _base_linear(module)
    int4, blocked = getattr(base, "_lean_int4", None), getattr(base, "_lean_blocked", None)
    packed = getattr(base, "_packed_weight", None)
    return _matmul(x, mode, term, int4, blocked, packed, base.weight)


def _matmul(x, mode, term, int4, blocked, packed, weight) -> torch.Tensor:
    """``x`` times one projection's weight: on its 4-bit copy ``int4`` if ``mode`` is
    "int4", on its blocked bf16 copy if "blocked" and there is one (with ``term``, a LoRA
    term, added in charbot's call), else on oneDNN's ``packed`` weight where there is one,
    else on the plain ``weight``."""
    if term is not None:
        return (int4 if mode == "int4" else blocked).linear(x, term)
    if mode == "int4":
        return int4_weights.linear(x, int4)
    if mode == "blocked" and blocked is not None:
        return blocked.linear(x)
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    return F.linear(x, weight)


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
            quantize = _quantize_now
        # bf16 copies in charbot's block order for small steps: only without 4-bit copies
        # (they take those steps) — it is a second copy of the weights
        blocked = kernels is not None and not int4 and model.dtype == torch.bfloat16
        block = functools.partial(native.block_bf16, kernels=kernels) if blocked else None
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
            qkv = _Fused([getattr(attn, n) for n in QKV], pack, named, block)
            named = None if not int4 else functools.partial(quantize, f"layers.{index}.gate_up")
            gate_up = _Fused([getattr(mlp, n) for n in GATE_UP], pack, named, block)
            self.layers.append((layer, qkv, gate_up))
            for name, module in (("o", attn.o_proj), ("down", mlp.down_proj)):
                if int4:
                    module._lean_int4 = quantize(f"layers.{index}.{name}", module.weight)
                if block is not None:
                    module._lean_blocked = block(module.weight.detach())
        # The output projection (a quarter of a 4-bit decode step in bf16): 4-bit logits for
        # the whole vocabulary, then the top RESCORE candidates computed again from the
        # bf16 rows (rescored_head). Kept: a reference to the bf16 weight, which prepacking
        # would otherwise replace (a tied head shares the embeddings' anyway).
        head = model.lm_head.weight.detach()
        self.head_int4 = quantize("head", head) if int4 and int4_weights.fits(head) else None
        self.head_weight = head if self.head_int4 is not None else None
        self.head_blocked = block(head) if block is not None else None
        # all in charbot's layout: the rows' LoRA terms can go into the same calls
        copies = [copy for layer in self._copies("int4") for copy in layer]
        self.native_int4 = int4 and all(isinstance(w, native.NativeInt4) for w in copies)
        # a shape the blocked layout does not take: no blocked steps at all (simpler, and
        # no default model has one)
        blocks = [copy for layer in self._copies("blocked") for copy in layer]
        blocked = blocked and all(copy is not None for copy in blocks)
        self.int4 = int4
        # charbot's kernels also take the norms and one-query attention of small steps
        fits = model.dtype == torch.bfloat16 and config.hidden_size % 16 == 0
        self.kernels = kernels if fits else None
        self.fast_attention = self.head_dim % 32 == 0 and self.head_dim <= 256 and self.groups <= 16
        self.blocked = blocked
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
        self.rope_tables = (self.cos, self.sin_signed)
        self._lora_version = -1
        self._lora_ok = True
        self._structs: dict[str, list[native.Layer] | None] = {}
        self._structs_lora: dict[str, int | None] = {}

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
        self._structs.clear()
        self._structs_lora.clear()
        return moved

    def _all_copies(self) -> list:
        """Every 4-bit and blocked copy, the output projection's included."""
        copies = [self.head_int4, self.head_blocked]
        for kind in ("int4", "blocked"):
            copies += [copy for layer in self._copies(kind) for copy in layer]
        return [copy for copy in copies if copy is not None]

    def _copies(self, kind: str) -> list[tuple]:
        """Per layer, the q/k/v, o, gate/up and down copies of ``kind`` ("int4" or
        "blocked"; None where there is none), in the order the one-call layer takes them."""
        out = []
        for layer, qkv, gate_up in self.layers:
            o, down = _base_linear(layer.self_attn.o_proj), _base_linear(layer.mlp.down_proj)
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
            return cls(model, pack=pack, int4=int4, quantize=quantize, kernels=kernels)
        except (AttributeError, RuntimeError) as exc:
            log.info("lean Llama forward unavailable: %s", exc)
            return None

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
        lora = multi.uniform != BASE_SLOT
        batch, length = ids.shape
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
        if self.kernels is not None:
            # Steps on charbot's kernels: their threads, torch's one (torch's idle OpenMP
            # threads spin on the cores ours need: a 4-bit step took 18.0 ms with 2 of
            # each, 9.0 ms with torch on 1). Others: torch's, as [model] threads says.
            _torch_threads(1 if fast is not None else self.kernels.threads)
        h = self.embed(ids.view(rows))  # hidden states as [rows, hidden]: oneDNN likes 2D
        if length == 1 and bool(mask.all()):
            mask = None  # one query on an unpadded history: nothing to mask
        rotary = None  # charbot's kernels read the tables themselves (and the padding)
        if fast is None or length != 1:
            rotary = (self.cos[positions].unsqueeze(2), self.sin_signed[positions].unsqueeze(2))
        pending = None  # the last layer's output, added to h by the next norm
        structs = None
        if rotary is None and (in_call or not lora) and kv.layers[0].kbuf is not None:
            structs = self._layer_structs(mode)
        if structs is not None:  # a whole layer per call: one position per row
            self._set_lora(structs, mode, lora, multi)
            valid = None if mask is None else mask.view(batch, -1)
            pending = self._decode_layers(structs, h, positions.contiguous(), kv, valid)

        def fused(weights: _Fused, owner, names: tuple[str, ...], x: torch.Tensor):
            """A fused projection with the rows' LoRA terms: in the call, or added after."""
            if in_call:
                term = _lora_term(weights, owner, names, weights.slices, multi)
                return weights.linear(x, mode, term)
            out = weights.linear(x, mode)
            if lora:
                _add_deltas(out, owner, names, weights.slices, x, batch)
            return out

        def single(owner, name: str, x: torch.Tensor):
            """A projection of its own (o_proj, down_proj), likewise."""
            module = getattr(owner, name)
            if in_call:
                return _linear(module, x, mode, _single_term(owner, name, multi))
            return _project(module, x, batch, mode) if lora else _linear(module, x, mode)

        layers = zip(self.layers, kv.layers, strict=True) if structs is None else ()
        for (layer, qkv_w, gate_up_w), cache in layers:
            attn, mlp = layer.self_attn, layer.mlp
            h, x = self._residual_norm(h, pending, layer.input_layernorm.weight, fast)
            qkv = fused(qkv_w, attn, QKV, x)
            out = self._attention(qkv, (batch, length), positions, rotary, mask, cache, fast)
            o = single(attn, "o_proj", out)
            h, x = self._residual_norm(h, o, layer.post_attention_layernorm.weight, fast)
            gu = fused(gate_up_w, mlp, GATE_UP, x)
            inter = gu.shape[-1] // 2
            if fast is not None and inter % 16 == 0:
                act = fast.silu_mul(gu)
            else:
                act = F.silu(gu[:, :inter]).mul_(gu[:, inter:])
            pending = single(mlp, "down_proj", act)
        h = h + pending
        last = h.view(batch, length, -1)[:, -1]
        x = self._norm(last, self.final_norm.weight)
        if mode == "int4" and self.head_int4 is not None:
            return rescored_head(x, self.head_int4, self.head_weight)
        if mode == "blocked" and self.head_blocked is not None:
            return self.head_blocked.linear(x).float()
        return self.lm_head(x).float()

    def _layer_structs(self, mode: str) -> list[native.Layer] | None:
        """The layers described for charbot's whole-layer call on the ``mode`` copies
        ("int4" or "blocked"), made on first use; None where a weight is not in their
        layout or a size does not fit the kernels."""
        if mode in self._structs:
            return self._structs[mode]
        structs = None
        inter = self.layers[0][0].mlp.down_proj.in_features
        if self.kernels is not None and self.fast_attention and inter % 16 == 0:
            kind = native.NativeInt4 if mode == "int4" else native.BlockedBf16
            structs = []
            for (layer, _, _), weights in zip(self.layers, self._copies(mode), strict=True):
                if not all(isinstance(weight, kind) for weight in weights):
                    structs = None
                    break
                struct = native.Layer(
                    input_norm=layer.input_layernorm.weight.data_ptr(),
                    post_norm=layer.post_attention_layernorm.weight.data_ptr(),
                    cos=self.cos.data_ptr(),
                    sin=self.sin_signed.data_ptr(),
                    eps=self.eps,
                    scale=self.scaling,
                    heads=self.heads,
                    kv_heads=self.kv_heads,
                    dim=self.head_dim,
                    hidden=weights[1].out_features,  # o_proj: back to the hidden size
                    inter=inter,
                )
                for name, weight in zip(("qkv", "o", "gate_up", "down"), weights, strict=True):
                    getattr(struct, name).set_weight(weight)
                structs.append(struct)
        self._structs[mode] = structs
        self._structs_lora[mode] = None
        return structs

    def _set_lora(self, structs: list[native.Layer], mode: str, lora: bool, multi) -> None:
        """Point the layer descriptions at the rows' LoRA terms (none for base rows);
        redone only when the rows or LoRAs change."""
        key = multi.version if lora else -1
        if self._structs_lora[mode] == key:
            return
        for struct, (layer, qkv, gate_up) in zip(structs, self.layers, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            terms = (None, None, None, None)
            if lora:
                terms = (
                    _lora_term(qkv, attn, QKV, qkv.slices, multi),
                    _single_term(attn, "o_proj", multi),
                    _lora_term(gate_up, mlp, GATE_UP, gate_up.slices, multi),
                    _single_term(mlp, "down_proj", multi),
                )
            for name, term in zip(("qkv", "o", "gate_up", "down"), terms, strict=True):
                getattr(struct, name).set_lora(term)
        self._structs_lora[mode] = key

    def _decode_layers(self, structs, h: torch.Tensor, positions, kv, valid) -> torch.Tensor:
        """All layers on charbot's whole-layer call; ``h`` is updated in place but for the
        last layer's output, which is returned (the caller adds it)."""
        rows = h.shape[0]
        scratch = torch.empty(rows * structs[0].scratch_per_row(), dtype=torch.bfloat16)
        outs = (torch.empty_like(h), torch.empty_like(h))  # this layer's, the one before's
        pending = None
        for index, (struct, cache) in enumerate(zip(structs, kv.layers, strict=True)):
            out = outs[index % 2]
            buffers = cache.reserve(1)
            self.kernels.decode_layer(struct, h, pending, positions, buffers, out, scratch, valid)
            cache.commit(1)
            pending = out
        return pending

    def _attention(self, qkv, shape, positions, rotary, mask, cache, fast) -> torch.Tensor:
        """Self-attention of a layer from its fused q/k/v output ``[rows, ...]``, updating
        its ``cache``; ``[rows, heads * dim]``. One position per row on charbot's kernels
        (``fast``) is two calls: rotary into the cache, attention (padding masked)."""
        batch, length = shape
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        rows = batch * length
        if rotary is None and self.fast_attention and cache.kbuf is not None:
            buffers = cache.reserve(1)
            q = fast.rope_to_cache(
                qkv, (heads, kv_heads, dim), self.rope_tables, positions, buffers[:2], buffers[2]
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


def rescored_head(x: torch.Tensor, quantized, weight: torch.Tensor, k: int = RESCORE):
    """float32 logits ``[B, vocab]`` of ``x`` ``[B, hidden]`` from the 4-bit output layer
    ``quantized``, with each row's top ``k`` computed again from the bf16 ``weight``.

    The bundled model's output layer is its 8-bit embedding table: in 4 bits its logits
    were up to 4.5 off (cosine 0.998), enough to swap close candidates. The bf16 argmax was
    never below 4-bit rank 8 (engine/bench/int4_head.py), so the top 64 get bf16 logits — on
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


def _torch_threads(count: int) -> None:
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def _lora_term(holder, owner, names, slices, multi):
    """The rows' LoRA terms on the projections ``names`` of ``owner`` (fused as ``slices``)
    for charbot's kernels: a :class:`~engine.native.LoraTerm` when all rows use one
    LoRA, else :class:`~engine.native.RowTerms`; None when no row's LoRA touches
    them. Cached on ``holder`` until rows or LoRAs change."""
    cached = getattr(holder, "_lean_term", None)
    if cached is not None and cached[0] == multi.version:
        return cached[1]
    if multi.uniform is not None:
        term = _slot_term(owner, names, slices, multi.uniform)
    else:
        terms = [
            None if slot == BASE_SLOT else _slot_term(owner, names, slices, slot)
            for slot in multi.rows.tolist()
        ]
        term = native.RowTerms(terms) if any(terms) else None
    holder._lean_term = (multi.version, term)
    return term


def _slot_term(owner, names, slices, slot: int) -> native.LoraTerm | None:
    """One LoRA's term (its stack ``slot``): the A matrices stacked, each B placed at
    its projection's slice of the fused output."""
    parts = []
    for name, (start, stop) in zip(names, slices, strict=True):
        module = getattr(owner, name)
        if hasattr(module, "_multi_lora_owner"):
            parts.append((module._stack_a[slot].float(), module._stack_b[slot], start, stop))
    if not parts:
        return None
    a = torch.cat([part[0] for part in parts])
    bt = torch.zeros(a.shape[0], slices[-1][1])
    row = 0
    for part_a, part_b, start, stop in parts:
        bt[row : row + part_a.shape[0], start:stop] = part_b.t()
        row += part_a.shape[0]
    return native.LoraTerm(a, bt)


def _single_term(owner, name: str, multi):
    """:func:`_lora_term` for a projection of its own (o_proj, down_proj)."""
    module = getattr(owner, name)
    width = _base_linear(module).out_features
    return _lora_term(module, owner, (name,), [(0, width)], multi)


def _delta(module: torch.nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor | None:
    """The LoRA term of a projection that multi_lora patched; None for a plain Linear."""
    if not hasattr(module, "_multi_lora_owner"):
        return None
    # Per-row LoRAs need the rows apart from the positions: [B, T, in].
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


def _project(module: torch.nn.Module, x: torch.Tensor, batch: int, mode: str | None):
    """A maybe LoRA-patched projection of ``x``: the base part, plus the rows' LoRA terms."""
    out = _linear(module, x, mode)
    delta = _delta(module, x, batch)
    return out if delta is None else out.add_(delta)  # in place: back to the base dtype


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)
