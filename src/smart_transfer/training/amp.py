"""Mixed precision on the CPU: bfloat16 autocast where the processor computes in bfloat16.

CPUs with AVX512-BF16 or AMX-BF16 (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and
later) multiply bfloat16 natively through oneDNN; elsewhere PyTorch emulates it, which is slower
than float32. :func:`cpu_bf16_supported` says which case this machine is, from what the processor
reports and what PyTorch was built with, not from an assumption.
"""

from __future__ import annotations

from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The processor's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_bf16_supported() -> bool:
    """Whether bfloat16 autocast on this CPU runs on native bfloat16 instructions: PyTorch built
    with oneDNN (mkldnn) that reports bfloat16 support, and the processor has AVX512-BF16 or AMX."""
    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        if check is not None and not bool(check()):
            return False
    except RuntimeError:
        return False
    return bool(cpu_flags() & set(BF16_FLAGS))
