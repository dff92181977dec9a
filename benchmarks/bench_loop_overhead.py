"""The training loop's cost per optimizer step against a bare PyTorch loop.

The same model, batches, optimizer (AdamW with the recipe's parameter groups), cosine schedule
and channels-last input; the bare loop is ``zero_grad; loss = CE(model(x), y); backward; step;
scheduler.step()`` over a list of ready batches. The loop is :func:`smart_transfer.training.fit`
with a budget of ``--steps`` steps and one validation at the end on a two-image split (plus
the initial one), so what it adds per step is its batch checks, its BatchNorm-buffer safeguard,
the loss check, the on-device sums and the bookkeeping. Both run interleaved, in alternating
order, ``--repeats`` times; the table gives the median time per step of each and the median
of the paired ratios (robust to a machine whose speed drifts, as a shared one does).

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_loop_overhead.py [--quick]

Writes ``benchmarks/results/loop_overhead.json`` (every repeat, the CPU named) and ``.md``.
(``bench_train_step.py`` is S3, the cost of a freeze plan per step.)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
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
from smart_transfer.training import channels_last_batch, cosine_with_warmup, fit

RESULTS = Path(__file__).resolve().parent / "results"


TARGET = 1.05
SETTINGS = {  # name: (backbone, input size, batch)
    "efficientnet_lite0_96px": ("efficientnet_lite0", 96, 32),
    "small_vgg_32px": ("small_vgg", 32, 64),
}


def _batches(
    size: int, batch: int, n: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 3, size, size, generator=g),
            torch.randint(0, 10, (batch,), generator=g),
        )
        for _ in range(n)
    ]


def _optimizer(model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    recipe = Recipe(lr=3e-4)
    opt = make_optimizer(param_groups(model, recipe), recipe)
    return opt, cosine_with_warmup(opt, 10_000, 100)


def bare(model: nn.Module, batches: list) -> float:
    """Seconds per step of the plain loop."""
    opt, sched = _optimizer(model)
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    t0 = _clock()
    for x, y in batches:
        x = channels_last_batch(x)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
    return _since(t0, len(batches))


def loop(model: nn.Module, batches: list, val: list) -> float:
    """Seconds per step of :func:`fit` (its two validations on two images included)."""
    opt, _ = _optimizer(model)
    t0 = _clock()
    fit(
        model,
        opt,
        batches,
        val,
        steps=len(batches),
        eval_every=len(batches),
        scheduler="cosine",
        progress=False,
        channels_last=True,
    )
    return _since(t0, len(batches))


def measure(name: str, steps: int, repeats: int) -> dict[str, Any]:
    backbone, size, batch = SETTINGS[name]
    torch.manual_seed(0)
    base = st.replace_head(st.load_backbone(backbone, pretrained=False), 10)
    base = base.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    batches = _batches(size, batch, 2 * steps)
    val = [(batches[0][0][:2], batches[0][1][:2])]
    bare(copy.deepcopy(base), batches[:2])  # warm-up: oneDNN picks its kernels
    loop(copy.deepcopy(base), batches[:2], val)
    rows = []
    for r in range(repeats):
        kinds = ["bare", "loop", "loop2"]
        order = kinds if r % 2 == 0 else kinds[::-1]
        got = {}
        for kind in order:
            m = copy.deepcopy(base)
            got[kind] = (
                bare(m, batches[:steps])
                if kind == "bare"
                else loop(m, batches[:steps], val)
                if kind == "loop"
                else loop(m, batches, val)
            )
        # fit's fixed costs (the initial and last validation, the kept state's copies) cancel
        # in the difference of a 2n-step and an n-step run: what one more step costs
        marginal = (2 * steps * got["loop2"] - steps * got["loop"]) / steps
        rows.append(
            {
                "repeat": r,
                "bare_s": got["bare"],
                "loop_s": got["loop"],
                "loop_marginal_s": marginal,
                "ratio": got["loop"] / got["bare"],
                "marginal_ratio": marginal / got["bare"],
            }
        )
        print(
            f"  {name} repeat {r}: bare {got['bare']:.4f} s/step, fit {got['loop']:.4f} s/step "
            f"(ratio {got['loop'] / got['bare']:.3f}), one more step of fit {marginal:.4f} s "
            f"(ratio {marginal / got['bare']:.3f})",
            flush=True,
        )
    return {
        "setting": name,
        "backbone": backbone,
        "size": size,
        "batch": batch,
        "steps": steps,
        "repeats": rows,
        "median_bare_s": statistics.median(r["bare_s"] for r in rows),
        "median_loop_s": statistics.median(r["loop_s"] for r in rows),
        "median_loop_marginal_s": statistics.median(r["loop_marginal_s"] for r in rows),
        "median_paired_ratio": statistics.median(r["ratio"] for r in rows),
        "median_marginal_ratio": statistics.median(r["marginal_ratio"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="n: fit runs n and 2n steps (default 8)")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--quick", action="store_true", help="n = 3, 2 repeats")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: CPU time is then the work)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.repeats = 3, 2
    results = [measure(name, args.steps, args.repeats) for name in SETTINGS]
    record = {
        "benchmark": "loop overhead: smart_transfer.training.fit against a bare PyTorch loop",
        "command": "python benchmarks/bench_loop_overhead.py" + (" --quick" if args.quick else ""),
        "cpu": cpu(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "target_ratio": TARGET,
        "results": results,
        "timing": "CPU time of this process (time.process_time), one torch thread unless --threads",
        "wall_seconds_per_step": WALL,
        "load_average_at_end": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "loop_overhead.json", json.dumps(record, indent=1) + "\n")
    md = [
        "# Training loop against a bare PyTorch loop",
        "",
        f"`{record['command']}`  ",
        (
            f"{record['cpu']['model']}, {record['threads']} torch thread(s), torch "
            f"{record['torch']}; CPU seconds of this process (a shared machine: wall times in the "
            f"JSON); {args.steps} steps per timed run, {args.repeats} interleaved repeats, medians."
        ),
        "",
        "| setting | batch | bare loop (CPU s/step) | fit, n steps (CPU s/step) | ratio | fit, one "
        "more step (CPU s) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        md.append(
            f"| {r['setting']} | {r['batch']} | {r['median_bare_s']:.4f} | "
            f"{r['median_loop_s']:.4f} | {r['median_paired_ratio']:.3f} | "
            f"{r['median_loop_marginal_s']:.4f} | {r['median_marginal_ratio']:.3f} |"
        )
    met = all(r["median_marginal_ratio"] <= TARGET for r in results)
    md += [
        "",
        "Ratios are medians of the per-repeat ratios. 'n steps': fit with its fixed costs (an "
        "initial and a last validation on two images, copies of the kept state) over n = "
        f"{args.steps} steps; 'one more step': the difference of a {2 * args.steps}-step and an "
        f"{args.steps}-step fit, per step. "
        f"Target: one more step <= {TARGET} x the bare step: " + ("met." if met else "not met."),
    ]
    atomic_write_text(args.out / "loop_overhead.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
