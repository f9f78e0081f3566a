"""Fast mixed-lora LoRA for decoding: each peft LoRA Linear gets a forward that uses
all loaded LoRAs' weights stacked into one tensor per layer.

peft's ``adapter_names`` path splits the batch per LoRA in every layer (a dozen small
ops per layer and LoRA, ~2× the base model's step time here). Here a batch on one
LoRA costs two small matmuls per layer, and a mixed batch two batched matmuls with
per-row weights gathered once and reused for as long as the batch's rows stay the same.
The LoRA part runs in float32 (tiny bf16 matmuls cost 3-4× more than fp32 ones on this
CPU); the stacks are kept in the base dtype (half the memory in bf16) and the rows' weights
are converted once per batch composition, not per step.

peft still loads, validates and names the LoRAs; only the forward is replaced. (The
standalone model process has no peft: engine/direct_loras.py reads the LoRA
files itself and hands the weights to :meth:`MultiLora.add_weights`.) Each
LoRA gets a slot in the stacks (slot 0 = no LoRA, all zeros); freed slots are reused
and stacks grow 8 slots at a time. peft's own copies of the weights are released once
stacked, and freed heap memory is handed back to the OS (glibc keeps it otherwise).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import types
from typing import Any

import torch

BASE_SLOT = 0
GROW_SLOTS = 8


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc only; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


class MultiLora:
    """LoRA stacks for every LoRA Linear, and which slot each batch row uses."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype  # of the stacks; the matmuls run in float32
        self.slots: dict[str, int] = {}
        self.free: list[int] = []
        self.capacity = GROW_SLOTS  # slots per stack, slot 0 included
        self.modules: list = []  # patched peft lora.Linear modules
        self.uniform: int | None = BASE_SLOT  # the one slot all rows use, or None if mixed
        self.rows: torch.Tensor | None = None  # per-row slot when mixed
        self.version = 0  # bumps when rows or stacks change: cached gathers are stale
        self._last: list[int] = []

    def set_rows(self, names: list[str]) -> None:
        """Called before each forward with one LoRA name per row."""
        slots = [self.slots.get(name, BASE_SLOT) for name in names]
        if slots == self._last:
            return
        self._last = slots
        self.version += 1
        if all(s == slots[0] for s in slots):
            self.uniform, self.rows = slots[0], None
        else:
            self.uniform, self.rows = None, torch.tensor(slots, dtype=torch.long)

    def add(self, peft_model, name: str) -> None:
        """Stack the freshly loaded peft adapter ``name``."""
        from peft.tuners.lora import Linear as LoraLinear

        weights = []
        for module in peft_model.modules():
            if not isinstance(module, LoraLinear):
                continue
            if not hasattr(module, "_stack_a"):
                self._patch(module)  # every LoRA Linear gets stacks, even without this one
            if name not in module.lora_A:
                continue
            a = module.lora_A[name].weight.data.float()
            b = module.lora_B[name].weight.data.float() * module.scaling[name]
            weights.append((module, a, b))
            # peft's copies are never used for inference again: free them.
            module.lora_A[name].weight.data = torch.empty(0)
            module.lora_B[name].weight.data = torch.empty(0)
        self.add_weights(name, weights)

    def add_weights(self, name: str, weights: list[tuple[Any, torch.Tensor, torch.Tensor]]) -> None:
        """Stack LoRA ``name`` given as (module, A ``[r, in]``, B·scaling ``[out, r]``)."""
        slot = self.free.pop() if self.free else len(self.slots) + 1
        if slot >= self.capacity:
            self.capacity += GROW_SLOTS
            for module in self.modules:
                _resize(module, self.capacity, module._stack_a.shape[1])
        self.slots[name] = slot
        for module, a, b in weights:
            if not hasattr(module, "_stack_a"):
                self._patch(module)
            rank = a.shape[0]
            if rank > module._stack_a.shape[1]:
                _resize(module, self.capacity, rank)
            module._stack_a[slot].zero_()
            module._stack_b[slot].zero_()
            module._stack_a[slot, :rank] = a
            module._stack_b[slot, :, :rank] = b
        self.version += 1
        self._last = []
        trim_heap()

    def remove(self, name: str) -> None:
        """Free ``name``'s slot (after peft deleted the LoRA)."""
        slot = self.slots.pop(name, None)
        if slot is None:
            return
        for module in self.modules:
            module._stack_a[slot].zero_()
            module._stack_b[slot].zero_()
        self.free.append(slot)
        self.version += 1
        self._last = []
        trim_heap()

    def _patch(self, module) -> None:
        base = getattr(module, "base_layer", None)
        if base is not None:  # a peft LoRA Linear: its forward adds the stacked rows' terms
            module.forward = types.MethodType(_forward, module)
        else:  # a plain Linear (engine/standalone.py): only the lean forward adds them
            base = module
        module._stack_a = torch.zeros((self.capacity, 1, base.in_features), dtype=self.dtype)
        module._stack_b = torch.zeros((self.capacity, base.out_features, 1), dtype=self.dtype)
        module._gathered = (-1, None, None)
        module._multi_lora_owner = self
        self.modules.append(module)


def _resize(module, capacity: int, rank: int) -> None:
    old_a, old_b = module._stack_a, module._stack_b
    new_a = old_a.new_zeros((capacity, rank, old_a.shape[2]))
    new_b = old_b.new_zeros((capacity, old_b.shape[1], rank))
    new_a[: old_a.shape[0], : old_a.shape[1]] = old_a
    new_b[: old_b.shape[0], :, : old_b.shape[2]] = old_b
    module._stack_a, module._stack_b = new_a, new_b


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    kwargs.pop("adapter_names", None)
    result = self.base_layer(x, *args, **kwargs)
    lora = lora_delta(self, x)
    if lora is None:
        return result
    return result.add_(lora)  # in place: casts back to the base dtype without a copy


def lora_delta(self, x: torch.Tensor) -> torch.Tensor | None:
    """The batch rows' LoRA term (float32) for patched module ``self``; None if no lora."""
    owner: MultiLora = self._multi_lora_owner
    if owner.uniform == BASE_SLOT:
        return None
    version, a_t, b_t = self._gathered
    if version != owner.version:  # rows changed: gather (and upcast) their weights once
        if owner.uniform is not None:
            a_t = self._stack_a[owner.uniform].float()  # [r, in]
            b_t = self._stack_b[owner.uniform].float()  # [out, r]
        else:
            a_t = self._stack_a[owner.rows].transpose(1, 2).float().contiguous()  # [B, in, r]
            b_t = self._stack_b[owner.rows].transpose(1, 2).float().contiguous()  # [B, r, out]
        self._gathered = (owner.version, a_t, b_t)
    h = x.float()
    if owner.uniform is not None:
        return torch.nn.functional.linear(torch.nn.functional.linear(h, a_t), b_t)
    squeeze = h.dim() == 2
    h = h.unsqueeze(1) if squeeze else h  # [B, T, in]
    lora = torch.bmm(torch.bmm(h, a_t), b_t)
    return lora.squeeze(1) if squeeze else lora
