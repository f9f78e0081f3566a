"""charbot's own CPU kernels for small decode steps (``cpu_kernels.c``): matmuls, and a
whole decoder layer in one call.

Why: a decode step reads every weight once for a handful of rows. torch's CPU kernels read
them at 6-10 GB/s for one row here; the kernels in ``cpu_kernels.c`` stream blocked weights
at ~23 GB/s on one core, ~27 GB/s from huge pages (engine/huge_pages.py;
docs/performance.md). They
need AVX-512 with BF16 and VNNI (AMD Zen 4 and later, Intel Xeon from Cooper Lake).

The C file ships with the package and is compiled once per machine with the system's C
compiler into ``[model] cache_dir``/kernels (engine/native_build.py; ~2 s, started by
the bot process while it finds the model), then loaded with ctypes. Without a compiler,
on another CPU, or with ``[model] kernels = "torch"``, :func:`load` says why in one log
line and returns None: decoding then uses torch's kernels, only slower.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import native_build
from engine.native_build import MAX_ROWS

log = logging.getLogger(__name__)

PAIR_BYTES = 160  # a block's bytes per 64 inputs: 4 features × (32 code bytes + 4 fp16 pairs)
FP16_LIMIT = 60000.0  # int4 scales and minimums are fp16: larger weights stay on torch's kernel


class Projection(ctypes.Structure):
    """``struct charbot_projection``: a packed weight and its LoRA term (rank 0: none)."""

    _fields_ = [
        ("weight", ctypes.c_void_p),
        ("out_features", ctypes.c_int),
        ("in_features", ctypes.c_int),
        ("int4", ctypes.c_int),
        ("rank", ctypes.c_int),
        ("a", ctypes.c_void_p),
        ("bt", ctypes.c_void_p),
    ]

    def set_weight(self, weight: NativeInt4 | BlockedBf16) -> None:
        int4 = isinstance(weight, NativeInt4)
        self.weight = (weight.blob if int4 else weight.blocks).data_ptr()
        self.out_features, self.in_features, self.int4 = *_shape(weight), int(int4)

    def set_lora(self, term: LoraTerm | RowTerms | None) -> None:
        """``term``'s tensors must outlive the calls (the lean path caches them)."""
        self.rank, self.a, self.bt = _lora_fields(term)


class Layer(ctypes.Structure):
    """``struct charbot_layer``: what :meth:`Kernels.decode_layer` reads of one layer."""

    _fields_ = [
        ("qkv", Projection),
        ("o", Projection),
        ("gate_up", Projection),
        ("down", Projection),
        ("input_norm", ctypes.c_void_p),
        ("post_norm", ctypes.c_void_p),
        ("cos", ctypes.c_void_p),
        ("sin", ctypes.c_void_p),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("heads", ctypes.c_int),
        ("kv_heads", ctypes.c_int),
        ("dim", ctypes.c_int),
        ("hidden", ctypes.c_int),
        ("inter", ctypes.c_int),
        ("qkv_bias", ctypes.c_void_p),  # the family's extras (engine/lean_family.py); None: none
        ("q_norm", ctypes.c_void_p),
        ("k_norm", ctypes.c_void_p),
    ]

    def scratch_per_row(self) -> int:
        """bf16 values of scratch space :meth:`Kernels.decode_layer` needs per row."""
        qkv = (self.heads + 2 * self.kv_heads) * self.dim
        return 2 * self.hidden + qkv + 2 * self.heads * self.dim + 3 * self.inter


def _valid(valid: torch.Tensor | None) -> tuple[int | None, int]:
    """A padding mask as the kernels read it: bytes and a row stride (None: no padding)."""
    if valid is None:
        return None, 0
    if valid.dtype != torch.bool or valid.stride(-1) != 1:
        raise ValueError("the valid positions must be a bool tensor with rows in memory order")
    return valid.data_ptr(), valid.stride(0)


def _lora_fields(term: LoraTerm | RowTerms | None) -> tuple[int, int | None, int | None]:
    """A LoRA term as the kernels take it: rank (0: none; negative: per row), A, B.T."""
    return (0, None, None) if term is None else (term.rank, term.a_ptr, term.bt_ptr)


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _shape(weight) -> tuple[int, int]:
    return weight.out_features, weight.in_features


