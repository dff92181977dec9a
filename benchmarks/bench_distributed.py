"""S4: profiling under torch.distributed (2 gloo processes on the CPU) against one process.

The same images are profiled three ways, each timed from the first batch to the finished
(all-reduced) profile:

* one process, one torch thread, every image;
* one process, ``--threads`` torch threads (default 2: the machine's cores), every image;
* ``--world`` processes (default 2) under ``torch.distributed`` with the gloo backend, one
  thread each, each profiling its shard (every ``world``-th batch); ``st.profile`` merges the
  shards, so every rank ends with the global profile.

The exact statistics (count, mean, variance, min/max, zero fraction) of the distributed profile
are checked against the one-process profile. SmallVGG with BatchNorm, random weights, random
images made per batch.

Usage::

    .venv/bin/python benchmarks/bench_distributed.py [--images 1024] [--size 64] [--repeats 3]

Writes ``benchmarks/results/distributed.json`` and ``distributed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import smart_transfer as st
from smart_transfer._atomic import atomic_write_text
from smart_transfer.models.small import SmallVGG
from smart_transfer.training.distributed import launched_group

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine

HERE = Path(__file__).resolve().parent


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return SmallVGG(batch_norm=True).eval()


def _batches(images: int, batch: int, size: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [
        torch.randn(min(batch, images - i), 3, size, size, generator=gen)
        for i in range(0, images, batch)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, images: int, batch: int, size: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    with launched_group("cpu"):  # a gloo group; every rank waits for the others before it ends
        model = _model()
        shard = _batches(images, batch, size)[rank::world]
        st.profile(model, shard[:1], progress=False, distributed=False)  # warm-up
        dist.barrier()
        t = time.perf_counter()
        prof = st.profile(model, shard, progress=False)
        seconds = time.perf_counter() - t
        if rank == 0:
            prof.save(Path(out) / "dist.pt")
            (Path(out) / "dist.json").write_text(json.dumps({"seconds": seconds}))


def one_process(images: int, batch: int, size: int, threads: int) -> tuple[float, Any]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = _model()
        batches = _batches(images, batch, size)
        st.profile(model, batches[:1], progress=False)  # warm-up
        t = time.perf_counter()
        prof = st.profile(model, batches, progress=False)
        return time.perf_counter() - t, prof
    finally:
        torch.set_num_threads(before)


def distributed(images: int, batch: int, size: int, world: int) -> tuple[float, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            _worker, args=(world, _free_port(), images, batch, size, tmp), nprocs=world, join=True
        )
        seconds = json.loads((Path(tmp) / "dist.json").read_text())["seconds"]
        return seconds, st.ActivationProfile.load(Path(tmp) / "dist.pt")


def max_difference(a: Any, b: Any) -> float:
    """Largest relative difference of the exact statistics of two profiles of the same layers."""
    worst = 0.0
    for name in a.layers:
        for field in ("count", "mean", "var", "min", "max", "zero_frac"):
            x, y = getattr(a.layers[name], field), getattr(b.layers[name], field)
            if x is None or y is None:
                continue
            x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
            worst = max(worst, float(((x - y).abs() / y.abs().clamp_min(1e-12)).max()))
    return worst


def _markdown(res: dict[str, Any]) -> str:
    lines = [
        "# S4: profiling under torch.distributed",
        "",
        f"Command: `{res['command']}`  ",
        _machine.header_line(res.get("cpu")),
        (
            f"torch {res['torch']}, {res['cpus']} CPUs, {res['date']}; load average (1 min) "
            f"{res['load_start']:.2f} at start, {res['load_end']:.2f} at end."
        ),
        "",
        (
            f"SmallVGG with BatchNorm, {res['images']} images of {res['size']} px, batch "
            f"{res['batch']}, default statistics. Seconds from the first batch to the finished "
            "profile (all-reduced under torch.distributed), median of the repeats."
        ),
        "",
        "| setting | seconds | images/s | throughput vs 1 process, 1 thread |",
        "|---|---|---|---|",
    ]
    for row in res["rows"]:
        lines.append(
            f"| {row['setting']} | {row['seconds']:.2f} | {row['images_per_s']:.1f} | "
            f"{row['speedup']:.2f}x |"
        )
    lines += [
        "",
        (
            "Exact statistics (count, mean, variance, min/max, zero fraction) of the distributed "
            "profile against the one-process profile: largest relative difference "
            f"{res['max_relative_difference']:.1e}."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    res: dict[str, Any] = {
        "command": "python benchmarks/bench_distributed.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "cpu": _machine.cpu(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_start": os.getloadavg()[0],
        "images": args.images,
        "batch": args.batch,
        "size": args.size,
        "repeats": [],
    }
    settings = {
        "1 process, 1 thread": lambda: one_process(args.images, args.batch, args.size, 1),
        f"1 process, {args.threads} threads": lambda: one_process(
            args.images, args.batch, args.size, args.threads
        ),
        f"{args.world} gloo processes, 1 thread each": lambda: distributed(
            args.images, args.batch, args.size, args.world
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in settings}
    profiles: dict[str, Any] = {}
    for r in range(args.repeats):
        for name in settings if r % 2 == 0 else reversed(list(settings)):
            seconds, prof = settings[name]()
            times[name].append(seconds)
            profiles[name] = prof
            res["repeats"].append(
                {
                    "setting": name,
                    "repeat": r,
                    "seconds": seconds,
                    "loadavg_1min": os.getloadavg()[0],
                }
            )
            print(f"  {name}: {seconds:.2f} s", flush=True)
    base = statistics.median(times["1 process, 1 thread"])
    res["rows"] = [
        {
            "setting": k,
            "seconds": statistics.median(v),
            "images_per_s": args.images / statistics.median(v),
            "speedup": base / statistics.median(v),
        }
        for k, v in times.items()
    ]
    names = list(settings)
    res["max_relative_difference"] = max_difference(profiles[names[2]], profiles[names[0]])
    res["load_end"] = os.getloadavg()[0]
    out = Path(args.results)
    atomic_write_text(out / "distributed.json", json.dumps(res, indent=1) + "\n")
    atomic_write_text(out / "distributed.md", _markdown(res))
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
