"""benchmarks/_machine.py: the CPU line of every results file, read from files laid out as
/proc/cpuinfo and sysfs write them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _machine  # the benchmarks' own module, beside the scripts that import it


def test_cpuinfo_reads_the_first_processor_only(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(
        "processor\t: 0\nmodel name\t: Test CPU A\ncpu family\t: 6\nmodel\t\t: 167\n"
        "flags\t\t: fpu avx2 avx512f amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Other CPU\n"
    )
    info = _machine._cpuinfo(f)
    assert info["model name"] == "Test CPU A" and info["model"] == "167"
    assert "avx512f" in info["flags"].split()
    assert _machine._cpuinfo(tmp_path / "missing") == {}


def test_caches_by_level_and_kind(tmp_path):
    for i, (level, kind, size) in enumerate(
        [
            (1, "Data", "48K"),
            (1, "Instruction", "32K"),
            (2, "Unified", "2048K"),
            (3, "Unified", "491520K"),
        ]
    ):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert _machine._caches(tmp_path) == {
        "L1d": "48K",
        "L1i": "32K",
        "L2": "2048K",
        "L3": "491520K",
    }


def test_describe_and_header_line():
    c = {
        "model": "Test CPU",
        "family": "6",
        "model_number": "167",
        "caches": {"L1d": "48K", "L2": "2048K", "L3": "491520K"},
        "isa": ["avx2", "amx_tile"],
    }
    assert (
        _machine.describe(c) == "Test CPU (family 6 model 167; L2 2048K, L3 491520K; avx2 amx_tile)"
    )
    assert _machine.header_line(c) == "CPU: " + _machine.describe(c) + "  "
    assert _machine.header_line(None) == "CPU: not recorded  "
    bare = {"model": "x86_64", "family": None, "model_number": None, "caches": {}, "isa": []}
    assert _machine.describe(bare) == "x86_64 (no AVX2)"
    live = (
        _machine.cpu()
    )  # this machine: every key present, the ISA list a subset of the known ones
    assert set(live) == {"model", "family", "model_number", "caches", "isa"}
    assert set(live["isa"]) <= set(_machine.ISA)
