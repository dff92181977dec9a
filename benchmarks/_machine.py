"""The processor a benchmark ran on, for its record.

The same commands on the same code give very different ratios on different hosts (a plain
forward that runs 1.8x faster, an original algorithm that runs slower), so every results file
says which CPU produced it: its model as the kernel reports it, its L2/L3 sizes and the vector
units that matter here.
"""

from __future__ import annotations

import platform
from pathlib import Path

# The instruction sets that change which code torch, oneDNN and the fused statistics run.
ISA = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def _caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict[str, str]:
    """Cache sizes of the first CPU by level ("L1d", "L2", ...), as sysfs writes them."""
    out: dict[str, str] = {}
    for index in sorted(root.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        name = f"L{level}" + ({"Data": "d", "Instruction": "i"}.get(kind, ""))
        out[name] = size
    return out


def cpu() -> dict[str, object]:
    """``{"model", "family", "model_number", "caches", "isa"}`` of this machine's CPU."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "model": info.get("model name") or platform.processor() or platform.machine(),
        "family": info.get("cpu family"),
        "model_number": info.get("model"),
        "caches": _caches(),
        "isa": [f for f in ISA if f in flags],
    }


def describe(c: dict[str, object] | None = None) -> str:
    """One line for a results header, e.g. ``Intel(R) Xeon(R) Processor (family 6 model 167;
    L2 2048K, L3 491520K; avx2 avx512f amx_tile)``."""
    c = cpu() if c is None else c
    caches = c.get("caches") or {}
    assert isinstance(caches, dict)
    parts = []
    if c.get("family") is not None:
        parts.append(f"family {c['family']} model {c['model_number']}")
    sizes = ", ".join(f"{k} {caches[k]}" for k in ("L2", "L3") if k in caches)
    if sizes:
        parts.append(sizes)
    isa = c.get("isa") or []
    assert isinstance(isa, list)
    parts.append(" ".join(isa) if isa else "no AVX2")
    return f"{c['model']} ({'; '.join(parts)})"


def header_line(c: dict[str, object] | None) -> str:
    """The results header's CPU line (a Markdown line break at its end); records written
    before the CPU was recorded say so."""
    return f"CPU: {describe(c) if c else 'not recorded'}  "


if __name__ == "__main__":
    print(describe())
