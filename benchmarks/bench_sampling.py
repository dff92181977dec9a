"""Sampling settings against exact statistics: plan agreement and profiling speed.

For each setting (keyword arguments of ``st.profile``) and seed: EfficientNet-Lite0 (ImageNet
weights) profiles D_pre = 512 Fashion-MNIST training images of classes 5-9 and D_new = 512 of
classes 0-4 at 96 px, and ``quantile=0.5`` kernel plans from those profiles are compared with
plans from exact statistics (every value, every position), per measure: the share of channels
with the same decision over the whole network, the mean of the per-layer shares and the worst
layer. Then, as in S1, each setting's profile of 4 random batches of 64 is timed against a plain
``no_grad`` forward, in an order that rotates from round to round.

Usage::

    .venv/bin/python benchmarks/bench_sampling.py --variant default '{}' \\
        --variant "hist 1024 random" '{"hist_sample_per_batch": 1024}' --seeds 0 1 2

Writes ``benchmarks/results/sampling.json`` (after every setting) and ``sampling.md``, or into
``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import smart_transfer as st
from smart_transfer._atomic import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine

RESULTS = Path(__file__).resolve().parent / "results"
EXACT = {"sample_per_batch": None, "hist_sample_per_batch": None, "cov_sample_per_batch": None}
MEASURES = ("js", "ks", "wasserstein", "lognormal_kl", "gaussian_kl", "gram")


def fashion_batches(
    model: torch.nn.Module, images: int = 512, size: int = 96
) -> list[list[torch.Tensor]]:
    """The evaluation-transformed batches of 64 of D_pre (classes 5-9) and D_new (classes
    0-4), made once and profiled with every setting."""
    ds = st.data.fashion_mnist("train", download=False)
    tf = st.data.transforms_for(model, train=False, size=size)
    out = []
    for first in (5, 0):
        idx = torch.isin(ds.targets, torch.arange(first, first + 5)).nonzero().flatten()[:images]
        out.append([tf(ds.images[c]) for c in idx.split(64)])
    return out


def exact_plans(
    model: torch.nn.Module, data: list[list[torch.Tensor]], measures: list[str]
) -> dict[str, Any]:
    """quantile=0.5 plans from exact statistics (every value, every position), per measure."""
    pre, new = (st.profile(model, d, progress=False, **EXACT) for d in data)
    return {m: st.plan_freeze(st.compare(pre, new, measure=m), quantile=0.5) for m in measures}


def agreement(exact: Any, pre: Any, new: Any, measure: str) -> dict[str, float]:
    """Share of channels whose quantile=0.5 decision is the same as in the exact plan: whole
    network, mean of the layers, worst layer (%)."""
    b = st.plan_freeze(st.compare(pre, new, measure=measure), quantile=0.5)
    same = total = 0
    shares = []
    for params in exact.layers.values():
        ma, mb = exact.masks[params[0]], b.masks[params[0]]
        hits = int((ma == mb).sum())
        same, total = same + hits, total + ma.numel()
        shares.append(hits / ma.numel())
    return {
        "network": 100 * same / total,
        "layer_mean": 100 * statistics.fmean(shares),
        "worst_layer": 100 * min(shares),
    }


def speed(
    model: torch.nn.Module, variants: dict[str, dict[str, Any]], rounds: int
) -> dict[str, Any]:
    """Milliseconds per batch of each profile and of the forward, rotating the order."""
    torch.manual_seed(0)
    batches = [torch.randn(64, 3, 96, 96) for _ in range(4)]
    names = ["forward", *variants]
    secs: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            if name == "forward":
                with torch.no_grad():
                    for x in batches:
                        model(x)
            else:
                st.profile(model, batches, progress=False, **variants[name])
            secs[name].append(time.perf_counter() - t)
    fwd = statistics.median(secs["forward"])
    return {
        n: {
            "ms_per_batch": 1000 * statistics.median(v) / len(batches),
            "ratio": fwd / statistics.median(v),
            "seconds": v,
        }
        for n, v in secs.items()
    }


def _markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Sampling settings against exact statistics",
        "",
        f"Command: `{res['command']}`  ",
        _machine.header_line(res.get("cpu")),
        f"torch {res['torch']}, {res['threads']} threads, {res['date']}.",
        "",
        (
            f"EfficientNet-Lite0 (ImageNet), {res['size']} px, D_pre {res['images']} Fashion-MNIST "
            f"images of classes 5-9, D_new {res['images']} of classes 0-4; quantile=0.5 plans "
            "against plans from exact statistics"
            + ("; timing: 4 random batches of 64 at 96 px" if res.get("speed") else "")
            + ". Per "
            "measure: channels with the same decision over the network (%), mean over seeds; in "
            "brackets the lowest seed's worst layer."
        ),
        "",
        "| setting | " + " | ".join(res["measures"]) + " | ms per batch | S1 ratio |",
        "|---|" + "---|" * (len(res["measures"]) + 2),
    ]
    for name, v in res["variants"].items():
        cells = []
        for m in res["measures"]:
            rows = [s[m] for s in v["agreement"].values()]
            if not rows:
                cells.append("")
                continue
            net = statistics.fmean(r["network"] for r in rows)
            cells.append(f"{net:.2f} ({min(r['worst_layer'] for r in rows):.0f})")
        sp = res.get("speed", {}).get(name)
        tail = f"{sp['ms_per_batch']:.0f} | {sp['ratio']:.3f}" if sp else " | "
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {tail} |")
    fwd = res.get("speed", {}).get("forward")
    if fwd:
        lines += [
            "",
            f"Plain forward: {fwd['ms_per_batch']:.0f} ms per batch (median of the rounds).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--variant",
        nargs=2,
        action="append",
        metavar=("NAME", "JSON"),
        help="a setting: its name and st.profile's keyword arguments as JSON",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=8, help="timing rounds (0: no timing)")
    ap.add_argument("--images", type=int, default=512, help="images in each of D_pre and D_new")
    ap.add_argument("--size", type=int, default=96, help="image size of the plan comparison")
    ap.add_argument("--measures", nargs="+", default=list(MEASURES))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    variants: dict[str, dict[str, Any]] = {}
    for name, text in args.variant or [("default", "{}")]:
        try:
            kw = json.loads(text)
        except json.JSONDecodeError as e:
            ap.error(
                f"--variant {name!r}: the settings are not valid JSON ({e}); "
                "write them as an object, e.g. '{\"hist_sample_per_batch\": 1024}'"
            )
        if not isinstance(kw, dict):
            ap.error(f"--variant {name!r}: the settings must be a JSON object, got {kw!r}")
        variants[name] = kw
    model = st.load_backbone("efficientnet_lite0").eval()
    res: dict[str, Any] = {
        "command": "python benchmarks/bench_sampling.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _machine.cpu(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_start": list(os.getloadavg()),
        "measures": args.measures,
        "images": args.images,
        "size": args.size,
        "variants": {n: {"settings": kw, "agreement": {}} for n, kw in variants.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def record() -> None:
        atomic_write_text(args.out / "sampling.json", json.dumps(res, indent=2) + "\n")
        atomic_write_text(args.out / "sampling.md", _markdown(res))

    data = fashion_batches(model, args.images, args.size)
    exact = exact_plans(model, data, args.measures)
    for name, kw in variants.items():
        for seed in args.seeds:
            pre, new = (st.profile(model, d, progress=False, **dict(kw, seed=seed)) for d in data)
            rows = {m: agreement(exact[m], pre, new, m) for m in args.measures}
            res["variants"][name]["agreement"][str(seed)] = rows
            print(
                name, "seed", seed, {m: round(v["network"], 2) for m, v in rows.items()}, flush=True
            )
            record()
    if args.rounds:
        res["speed"] = speed(model, variants, args.rounds)
    res["loadavg_end"] = list(os.getloadavg())
    record()
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
