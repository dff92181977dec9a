"""S3: the cost of exact freezing per optimizer step.

Times one training step (zero_grad + forward + backward + optimizer.step) of SmallVGG with
BatchNorm on 64x64 inputs, batch 64, on the CPU, for three set-ups:

* ``full``: plain full fine-tuning, no plan;
* ``kernel``: a kernel-level plan freezing half of the output channels of every layer
  (gradient masks + exact restore after each step + BatchNorm statistics kept);
* ``layer``: a layer-level plan freezing the first half of the layers
  (``requires_grad=False``, so their weight gradients are never computed).

and two optimizers (SGD with momentum and weight decay, AdamW). The set-ups are run
interleaved, in a rotating order, with the median over repeats reported, plus the median of
the per-round ratios to ``full`` (robust to a machine that gets faster or slower during the
run). At the end it checks that the frozen coordinates are still bit-identical.

Usage::

    .venv/bin/python benchmarks/bench_train_step.py [--quick] [--repeats N]

Writes ``benchmarks/results/train_step.json`` (every repeat) and ``train_step.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from smart_transfer._atomic import atomic_write_text
from smart_transfer.freeze import FreezePlan, apply_plan, plan_freeze
from smart_transfer.layers import layer_param_map, select_layers
from smart_transfer.measures.similarity import Similarity
from smart_transfer.models.small import SmallVGG

TARGET_KERNEL_RATIO = 1.15
RESULTS = Path(__file__).resolve().parent / "results"

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, weight_decay=5e-4),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01),
}


def _similarity(model: nn.Module, seed: int) -> Similarity:
    """Random channel scores; layer scores decreasing with depth (the first layers most alike)."""
    names = select_layers(model)
    params = layer_param_map(model, names)
    gen = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(next(iter(params[n].values()))[0], generator=gen) for n in names}
    layer_scores = {n: 1.0 - i / len(names) for i, n in enumerate(names)}
    return Similarity(
        measure="random",
        direction="similarity",
        scores=scores,
        raw=dict(scores),
        layer_scores=layer_scores,
        layer_raw=dict(layer_scores),
        params=params,
        source="synthetic",
    )


class Setup:
    """One model + optimizer (+ plan) that can take a timed step."""

    def __init__(self, base: nn.Module, opt_name: str, plan: FreezePlan | None) -> None:
        self.model = copy.deepcopy(base).train()
        self.opt = OPTIMIZERS[opt_name](self.model.parameters())
        self.plan = plan
        self.before = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.handle = apply_plan(self.model, plan, optimizer=self.opt) if plan else None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.model(x), y).backward()
        self.opt.step()
        return time.perf_counter() - t0

    def frozen_exact(self) -> bool:
        if self.plan is None:
            return True
        params = dict(self.model.named_parameters())
        return all(
            torch.equal(params[n].detach()[m], self.before[n][m])
            for n, m in self.plan.masks.items()
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 9 (a smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per set-up")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per set-up first")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64, help="input height and width")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the result files")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    base = SmallVGG(num_classes=10, widths=(32, 64, 128), batch_norm=True)
    sim = _similarity(base, seed=0)
    plans: dict[str, FreezePlan | None] = {
        "full": None,
        "kernel": plan_freeze(sim, quantile=0.5),
        "layer": plan_freeze(sim, quantile=0.5, scope="layer"),
    }
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))

    setups = {
        (opt, variant): Setup(base, opt, plan)
        for opt in OPTIMIZERS
        for variant, plan in plans.items()
    }
    keys = list(setups)
    for key in keys:
        for _ in range(args.warmup):
            setups[key].step(x, y)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    # The kernel plan's own work per step, timed alone in every round: zeroing frozen gradient
    # rows and restoring frozen parameter rows and BatchNorm statistics.
    handle = setups[(next(iter(OPTIMIZERS)), "kernel")].handle
    if handle is None:
        raise RuntimeError("the kernel set-up has no applied plan")
    bookkeeping: list[float] = []
    for r in range(repeats):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]  # rotate: no set-up always first
        for key in order:
            times[key].append(setups[key].step(x, y))
        t0 = time.perf_counter()
        for _ in range(10):
            handle.zero_grads()
            handle.restore()
        bookkeeping.append((time.perf_counter() - t0) / 10)
        print(
            f"round {r + 1}/{repeats}: "
            + ", ".join(f"{o}/{v} {times[(o, v)][-1]:.3f}s" for o, v in keys),
            flush=True,
        )

    results: dict[str, Any] = {}
    rows = []
    for opt in OPTIMIZERS:
        results[opt] = {}
        full = times[(opt, "full")]
        for variant, plan in plans.items():
            t = times[(opt, variant)]
            paired = [a / b for a, b in zip(t, full)]
            entry = {
                "times_s": t,
                "median_s": statistics.median(t),
                "ratio_of_medians": statistics.median(t) / statistics.median(full),
                "median_paired_ratio": statistics.median(paired),
                "frozen_exact": setups[(opt, variant)].frozen_exact(),
            }
            if plan is not None:
                s = plan.summary()
                entry["frozen_fraction"] = s["frozen_fraction"]
                entry["frozen_channels"] = f"{s['frozen_channels']}/{s['channels']}"
            results[opt][variant] = entry
            rows.append((opt, variant, entry))

    hook_overhead = statistics.median(bookkeeping)

    full_median = min(results[o]["full"]["median_s"] for o in OPTIMIZERS)
    kernel_ratios = [results[o]["kernel"]["median_paired_ratio"] for o in OPTIMIZERS]
    record = {
        "benchmark": "S3 train step with a freeze plan",
        "schema_version": 1,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "config": {
            "model": "SmallVGG(widths=(32, 64, 128), batch_norm=True)",
            "input": [args.batch, 3, args.size, args.size],
            "repeats": repeats,
            "warmup": args.warmup,
            "kernel_plan": "quantile=0.5 per layer (half the channels of every layer)",
            "layer_plan": "scope='layer', quantile=0.5 (first half of the layers): "
            + ", ".join(n for n, m in plans["layer"].masks.items() if m.all()),  # type: ignore[union-attr]
        },
        "target_kernel_ratio": TARGET_KERNEL_RATIO,
        "kernel_within_target": all(r <= TARGET_KERNEL_RATIO for r in kernel_ratios),
        "kernel_plan_bookkeeping_s_per_step": hook_overhead,
        "kernel_plan_bookkeeping_repeats_s": bookkeeping,
        "results": results,
    }
    atomic_write_text(args.out / "train_step.json", json.dumps(record, indent=1) + "\n")

    env = (
        f"torch {record['torch']}, Python {record['python']}, {record['cpu_count']} CPUs "
        f"({record['torch_threads']} torch threads), {record['platform']}  "
    )
    setup = (
        f"SmallVGG with BatchNorm, input {tuple(record['config']['input'])}, {repeats} "
        f"interleaved repeats after {args.warmup} warm-up steps; medians."
    )
    header = (
        "| optimizer | set-up | frozen params | median step (s) | ratio of medians "
        "| median paired ratio | frozen exact |"
    )
    md = ["# S3: time per training step with a freeze plan", "", f"`{record['command']}`  "]
    md += [env, setup, "", header, "|---|---|---|---|---|---|---|"]
    for opt, variant, e in rows:
        frozen = f"{100 * e['frozen_fraction']:.1f}%" if "frozen_fraction" in e else "-"
        md.append(
            f"| {opt} | {variant} | {frozen} | {e['median_s']:.3f} | {e['ratio_of_medians']:.3f} "
            f"| {e['median_paired_ratio']:.3f} | {'yes' if e['frozen_exact'] else 'NO'} |"
        )
    verdict = "met" if record["kernel_within_target"] else "NOT met"
    md += [
        "",
        (
            f"Target: kernel plan <= {TARGET_KERNEL_RATIO}x full fine-tuning "
            f"(median paired ratio, both optimizers): {verdict}."
        ),
        (
            "Kernel plan bookkeeping alone (zero frozen gradient rows, restore frozen rows and "
            "BatchNorm statistics; median over rounds of 10 calls each): "
            f"{1e3 * hook_overhead:.3f} ms per step, {100 * hook_overhead / full_median:.2f}% of "
            "the faster full fine-tuning step."
        ),
        f"Layer plan frozen parameters: {record['config']['layer_plan'].split(': ', 1)[1]}.",
        "",
    ]
    atomic_write_text(args.out / "train_step.md", "\n".join(md))
    print("\n".join(md))
    exact = all(e["frozen_exact"] for _, _, e in rows)
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
