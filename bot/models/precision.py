"""Choosing the compute dtype: bf16 where this CPU runs it natively and it is measurably
faster, float32 otherwise."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from bot.errors import ModelError

DTYPES = ("auto", "float32", "bfloat16")


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


@functools.cache
def bf16_is_faster() -> bool:
    """Time a decode-shaped matmul (a few rows against a weight matrix) in both dtypes.

    Emulated bf16 (no native instructions) is slower than float32, and a flag in cpuinfo
    does not prove the kernels use it, so measure (~0.1 s, once per process).
    """
    import torch

    def best(dtype: torch.dtype) -> float:
        x = torch.randn(4, 1024, dtype=dtype)
        w = torch.randn(4096, 1024, dtype=dtype)
        times = []
        for _ in range(12):
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            times.append(time.perf_counter() - start)
        return min(times[2:])

    return best(torch.bfloat16) < 0.8 * best(torch.float32)


def pick_dtype(setting: str):  # -> torch.dtype
    """``[model] dtype`` → a torch dtype ("auto": bf16 when native and faster)."""
    import torch

    if setting == "float32":
        return torch.float32
    if setting == "bfloat16":
        return torch.bfloat16
    if setting == "auto":
        return torch.bfloat16 if cpu_has_native_bf16() and bf16_is_faster() else torch.float32
    raise ModelError(f"[model] dtype = {setting!r} is not one of {', '.join(DTYPES)}")
