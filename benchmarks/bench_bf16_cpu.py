"""bfloat16 autocast on the CPU: speed and accuracy against float32 on this machine.

Speed: the time of one training step (AdamW, channels-last, the recipe's parameter groups) and
of one evaluation forward, float32 against ``torch.autocast("cpu", torch.bfloat16)``, for
EfficientNet-Lite0 at 96 px (batch 32) and SmallVGG at 32 px (batch 64); interleaved repeats,
medians and the median of the paired ratios.

Accuracy: (1) the ImageNet-pretrained Lite0's logits on Fashion-MNIST test images at 96 px, float32
against bfloat16 (top-1 agreement, largest difference); (2) P1's setting shrunk (20 images per
class, seed 0, full fine-tuning for ``--p1-steps`` steps at lr 3e-4) trained both ways and tested on
the fixed 2,000-image test subset.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_bf16_cpu.py [--quick] [--p1-steps N]

Writes ``benchmarks/results/bf16_cpu.json`` and ``bf16_cpu.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cputime import WALL, clock as _clock, since as _since
from _machine import cpu

import smart_transfer as st
from smart_transfer._atomic import atomic_write_text
from smart_transfer.strategies.base import Recipe
from smart_transfer.strategies.optim import make_optimizer, param_groups
from smart_transfer.training import cpu_bf16_supported
from smart_transfer.training.loop import _autocast

RESULTS = Path(__file__).resolve().parent / "results"


SETTINGS = {
    "efficientnet_lite0_96px": ("efficientnet_lite0", 96, 32),
    "small_vgg_32px": ("small_vgg", 32, 64),
}
CPU = torch.device("cpu")


def _train_steps(model: nn.Module, batches: list, amp: str | None) -> float:
    recipe = Recipe(lr=3e-4)
    opt = make_optimizer(param_groups(model, recipe), recipe)
    model.train()
    t0 = _clock()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        with _autocast(CPU, amp):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
    return _since(t0, len(batches))


@torch.no_grad()
def _forward(model: nn.Module, batches: list, amp: str | None) -> float:
    model.eval()
    t0 = _clock()
    for x, _ in batches:
        with _autocast(CPU, amp):
            model(x)
    return _since(t0, len(batches))


def speed(name: str, steps: int, repeats: int) -> dict[str, Any]:
    backbone, size, batch = SETTINGS[name]
    torch.manual_seed(0)
    base = st.replace_head(st.load_backbone(backbone, pretrained=False), 10).to(
        memory_format=torch.channels_last
    )
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(batch, 3, size, size, generator=g).contiguous(
                memory_format=torch.channels_last
            ),
            torch.randint(0, 10, (batch,), generator=g),
        )
        for _ in range(steps)
    ]
    for amp in (None, "bf16"):  # warm-up: oneDNN builds its kernels for both
        _train_steps(copy.deepcopy(base), batches[:1], amp)
        _forward(base, batches[:1], amp)
    rows = []
    for r in range(repeats):
        got: dict[str, float] = {}
        for amp in (None, "bf16") if r % 2 == 0 else ("bf16", None):
            key = amp or "fp32"
            got[f"train_{key}"] = _train_steps(copy.deepcopy(base), batches, amp)
            got[f"forward_{key}"] = _forward(base, batches, amp)
        got["train_ratio"] = got["train_bf16"] / got["train_fp32"]
        got["forward_ratio"] = got["forward_bf16"] / got["forward_fp32"]
        rows.append(got)
        print(
            f"  {name} {r}: train fp32 {got['train_fp32']:.3f} bf16 {got['train_bf16']:.3f} "
            f"s/step; forward ratio {got['forward_ratio']:.3f}",
            flush=True,
        )
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    return {
        "setting": name,
        "batch": batch,
        "size": size,
        "steps": steps,
        "repeats": rows,
        "median": med,
    }


@torch.no_grad()
def logits_agreement(images: int) -> dict[str, Any]:
    model = st.load_backbone("efficientnet_lite0").eval()
    test = st.data.fashion_mnist("test")
    tf = st.data.transforms_for(model, train=False, size=96)
    x = tf(test.images[:images])
    ref = torch.cat([model(x[i : i + 64]) for i in range(0, len(x), 64)])
    with _autocast(CPU, "bf16"):
        low = torch.cat([model(x[i : i + 64]).float() for i in range(0, len(x), 64)])
    diff = (low - ref).abs()
    return {
        "images": images,
        "top1_agreement": float((low.argmax(1) == ref.argmax(1)).double().mean()),
        "max_abs_diff": float(diff.max()),
        "max_abs_logit": float(ref.abs().max()),
        "mean_abs_diff": float(diff.mean()),
    }


def p1_runs(steps: int, out: Path) -> list[dict[str, Any]]:
    train_ds, test_ds = st.data.fashion_mnist("train"), st.data.fashion_mnist("test")
    tr, va = st.data.few_shot(train_ds, per_class=20, val_fraction=0.2, seed=0)
    te = torch.randperm(len(test_ds), generator=torch.Generator().manual_seed(12345))[:2000]
    backbone = st.load_backbone("efficientnet_lite0")
    rows = []
    for amp in (None, "bf16"):
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        r = st.train(
            backbone,
            (train_ds, tr),
            (train_ds, va),
            strategy="full-finetune",
            steps=steps,
            lr=3e-4,
            size=96,
            seed=0,
            amp=amp,
            progress=False,
            out=out / f"p1-{amp or 'fp32'}",
        )
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        m = st.evaluate(r, (test_ds, te), overwrite=True)
        rows.append(
            {
                "amp": amp or "fp32",
                "steps": steps,
                "val_accuracy": r.val_accuracy,
                "test_accuracy": m["accuracy"],
                "test_images": m["test_images"],
                "train_seconds": seconds,
                "train_cpu_seconds": cpu_seconds,
            }
        )
        print(
            f"  P1 {amp or 'fp32'}: val {r.val_accuracy:.3f} test {m['accuracy']:.4f} "
            f"{seconds:.0f} s",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--images", type=int, default=512)
    p.add_argument(
        "--p1-steps", type=int, default=100, help="P1 fine-tuning steps per run (0: skip)"
    )
    p.add_argument(
        "--quick", action="store_true", help="2 steps, 2 repeats, 128 images, no P1 runs"
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--runs",
        type=Path,
        default=Path(tempfile.gettempdir()) / "smart-transfer-bench-bf16",
        help="where P1's run folders go (default: a temporary folder)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: CPU time is then the work)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.repeats, args.images, args.p1_steps = 2, 2, 128, 0
    record: dict[str, Any] = {
        "benchmark": "bfloat16 autocast on the CPU against float32",
        "command": "python benchmarks/bench_bf16_cpu.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu(),
        "cpu_bf16_supported": cpu_bf16_supported(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
    }
    record["speed"] = [speed(name, args.steps, args.repeats) for name in SETTINGS]
    record["logits"] = logits_agreement(args.images)
    print(f"  logits: {record['logits']}", flush=True)
    record["p1"] = p1_runs(args.p1_steps, args.runs) if args.p1_steps else []
    record["load_average_at_end"] = os.getloadavg()
    record["wall_seconds_per_item"] = WALL
    record["timing"] = (
        "CPU time of this process (time.process_time), one torch thread unless --threads"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "bf16_cpu.json", json.dumps(record, indent=1) + "\n")
    md = [
        "# bfloat16 autocast on the CPU",
        "",
        f"`{record['command'].strip()}`  ",
        (
            f"{record['cpu']['model']} (flags: {', '.join(record['cpu']['isa'])}), native bf16 "
            f"detected: {record['cpu_bf16_supported']}; {record['threads']} torch thread(s), torch "
            f"{record['torch']}; load average {record['load_average_at_start'][0]:.1f} at the "
            "start (a shared machine: times are CPU seconds of this process, wall times in the "
            "JSON)."
        ),
        "",
        "| setting | batch | train fp32 (CPU s/step) | train bf16 (CPU s/step) | paired ratio | "
        "forward paired ratio |",
        "|---|---|---|---|---|---|",
    ]
    for s in record["speed"]:
        m = s["median"]
        md.append(
            f"| {s['setting']} | {s['batch']} | {m['train_fp32']:.3f} | {m['train_bf16']:.3f} | "
            f"{m['train_ratio']:.3f} | {m['forward_ratio']:.3f} |"
        )
    lg = record["logits"]
    md += [
        "",
        (
            f"Pretrained Lite0 logits on {lg['images']} Fashion-MNIST test images at 96 px: top-1 "
            f"agreement {lg['top1_agreement']:.4f}, largest difference {lg['max_abs_diff']:.3f} "
            f"(largest logit {lg['max_abs_logit']:.1f}), mean difference {lg['mean_abs_diff']:.4f}."
        ),
    ]
    if record["p1"]:
        md += [
            "",
            "| P1 (seed 0, full-finetune, lr 3e-4) | steps | val | test (2,000) | train CPU s |",
            "|---|---|---|---|---|",
        ]
        md += [
            f"| {r['amp']} | {r['steps']} | {r['val_accuracy']:.3f} | {r['test_accuracy']:.4f} | "
            f"{r['train_cpu_seconds']:.0f} |"
            for r in record["p1"]
        ]
    atomic_write_text(args.out / "bf16_cpu.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
