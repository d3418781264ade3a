"""Precision choice: is bf16 autocast worth it on a device?

bf16 autocast pays only where the hardware multiplies bf16 natively: CUDA GPUs that support it, and CPUs
with AVX512-BF16 or AMX-BF16. Elsewhere (e.g. plain AVX2 or AVX-512 CPUs) bf16 matmuls are emulated, slower
than float32 and less accurate, so ``amp: auto`` must never pick it there.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["BF16_CPU_FLAGS", "autocast_context", "cpu_flags", "cpu_model_name", "native_bf16", "use_bf16"]

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=4)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags listed in ``cpuinfo`` (empty if it cannot be read, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's ``model name`` in ``cpuinfo`` ("unknown" if unreadable): benchmarks name their machine."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def native_bf16(device: torch.device | str) -> bool:
    """True if ``device`` computes bf16 natively: CUDA with bf16 support, or a CPU whose /proc/cpuinfo flags
    include avx512_bf16 or amx_bf16. Other devices: False."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(f in cpu_flags() for f in BF16_CPU_FLAGS)
    return False


def use_bf16(amp: str, device: torch.device | str) -> bool:
    """Resolve an ``amp`` setting: "bf16" -> True, "off" -> False, "auto" -> ``native_bf16(device)``."""
    if amp not in ("auto", "bf16", "off"):
        raise ValueError(f"amp={amp!r}: expected 'auto', 'bf16' or 'off'")
    return amp == "bf16" or (amp == "auto" and native_bf16(device))


def autocast_context(device: torch.device, amp: str):
    """bf16 autocast for "bf16"; for "auto" only where bf16 is native (``native_bf16``: CUDA with bf16, or
    a CPU with AVX512-BF16 / AMX-BF16; never an emulating CPU); otherwise a no-op context."""
    if not use_bf16(amp, device):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
