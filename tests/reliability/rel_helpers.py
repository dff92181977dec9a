"""Helpers of the reliability suite: small models, files on disk, and a CLI runner.

Every test here feeds one bad input (or fault) and asserts the exact outcome: the error type,
that its message names the thing and the fix, that files already on disk are unchanged byte
for byte, and that no temporary file is left behind.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from smart_transfer.cli import main
from smart_transfer.models.small import SmallVGG


def tiny_model(seed: int = 0, num_classes: int = 3) -> SmallVGG:
    """A SmallVGG for 16x16 inputs, with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = SmallVGG(num_classes=num_classes, widths=(4, 6), batch_norm=True)
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def batches(n: int = 2, size: int = 16, batch: int = 4, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=gen) for _ in range(n)]


def labelled(n: int = 2, size: int = 16, batch: int = 4, k: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, size, size, generator=gen), torch.arange(batch) % k)
        for _ in range(n)
    ]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included) -> sha256 of its bytes."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temp_files(root: Path) -> list[str]:
    """Leftovers of an atomic write (``.NAME.HEX.tmp``) anywhere under ``root``."""
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith(".") and p.name.endswith(".tmp")
    ]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(err: str, *names: str) -> None:
    """stderr is exactly one line starting with 'error: ', naming each of ``names``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])