class Kernels:
    """The loaded library: :meth:`int4_linear` and :meth:`bf16_linear` on packed weights."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self.threads = 1
        pointer, size = ctypes.c_void_p, ctypes.c_int
        arguments = [pointer, size, size, pointer, size, pointer, size, pointer, pointer]
        self._int4 = library.charbot_int4_linear
        self._bf16 = library.charbot_bf16_linear
        for function in (self._int4, self._bf16):
            function.argtypes = arguments
            function.restype = ctypes.c_int
        self._norm = library.charbot_rms_norm
        self._norm.argtypes = [pointer, size, size, pointer, ctypes.c_float, pointer, pointer]
        self._attention = library.charbot_decode_attention
        long = ctypes.c_long
        self._attention.argtypes = [
            *(pointer, long, size, size, size, size),  # q, its row stride, shape
            *(pointer, pointer, long, long, size),  # keys, values, their strides, length
            ctypes.c_float,
            *(pointer, pointer, long),  # out, the valid-position bytes and their row stride
        ]
        self._rope = library.charbot_rope_to_cache
        self._rope.argtypes = [
            *(pointer, size, size, size, size),  # qkv and its shape
            *(pointer, pointer, pointer),  # cos, signed sin, positions
            *(pointer, pointer, pointer, long, long, size),  # q out, cache buffers, column
            *(pointer, pointer, ctypes.c_float),  # q and k norm weights (or None), their eps
        ]
        self._threads = library.charbot_threads
        self._threads.argtypes = [size]
        self._threads.restype = size
        self._layer = library.charbot_decode_layer
        self._layer.argtypes = [
            *(ctypes.POINTER(Layer), pointer, pointer, size, pointer),  # layer, h, pending
            *(pointer, pointer, long, long, size),  # the cache buffers, strides, column
            *(pointer, pointer, pointer, long),  # out, scratch, valid positions
        ]
        self._layer.restype = ctypes.c_int
        self._silu_mul = library.charbot_silu_mul
        self._silu_mul.argtypes = [pointer, size, size, pointer]
        for function in (self._norm, self._attention, self._rope, self._silu_mul):
            function.restype = ctypes.c_int

    def rope_to_cache(
        self,
        qkv: torch.Tensor,
        shape: tuple[int, int, int],
        tables: tuple[torch.Tensor, torch.Tensor],
        positions: torch.Tensor,
        buffers: tuple[torch.Tensor, torch.Tensor],
        column: int,
        norms: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    ) -> torch.Tensor:
        """Rotary embedding for one position per row of the fused q/k/v output ``qkv``
        ``[rows, (heads + 2 kv_heads) * dim]`` (``shape``: heads, kv_heads, dim; ``tables``:
        cos and signed sin ``[positions, dim]``): the rotated keys and the values are written
        into the cache ``buffers`` at ``column``, the rotated queries returned ``[rows,
        heads * dim]``. ``norms``: (q norm weight, k norm weight, eps) applied to each query
        and key head first (Qwen3), or None."""
        heads, kv_heads, dim = shape
        q_norm, k_norm, eps = (None, None, 0.0) if norms is None else norms
        rows = qkv.shape[0]
        keys, values = buffers
        q = torch.empty(rows, heads * dim, dtype=torch.bfloat16)
        status = self._rope(
            *(qkv.data_ptr(), rows, heads, kv_heads, dim),
            *(tables[0].data_ptr(), tables[1].data_ptr(), positions.contiguous().data_ptr()),
            *(q.data_ptr(), keys.data_ptr(), values.data_ptr(), keys.stride(0), keys.stride(1)),
            column,
            *(_pointer(q_norm), _pointer(k_norm), eps),
        )
        if status != 0:
            raise ValueError(f"charbot's rotary kernel refused a head size of {dim}")
        return q

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` in bf16 from the fused ``[rows, 2 * inter]`` output."""
        rows, width = gate_up.shape
        out = torch.empty(rows, width // 2, dtype=torch.bfloat16)
        if self._silu_mul(gate_up.data_ptr(), rows, width // 2, out.data_ptr()) != 0:
            raise ValueError(f"charbot's SiLU kernel refused rows of {width // 2}")
        return out

    def set_threads(self, count: int) -> int:
        """Split the matmuls over ``count`` threads (this one included); returns how many
        it runs (fewer if the system refused threads)."""
        self.threads = self._threads(count)
        return self.threads

    def decode_layer(
        self,
        layer: Layer,
        h: torch.Tensor,
        pending: torch.Tensor | None,
        positions: torch.Tensor,
        buffers: tuple[torch.Tensor, torch.Tensor, int],
        out: torch.Tensor,
        scratch: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> None:
        """One decoder layer for one position per row: ``h`` (``[rows, hidden]``)
        gets ``pending`` added in place; the layer's MLP output (the next one's
        ``pending``) goes to ``out``; keys and values into the cache ``buffers`` (as
        :meth:`rope_to_cache`). ``scratch``: at least ``rows × layer.scratch_per_row()``
        bf16 values; ``valid`` as for :meth:`decode_attention`."""
        keys, values, column = buffers
        status = self._layer(
            ctypes.byref(layer),
            h.data_ptr(),
            None if pending is None else pending.data_ptr(),
            h.shape[0],
            positions.data_ptr(),
            *(keys.data_ptr(), values.data_ptr(), keys.stride(0), keys.stride(1), column),
            out.data_ptr(),
            scratch.data_ptr(),
            *_valid(valid),
        )
        if status != 0:
            raise MemoryError(f"charbot's decoder layer kernel failed ({status})")

    def rms_norm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        eps: float,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LlamaRMSNorm of bf16 rows ``x`` ``[rows, n]`` (n a multiple of 16); with
        ``residual``, ``x += residual`` first, in place (the decoder's ``h = h + o``)."""
        rows, n = x.shape
        out = torch.empty_like(x)
        extra = None if residual is None else residual.contiguous().data_ptr()
        status = self._norm(x.data_ptr(), rows, n, weight.data_ptr(), eps, out.data_ptr(), extra)
        if status != 0:
            raise ValueError(f"charbot's RMSNorm kernel refused rows of {n}")
        return out

    def decode_attention(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        scale: float,
        length: int | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of one query position per row: ``q`` ``[B, kv_heads, groups,
        dim]``, ``keys``/``values`` ``[B, kv_heads, T, dim]`` (each position's dim values
        contiguous) of which the first ``length`` positions (default all); bf16 ``[B,
        kv_heads * groups * dim]``. ``dim`` a multiple of 32 up to 256, at most 16 groups.
        ``valid``: bool ``[B, ≥ length]``, False for padding positions (None: all real)."""
        batch, kv_heads, groups, dim = q.shape
        out = torch.empty(batch, kv_heads * groups * dim, dtype=torch.bfloat16)
        status = self._attention(
            *(q.data_ptr(), q.stride(0), batch, kv_heads, groups, dim),
            *(keys.data_ptr(), values.data_ptr(), keys.stride(0), keys.stride(1)),
            keys.shape[2] if length is None else length,
            scale,
            out.data_ptr(),
            *_valid(valid),
        )
        if status != 0:  # the caller checked the head size: this is out of memory
            raise MemoryError(f"charbot's attention kernel failed ({status})")
        return out

    def int4_linear(
        self, x: torch.Tensor, weight: NativeInt4, lora: LoraTerm | RowTerms | None = None
    ) -> torch.Tensor:
        """``x @ W.T`` (+ ``lora``'s term) in bf16 for ``x`` ``[rows, in]``."""
        return self._call(self._int4, x, weight.blob, weight.out_features, lora)

    def bf16_linear(
        self, x: torch.Tensor, weight: BlockedBf16, lora: LoraTerm | RowTerms | None = None
    ) -> torch.Tensor:
        """``x @ W.T`` (+ ``lora``'s term) in bf16 for ``x`` ``[rows, in]``."""
        return self._call(self._bf16, x, weight.blocks, weight.out_features, lora)

    @staticmethod
    def _call(function, x, weight: torch.Tensor, out_features: int, lora):
        rows, inputs = x.shape
        rank, a, bt = _lora_fields(lora)
        if rank < 0 and rows > MAX_ROWS:  # per-row terms: one call (callers stay below)
            raise ValueError(f"per-row LoRA terms take at most {MAX_ROWS} rows, not {rows}")
        if x.dtype != torch.bfloat16:
            x = x.to(torch.bfloat16)
        x = x.contiguous()
        out = torch.empty(rows, out_features, dtype=torch.bfloat16)
        # more rows than the kernel takes at once (callers avoid it: it is slow) in chunks
        source, target, weights = x.data_ptr(), out.data_ptr(), weight.data_ptr()
        for start in range(0, rows, MAX_ROWS):
            count = min(MAX_ROWS, rows - start)
            status = function(
                source + 2 * start * inputs,
                count,
                inputs,
                weights,
                out_features,
                target + 2 * start * out_features,
                rank,
                a,
                bt,
            )
            if status != 0:  # shapes were checked when packing: this is out of memory
                raise MemoryError(f"charbot's matmul kernel failed ({status})")
        return out


class LoraTerm:
    """One LoRA's term on a projection, as the kernels add it: ``A`` ``[rank, in]`` and
    ``B`` (times its scale) transposed, ``[rank, out]``, both float32."""

    __slots__ = ("a", "a_ptr", "bt", "bt_ptr", "rank")

    def __init__(self, a: torch.Tensor, bt: torch.Tensor) -> None:
        self.a = a.to(torch.float32).contiguous()
        self.bt = bt.to(torch.float32).contiguous()
        self.rank = self.a.shape[0]
        self.a_ptr, self.bt_ptr = self.a.data_ptr(), self.bt.data_ptr()  # kept alive above


class RowTerms:
    """Rows on different LoRAs: each row's :class:`LoraTerm` (None: no LoRA), all of
    the same rank (the stacks pad every LoRA to it), as the kernels read them."""

    __slots__ = ("_arrays", "a_ptr", "bt_ptr", "rank", "terms")

    def __init__(self, terms: list[LoraTerm | None]) -> None:
        self.terms = terms  # keeps the tensors the pointers point into alive
        ranks = {term.rank for term in terms if term is not None}
        if len(ranks) > 1:
            raise ValueError(f"rows' LoRA terms differ in rank: {sorted(ranks)}")
        self.rank = -(ranks.pop() if ranks else 0)  # negative: per row
        pointers = ctypes.c_void_p * len(terms)
        a = pointers(*(None if term is None else term.a_ptr for term in terms))
        bt = pointers(*(None if term is None else term.bt_ptr for term in terms))
        self._arrays = (a, bt)
        self.a_ptr, self.bt_ptr = ctypes.addressof(a), ctypes.addressof(bt)


@dataclass(frozen=True, slots=True)
class NativeInt4:
    """A ``[out, in]`` weight in the kernels' 4-bit layout (see cpu_kernels.c)."""

    blob: torch.Tensor  # uint8 [out / 4, in / 64, PAIR_BYTES]
    out_features: int
    in_features: int
    kernels: Kernels

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """What holds the weight's data (for moving it, as huge_pages.settle does)."""
        return (self.blob,)

    @property
    def nbytes(self) -> int:
        return self.blob.numel()

    def linear(self, x: torch.Tensor, lora: LoraTerm | RowTerms | None = None) -> torch.Tensor:
        return self.kernels.int4_linear(x, self, lora)


@dataclass(frozen=True, slots=True)
class BlockedBf16:
    """A bf16 ``[out, in]`` weight in the kernels' block order (see cpu_kernels.c)."""

    blocks: torch.Tensor  # bf16 [out / 4, in / 32, 4, 32]
    out_features: int
    in_features: int
    kernels: Kernels

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """What holds the weight's data."""
        return (self.blocks,)

    @property
    def nbytes(self) -> int:
        return self.blocks.numel() * self.blocks.element_size()

    def linear(self, x: torch.Tensor, lora: LoraTerm | RowTerms | None = None) -> torch.Tensor:
        return self.kernels.bf16_linear(x, self, lora)


def int4_fits(out_features: int, in_features: int) -> bool:
    return in_features % 64 == 0 and out_features % 4 == 0


def bf16_fits(out_features: int, in_features: int) -> bool:
    return in_features % 32 == 0 and out_features % 4 == 0


def pack_int4(weight: torch.Tensor, kernels: Kernels) -> NativeInt4 | None:
    """Asymmetric 4-bit codes per group of 32 inputs (Q4_1's grid, fp16 scale and minimum);
    None where the weight's shape or range does not fit."""
    out_features, in_features = weight.shape
    if not int4_fits(out_features, in_features):
        return None
    # a copy even of a float32 weight: the steps below work in place
    groups = weight.detach().to(torch.float32, copy=True)
    groups = groups.reshape(out_features, in_features // 32, 32)
    low, high = torch.aminmax(groups, dim=-1)
    if max(-float(low.min()), float(high.max())) > FP16_LIMIT:
        return None
    scale = ((high - low) / 15).to(torch.float16)
    low = low.to(torch.float16)
    # codes against the stored (fp16) scale and minimum, so that they round to them
    divisor = scale.float().clamp_(min=1e-30)[..., None]
    codes = groups.sub_(low.float()[..., None]).div_(divisor).round_().clamp_(0, 15)
    codes = codes.to(torch.uint8)
    nibbles = codes[..., :16] | (codes[..., 16:] << 4)  # [out, groups, 16]
    blocks, pairs = out_features // 4, in_features // 64
    code_bytes = nibbles.reshape(blocks, 4, pairs, 32).transpose(1, 2).reshape(blocks, pairs, 128)

    def per_pair(values: torch.Tensor) -> torch.Tensor:  # [out, groups] → [blocks, pairs, 8]
        return values.reshape(blocks, 4, pairs, 2).transpose(1, 2).reshape(blocks, pairs, 8)

    numbers = torch.cat((per_pair(scale), per_pair(low)), dim=-1).contiguous()
    blob = torch.cat((code_bytes, numbers.view(torch.uint8)), dim=-1).contiguous()
    return NativeInt4(blob, out_features, in_features, kernels)


def unpack_int4(weight: NativeInt4) -> torch.Tensor:
    """The float32 ``[out, in]`` weight the 4-bit layout stands for (checks and reports)."""
    blocks, pairs = weight.out_features // 4, weight.in_features // 64
    code_bytes = weight.blob[..., :128].reshape(blocks, pairs, 4, 2, 16)
    numbers = weight.blob[..., 128:].contiguous().view(torch.float16).float()
    codes = torch.cat((code_bytes & 15, code_bytes >> 4), dim=-1).float()  # [b, p, 4, 2, 32]
    scale = numbers[..., :8].reshape(blocks, pairs, 4, 2, 1)
    low = numbers[..., 8:].reshape(blocks, pairs, 4, 2, 1)
    values = codes * scale + low  # [blocks, pairs, feature, group, 32]
    return values.permute(0, 2, 1, 3, 4).reshape(weight.out_features, weight.in_features)


def block_bf16(weight: torch.Tensor, kernels: Kernels) -> BlockedBf16 | None:
    """A blocked copy of a bf16 weight; None where the shape does not fit."""
    out_features, in_features = weight.shape
    if weight.dtype != torch.bfloat16 or not bf16_fits(out_features, in_features):
        return None
    blocks = weight.detach().reshape(out_features // 4, 4, in_features // 32, 32)
    blocks = blocks.transpose(1, 2).contiguous()
    return BlockedBf16(blocks, out_features, in_features, kernels)


_loaded: dict[Path, Kernels | None] = {}


def load(cache_dir: Path) -> Kernels | None:
    """The kernels, compiled into ``cache_dir``/kernels if not there yet; None (and one log
    line saying why) where they cannot be used here. Memoized per process. They use as many
    threads as torch does (:func:`set_threads` follows ``[model] threads``)."""
    key = Path(cache_dir).resolve()
    if key not in _loaded:
        _loaded[key] = _load(key)
        if _loaded[key] is not None:
            _loaded[key].set_threads(torch.get_num_threads())
    return _loaded[key]


def set_threads(count: int) -> None:
    """Every loaded library splits its matmuls over ``count`` threads from now on."""
    for kernels in _loaded.values():
        if kernels is not None:
            kernels.set_threads(count)


def _load(cache_dir: Path) -> Kernels | None:
    path = native_build.build(cache_dir)
    if path is None:
        return None
    try:
        kernels = Kernels(ctypes.CDLL(str(path)), path)
    except (OSError, AttributeError) as exc:
        log.warning("cannot load %s (%s); using torch's kernels", path, exc)
        return None
    if not _agrees(kernels):
        log.warning("%s computes wrong results on this machine; using torch's kernels", path)
        return None
    return kernels


def _agrees(kernels: Kernels) -> bool:
    """One small product of each kind against torch's (a wrongly built library fails)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 128, generator=generator).to(torch.bfloat16)
    x = torch.randn(3, 128, generator=generator).to(torch.bfloat16)
    packed, blocked = pack_int4(weight, kernels), block_bf16(weight, kernels)
    a, b = torch.randn(4, 128, generator=generator), torch.randn(8, 4, generator=generator)
    term = (x.float() @ a.t()) @ b.t()
    lora = LoraTerm(a, b.t())
    checks = (
        (packed.linear(x), x.float() @ unpack_int4(packed).t()),
        (blocked.linear(x), x.float() @ weight.float().t()),
        (blocked.linear(x, lora), x.float() @ weight.float().t() + term),
    )
    # int4: the rows are rounded to two int8 parts, well inside this; bf16: one rounding
    return all(
        bool((got.float() - want).abs().max() <= 0.03 * want.abs().max() + 1e-2)
        for got, want in checks
    )
