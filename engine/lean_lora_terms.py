"""The rows' LoRA terms on the lean forward's projections (engine/lean_llama.py).

LoRAs stacked by :mod:`engine.multi_lora` are applied to each projection's slice of the
fused output: on charbot's kernels as a term added inside the matmul call
(:func:`lora_term`), else as a separate product added after it (:func:`add_deltas`,
:func:`project`).
"""

from __future__ import annotations

import torch

from engine import native
from engine.lean_weights import base_linear, project_base
from engine.multi_lora import BASE_SLOT, lora_delta


def lora_term(holder, owner, names, slices, multi):
    """The rows' LoRA terms on the projections ``names`` of ``owner`` (fused as ``slices``)
    for charbot's kernels: a :class:`~engine.native.LoraTerm` when all rows use one
    LoRA, else :class:`~engine.native.RowTerms`; None when no row's LoRA touches
    them. Cached on ``holder`` until rows or LoRAs change."""
    cached = getattr(holder, "_lean_term", None)
    if cached is not None and cached[0] == multi.version:
        return cached[1]
    if multi.uniform is not None:
        term = slot_term(owner, names, slices, multi.uniform)
    else:
        terms = [
            None if slot == BASE_SLOT else slot_term(owner, names, slices, slot)
            for slot in multi.rows.tolist()
        ]
        term = native.RowTerms(terms) if any(terms) else None
    holder._lean_term = (multi.version, term)
    return term


def slot_term(owner, names, slices, slot: int) -> native.LoraTerm | None:
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


def single_term(owner, name: str, multi):
    """:func:`lora_term` for a projection of its own (o_proj, down_proj)."""
    module = getattr(owner, name)
    width = base_linear(module).out_features
    return lora_term(module, owner, (name,), [(0, width)], multi)


def patched_delta(module: torch.nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor | None:
    """The LoRA term of a projection that multi_lora patched; None for a plain Linear."""
    if not hasattr(module, "_multi_lora_owner"):
        return None
    # Per-row LoRAs need the rows apart from the positions: [B, T, in].
    delta = lora_delta(module, x.view(batch, -1, x.shape[-1]))
    return delta.view(x.shape[0], -1)


def add_deltas(
    fused: torch.Tensor,
    owner: torch.nn.Module,
    names: tuple[str, ...],
    slices: list[tuple[int, int]],
    x: torch.Tensor,
    batch: int,
) -> None:
    """Add each LoRA-patched projection's term to its slice of a fused matmul's output."""
    for name, (start, stop) in zip(names, slices, strict=True):
        delta = patched_delta(getattr(owner, name), x, batch)
        if delta is not None:
            fused[:, start:stop].add_(delta)


def project(module: torch.nn.Module, x: torch.Tensor, batch: int, mode: str | None):
    """A maybe LoRA-patched projection of ``x``: the base part, plus the rows' LoRA terms."""
    out = project_base(module, x, mode)
    delta = patched_delta(module, x, batch)
    return out if delta is None else out.add_(delta)  # in place: back to the base dtype
