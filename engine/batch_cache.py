"""A left-padded KV cache for a batch whose rows come and go (continuous batching).

All rows share one column index (so one forward call serves them all); a row that joined
with a shorter history has padding columns on the left, masked out. Buffers are
preallocated with headroom and written in place, so a decode step does not copy the whole
cache the way ``torch.cat`` in transformers' DynamicLayer does.

The lean forward only calls :meth:`GrowLayer.update`; transformers' forward needs its own
``Cache`` of ``DynamicLayer`` s, which :attr:`BatchKV.cache` builds on first use — so the
standalone model process (engine/standalone.py) never imports transformers.
"""

from __future__ import annotations

import functools

import torch

HEADROOM = 64  # columns allocated ahead, so most steps write in place


class GrowLayer:
    """One layer's keys/values in a buffer ``[B, H, capacity, D]``; ``length`` columns used."""

    def __init__(self) -> None:
        super().__init__()
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None
        self.length = 0

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        if self.kbuf is None:
            b, h, _, d = key_states.shape
            shape = (b, h, n + HEADROOM, d)
            self.kbuf = key_states.new_empty(shape)
            self.vbuf = value_states.new_empty(shape)
            self.is_initialized = True
            self.dtype, self.device = key_states.dtype, key_states.device
        keys, values, start = self.reserve(n)
        keys[:, :, start : start + n] = key_states
        values[:, :, start : start + n] = value_states
        self.commit(n)
        return self.keys, self.values

    def reserve(self, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The buffers with room for ``n`` more columns, and the first free column: for
        writers that fill them in place (charbot's kernels), then call :meth:`commit`."""
        if self.length + n > self.kbuf.shape[2]:
            self._grow(self.length + n + max(HEADROOM, self.length // 2))
        return self.kbuf, self.vbuf, self.length

    def commit(self, n: int) -> None:
        """``n`` columns after :meth:`reserve`'s were written."""
        self.length += n
        self.keys = self.kbuf[:, :, : self.length]
        self.values = self.vbuf[:, :, : self.length]

    def _grow(self, capacity: int) -> None:
        b, h, _, d = self.kbuf.shape
        for attr in ("kbuf", "vbuf"):
            old = getattr(self, attr)
            new = old.new_empty((b, h, capacity, d))
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, attr, new)

    def get_seq_length(self) -> int:
        return self.length


@functools.cache
def _transformers_layer() -> type:
    """GrowLayer as a transformers cache layer (its methods first, DynamicLayer's for the
    rest), made once on first use."""
    from transformers.cache_utils import DynamicLayer

    return type("TransformersGrowLayer", (GrowLayer, DynamicLayer), {})


class BatchKV:
    """The batch's cache plus, per row, which columns are real and the next position id."""

    def __init__(
        self,
        num_layers: int,
        rows: int,
        device: torch.device | str = "cpu",
        *,
        transformers: bool = True,
    ) -> None:
        """``transformers=False``: layers for the lean forward only (no ``cache``)."""
        layer = _transformers_layer() if transformers else GrowLayer
        self.layers = [layer() for _ in range(num_layers)]
        self._cache = None
        self.valid = torch.zeros((rows, 0), dtype=torch.bool, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)

    @property
    def cache(self):  # -> transformers.Cache
        """The layers as a transformers ``Cache`` (for its model's forward)."""
        if self._cache is None:
            from transformers.cache_utils import Cache

            self._cache = Cache(layers=self.layers)
        return self._cache

    @property
    def rows(self) -> int:
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def prefill_inputs(self, prompts: list[list[int]], pad_id: int):
        """Left-padded ``input_ids``, a 4D boolean mask and ``position_ids`` for a prefill."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        valid = torch.zeros((len(prompts), width), dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            valid[row, width - len(prompt) :] = True
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        mask = causal[None] & valid[:, None, :]
        # Padding queries attend to themselves: a fully masked row would make NaNs in sdpa,
        # and NaN keys/values poison later steps even when masked (NaN * 0 = NaN).
        mask |= torch.eye(width, dtype=torch.bool)[None]
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        self.valid = valid
        self.positions = valid.sum(-1)
        return ids, mask[:, None], positions

    def prefill_inputs_cached(
        self, prompts: list[list[int]], cached: list[torch.Tensor | None], pad_id: int
    ):
        """As :meth:`prefill_inputs`, for prompts whose first tokens' keys and values are
        known: ``cached[row]`` ``[layers, 2, kv_heads, n, head_dim]`` for the first ``n``
        tokens of ``prompts[row]`` (None: none). The layers start with them; the inputs
        are the last ``S`` tokens of every row, ``S`` the most any row has to compute —
        a row with fewer uses only part of its cached tokens (it recomputes the rest),
        so every row is one run of real columns after its left padding, as in a prefill."""
        known = [0 if kv is None else kv.shape[3] for kv in cached]
        width = max(len(p) - n for p, n in zip(prompts, known, strict=True))
        used = [max(0, len(p) - width) for p in prompts]  # cached columns taken per row
        start = max(used)  # the cached part's width
        if start == 0:
            return self.prefill_inputs(prompts, pad_id)
        total = start + width
        rows = len(prompts)
        ids = torch.full((rows, width), pad_id, dtype=torch.long)
        valid = torch.zeros((rows, total), dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            tail = prompt[used[row] :]
            ids[row, width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
            valid[row, total - len(prompt) :] = True
        sample = next(kv for kv in cached if kv is not None)
        _, _, heads, _, dim = sample.shape
        for index, layer in enumerate(self.layers):
            # zeros, not empty: padding columns are masked, but NaN garbage there would
            # still poison attention (NaN * 0 = NaN)
            shape = (rows, heads, total + HEADROOM, dim)
            layer.kbuf = sample.new_zeros(shape)
            layer.vbuf = sample.new_zeros(shape)
            for row, kv in enumerate(cached):
                if used[row]:
                    first = start - used[row]
                    layer.kbuf[row, :, first:start] = kv[index, 0, :, : used[row]]
                    layer.vbuf[row, :, first:start] = kv[index, 1, :, : used[row]]
            layer.is_initialized = True  # transformers' DynamicLayer reads these
            layer.dtype, layer.device = sample.dtype, sample.device
            layer.length = 0
            layer.commit(start)
        # queries: the last ``width`` columns; each sees the real columns up to itself,
        # and padding queries themselves (a fully masked row makes NaNs in sdpa)
        causal = torch.ones((width, total), dtype=torch.bool).tril(diagonal=start)
        mask = causal[None] & valid[:, None, :]
        mask[:, torch.arange(width), torch.arange(start, total)] = True
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
        self.valid = valid
        self.positions = valid.sum(-1)
        return ids, mask[:, None], positions

    def row_kv(self, row: int, start: int, end: int) -> torch.Tensor:
        """A new tensor ``[layers, 2, kv_heads, end - start, head_dim]`` of the keys and
        values of tokens ``start:end`` of ``row`` (counted from its first real column)."""
        first = int(self.valid[row].long().argmax())  # rows are left-padded runs
        a, b = first + start, first + end
        pairs = [torch.stack((lay.kbuf[row, :, a:b], lay.vbuf[row, :, a:b])) for lay in self.layers]
        return torch.stack(pairs)

    def row_tokens(self, row: int) -> int:
        """How many real columns ``row`` has (its tokens with keys and values)."""
        return int(self.valid[row].sum())

    def decode_inputs(self):
        """Append one real column for every row; return the mask and position ids for it."""
        self.valid = torch.cat([self.valid, self.valid.new_ones((self.rows, 1))], dim=1)
        positions = self.positions[:, None].clone()
        self.positions += 1
        return self.valid[:, None, None, :], positions

    def select(self, keep: list[int]) -> None:
        """Keep only ``keep`` rows, and drop leading columns that are now padding everywhere."""
        index = torch.tensor(keep, dtype=torch.long)
        valid = self.valid[index]
        used = valid.any(0).nonzero()
        start = int(used[0]) if len(used) else valid.shape[1]
        self.valid = valid[:, start:]
        self.positions = self.positions[index]
        for layer in self.layers:
            if layer.kbuf is None:
                continue
            layer.kbuf = layer.kbuf[index, :, start:]
            layer.vbuf = layer.vbuf[index, :, start:]
            layer.length -= start

    def merge(self, other: BatchKV) -> None:
        """Append ``other``'s rows; the shorter side is left-padded to the longer."""
        if self.rows == 0:
            self.layers, self._cache = other.layers, other._cache
            self.valid, self.positions = other.valid, other.positions
            return
        length = max(self.length, other.length)
        rows = self.rows + other.rows
        valid = self.valid.new_zeros((rows, length))
        valid[: self.rows, length - self.length :] = self.valid
        valid[self.rows :, length - other.length :] = other.valid
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            _, h, _, d = mine.kbuf.shape
            for attr in ("kbuf", "vbuf"):
                a, b = getattr(mine, attr), getattr(theirs, attr)
                new = a.new_zeros((rows, h, length + HEADROOM, d))
                new[: self.rows, :, length - mine.length : length] = a[:, :, : mine.length]
                new[self.rows :, :, length - theirs.length : length] = b[:, :, : theirs.length]
                setattr(mine, attr, new)
            mine.length = length
        self.valid = valid
        self.positions = torch.cat([self.positions, other.positions])
