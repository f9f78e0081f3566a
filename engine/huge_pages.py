"""Weights read on every decode step, moved onto 2 MiB pages.

A one-row decode step streams every weight from memory once. With ordinary 4 KiB pages
that is one TLB miss per 4 KiB: ~65,000 page walks a step for the default model's 269 MB
of bf16 weights, and they, not the memory bus, set the pace. Measured here (one thread, a
whole one-row step of the default model in-process): a bf16 step on charbot's kernels went
from 16.0 to 11.2 ms once its weights sat on transparent huge pages, a 4-bit step from 7.7
to 6.0 ms; ``engine/bench/kernel_speed.py`` prints the matmuls alone both ways.

Linux gives an anonymous private mapping huge pages when it is ``madvise(MADV_HUGEPAGE)``d
and ``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always`` or ``madvise`` (the
usual default). torch's allocator asks for neither, so :func:`settle` copies the tensors
into one such mapping and points them at it in place (``Tensor.set_``): everything that
holds them keeps working. Elsewhere (another OS, huge pages off) it does nothing.
"""

from __future__ import annotations

import logging
import mmap
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
ALIGN = 64  # each tensor starts on a cache line
SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def available() -> bool:
    """Whether this system gives madvised anonymous memory transparent huge pages."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        setting = SETTING.read_text()
    except OSError:
        return False
    return "[never]" not in setting


def settle(tensors: Iterable[torch.Tensor | None]) -> int:
    """Move each contiguous tensor's data onto one huge-page mapping, in place; the bytes
    moved (0 where huge pages are not available). Tensors sharing storage, views (their
    ``_base`` would keep the old memory) and non-contiguous ones are left where they are."""
    if not available():
        if sys.platform.startswith("linux"):
            log.info(
                "transparent huge pages are off (%s): single replies decode up to ~30%% "
                "slower; to turn them on: echo madvise | sudo tee %s",
                SETTING,
                SETTING,
            )
        return 0
    chosen, seen = [], set()
    for tensor in tensors:
        if tensor is None or not tensor.is_contiguous() or tensor.requires_grad:
            continue
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() != tensor.numel() * tensor.element_size():
            continue  # shared or a view: moving it would split what belongs together
        if tensor._base is not None:
            continue  # a view keeps its base, and so the old memory, alive: nothing gained
        seen.add(key)
        chosen.append(tensor)
    if not chosen:
        return 0
    sizes = [tensor.numel() * tensor.element_size() for tensor in chosen]
    total = sum(-(-size // ALIGN) * ALIGN for size in sizes)
    # Private and anonymous (Python's default for fd -1 is shared memory, which gets no
    # huge pages); whole huge pages from a 2 MiB boundary on, one more to find it (its
    # untouched 4 KiB pages cost no memory).
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    area = mmap.mmap(-1, -(-total // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE, flags=flags)
    area.madvise(mmap.MADV_HUGEPAGE)
    arena = torch.frombuffer(area, dtype=torch.uint8)  # holds ``area`` while it is used
    offset = -arena.data_ptr() % HUGE_PAGE
    for tensor, size in zip(chosen, sizes, strict=True):
        target = arena[offset : offset + size].view(tensor.dtype).view(tensor.shape)
        target.copy_(tensor)
        tensor.set_(target)  # the old storage is freed once nothing else holds it
        offset += -(-size // ALIGN) * ALIGN
    log.debug("%.0f MB of decode weights on huge pages", total / 1e6)
    return total
