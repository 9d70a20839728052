"""The one table of dtype names: command-line flags, configs and DeepSpeed's section names;
and the CPU's default inference dtype (bf16 only where it is faster here)."""

from __future__ import annotations

import functools
import os
import time

import torch

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``, ``"bfloat16"``, ``"fp16"``, ``"float16"``, ``"fp32"``, ``"float32"`` or a dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[key]


# -- the CPU default: bf16 only where this machine runs it faster than fp32 --------------------

CPU_DTYPE_ENV = "SEGLLM_CPU_DTYPE"  # "bf16" / "fp32": skip the detection (reproducible runs)


def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bf16 arithmetic (x86 AVX512-BF16 / AMX-BF16, Arm BF16).

    Without it oneDNN emulates bf16 through fp32, which is no faster. When the CPU's flags
    cannot be read (no ``/proc/cpuinfo``), the timing in :func:`cpu_bf16_is_faster` decides.
    """
    try:
        with open("/proc/cpuinfo") as info:
            flags = set(info.read().split())
    except OSError:
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _best_matmul_seconds(dtype: torch.dtype, size: int, repeats: int) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up: oneDNN picks and caches its kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_faster(size: int = 512, repeats: int = 3, margin: float = 1.1) -> bool:
    """Whether bf16 matmuls beat fp32 ones by ``margin`` on this CPU (timed once, about 50 ms)."""
    if not cpu_has_native_bf16():
        return False
    fp32 = _best_matmul_seconds(torch.float32, size, repeats)
    bf16 = _best_matmul_seconds(torch.bfloat16, size, repeats)
    return bf16 * margin < fp32


def default_cpu_dtype() -> torch.dtype:
    """bf16 where this CPU runs it faster (:func:`cpu_bf16_is_faster`), else fp32;
    ``SEGLLM_CPU_DTYPE=bf16|fp32`` overrides the detection."""
    forced = os.environ.get(CPU_DTYPE_ENV)
    if forced:
        try:
            dtype = parse_dtype(forced)
        except ValueError as err:
            raise ValueError(f"{CPU_DTYPE_ENV}: {err}") from None
        if dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"{CPU_DTYPE_ENV} must be bf16 or fp32, got {forced!r}")
        return dtype
    return torch.bfloat16 if cpu_bf16_is_faster() else torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu"
                  ) -> torch.dtype | None:
    """:func:`parse_dtype`, plus ``"auto"``: :func:`default_cpu_dtype` on the CPU, and on other
    devices None (the saved weights' dtype)."""
    if isinstance(dtype, str) and dtype.lower() == "auto":
        return default_cpu_dtype() if torch.device(device).type == "cpu" else None
    return parse_dtype(dtype)
