"""S1 / S2: the speed and memory of ``smart_transfer.profile``.

S1 (throughput): images/s of ``st.profile(model, batches)`` with the default statistics
(mean/var, min/max, zero fraction, log moments, histogram, channel covariance) over images/s of
a plain ``torch.no_grad()`` forward of the same model on the same batches. SmallVGG with
BatchNorm, 64x64 inputs, batch 64, on the CPU; EfficientNet-Lite0 at 96x96 too when
``smart_transfer.models`` provides it. The two are run interleaved, in alternating order, and
the median of the per-round ratios is reported (robust to a machine that gets faster or
slower during the run). Target: ratio >= 0.8.

S2 (memory): peak resident memory (``ru_maxrss``) of a fresh process that profiles 4,096
images, over that of one that profiles 256 (same model, batch size; random images made per
batch so the data set itself takes no memory). Streaming statistics should make it ~1.

Usage::

    .venv/bin/python benchmarks/bench_profile.py [--quick] [--repeats N] [--no-s2]

Writes ``benchmarks/results/profile.json`` (after every repeat) and ``profile.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import smart_transfer as st
from smart_transfer._atomic import atomic_write_text
from smart_transfer.models.small import SmallVGG
from smart_transfer.stats import StatsConfig, native

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine

TARGET_S1 = 0.8
RESULTS = Path(__file__).resolve().parent / "results"


def _models(size_vgg: int, quick: bool) -> dict[str, tuple[Callable[[], nn.Module], int, int]]:
    """name -> (factory, image size, batches). Models whose package is missing are skipped."""
    out: dict[str, tuple[Callable[[], nn.Module], int, int]] = {
        "smallvgg_bn_64px": (lambda: SmallVGG(batch_norm=True), size_vgg, 4),
    }
    big = 1 if quick else 2
    try:
        from smart_transfer.models import load_backbone

        load_backbone("efficientnet_lite0")  # fails cleanly if weights/package are missing
        out["efficientnet_lite0_96px"] = (lambda: load_backbone("efficientnet_lite0"), 96, 4)
        out["efficientnet_lite0_224px"] = (lambda: load_backbone("efficientnet_lite0"), 224, big)
        # random weights are fine for speed
        out["torchvision_resnet50_224px"] = (
            lambda: load_backbone("torchvision:resnet50", pretrained=False),
            224,
            big,
        )
        out["timm_convnext_tiny_224px"] = (
            lambda: load_backbone("timm:convnext_tiny", pretrained=False),
            224,
            big,
        )
    except Exception as e:  # noqa: BLE001 - any failure just means "skip this model"
        print(f"skipping backbones: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def _time_forward(model: nn.Module, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of a plain no_grad forward."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for x in batches:
            model(x)
    return time.perf_counter() - wall, time.process_time() - cpu


def _time_profile(
    model: nn.Module, batches: list[torch.Tensor], config: StatsConfig | None = None
) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    st.profile(model, batches, progress=False, config=config)
    return time.perf_counter() - wall, time.process_time() - cpu


# --stats: the sets of statistics a profile may compute, by name ("full": the default).
STATS_SETS: dict[str, StatsConfig] = {
    "full": StatsConfig(),
    "moments": StatsConfig(stats=("moments",)),  # what a gaussian_kl plan needs
    "logs": StatsConfig(stats=("moments", "logs")),  # lognormal_kl
    "histogram": StatsConfig(stats=("moments", "histogram")),  # js, ks, wasserstein
}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and quartiles of one statistics set's repeats."""
    ratios = sorted(x["ratio"] for x in rows)
    return {
        "median_profile_images_per_s": statistics.median(x["profile_images_per_s"] for x in rows),
        "median_ratio": statistics.median(ratios),
        "ratio_quartiles": [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]],
        "median_cpu_ratio": statistics.median(x["cpu_ratio"] for x in rows),
        "min_ratio": ratios[0],
    }


def run_s1(
    name: str,
    factory: Callable[[], nn.Module],
    size: int,
    batch: int,
    n_batches: int,
    repeats: int,
    record: Callable[[], None],
    rows: list[dict[str, Any]],
    channels_last: bool = False,
    extra: dict[str, StatsConfig] | None = None,
) -> dict[str, Any]:
    """S1 of one model: the default profile (and each of ``extra``'s statistics sets, timed in
    the same interleaved rounds against the same forward) over a plain forward."""
    extra = extra or {}
    torch.manual_seed(0)
    model = factory().eval()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(batch, 3, size, size, generator=gen) for _ in range(n_batches)]
    if channels_last:  # the model and its inputs, for the forward and the profile alike
        model = model.to(memory_format=torch.channels_last)
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    images = batch * n_batches
    _time_forward(model, batches[:1])  # warm-up: oneDNN primitive caches, allocator
    _time_profile(model, batches[:1])
    result: dict[str, Any] = {
        "model": name,
        "image_size": size,
        "batch_size": batch,
        "batches": n_batches,
        "channels_last": channels_last,
        "repeats": rows,
    }
    for cfg in extra.values():
        _time_profile(model, batches[:1], cfg)
    for r in range(repeats):
        whats = ["forward", "profile", *extra]
        order = whats if r % 2 == 0 else whats[::-1]
        secs, cpus = {}, {}
        for what in order:
            if what == "forward":
                secs[what], cpus[what] = _time_forward(model, batches)
            else:
                secs[what], cpus[what] = _time_profile(model, batches, extra.get(what))
        row: dict[str, Any] = {
            "repeat": r,
            "forward_images_per_s": images / secs["forward"],
            "profile_images_per_s": images / secs["profile"],
            "ratio": secs["forward"] / secs["profile"],
            # CPU time of this process: what other processes on a shared machine disturb least
            "cpu_ratio": cpus["forward"] / cpus["profile"],
            "loadavg_1min": os.getloadavg()[0],
        }
        if extra:
            row["by_stats"] = {
                label: {
                    "profile_images_per_s": images / secs[label],
                    "ratio": secs["forward"] / secs[label],
                    "cpu_ratio": cpus["forward"] / cpus[label],
                }
                for label in extra
            }
            for label, v in row["by_stats"].items():
                print(f"  S1 {name} repeat {r}, stats={label}: ratio {v['ratio']:.3f}", flush=True)
        rows.append(row)
        print(
            f"  S1 {name} repeat {r}: forward {row['forward_images_per_s']:.1f} img/s, "
            f"profile {row['profile_images_per_s']:.1f} img/s, ratio {row['ratio']:.3f}, "
            f"CPU-time ratio {row['cpu_ratio']:.3f}, load {row['loadavg_1min']:.1f}",
            flush=True,
        )
        result["median_forward_images_per_s"] = statistics.median(
            x["forward_images_per_s"] for x in rows
        )
        result["median_profile_images_per_s"] = statistics.median(
            x["profile_images_per_s"] for x in rows
        )
        ratios = sorted(x["ratio"] for x in rows)
        result["median_ratio"] = statistics.median(ratios)
        result["ratio_quartiles"] = [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]]
        result["median_cpu_ratio"] = statistics.median(x["cpu_ratio"] for x in rows)
        result["min_ratio"] = ratios[0]
        # Fastest forward over fastest profile: the least disturbed by other processes on a
        # shared machine (each minimum is the run with the least interference).
        result["ratio_of_best_times"] = max(x["profile_images_per_s"] for x in rows) / max(
            x["forward_images_per_s"] for x in rows
        )
        result["target"] = TARGET_S1
        result["meets_target"] = result["median_ratio"] >= TARGET_S1
        if extra:
            result["by_stats"] = {
                label: {"stats": list(cfg.stats), **_summary([x["by_stats"][label] for x in rows])}
                for label, cfg in extra.items()
            }
        record()
    return result


# -- S2: one fresh process per image count ---------------------------------------------------


def _proc_status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_child(images: int, batch: int, size: int) -> None:
    """Profile ``images`` random images and print the peak RSS in bytes as JSON.

    ``ru_maxrss`` of a child also counts the pages it shared with its parent between fork and
    exec (a big parent makes every child look big), so on Linux the high-water mark is reset
    just before profiling and read back after it (``peak_during_profile_bytes``).
    """
    torch.manual_seed(0)
    model = SmallVGG(batch_norm=True).eval()
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: Linux reports kB, macOS bytes
    rss_before = _proc_status_bytes("VmRSS")
    try:  # "5" resets the peak RSS (VmHWM) of this process (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False

    def loader():  # random images made per batch: the data set takes no memory
        gen = torch.Generator().manual_seed(2)
        for start in range(0, images, batch):
            yield torch.randn(min(batch, images - start), 3, size, size, generator=gen)

    start = time.perf_counter()
    prof = st.profile(model, loader(), progress=False)
    secs = time.perf_counter() - start
    peak_during = _proc_status_bytes("VmHWM") if reset else None
    print(
        json.dumps(
            {
                "images": prof.num_samples,
                "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
                "rss_before_profile_bytes": rss_before,
                "peak_during_profile_bytes": peak_during,
                "seconds": secs,
            }
        )
    )


def run_s2(
    counts: tuple[int, int],
    batch: int,
    size: int,
    record: Callable[[], None],
    result: dict[str, Any],
) -> dict[str, Any]:
    rows = result.setdefault("runs", [])
    for images in counts:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--_rss-child",
            str(images),
            "--batch",
            str(batch),
            "--size",
            str(size),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        peak = row["peak_during_profile_bytes"] or row["ru_maxrss_bytes"]
        print(
            f"  S2 {images} images: peak RSS {peak / 2**20:.1f} MiB ({row['seconds']:.1f} s)",
            flush=True,
        )
        record()
    small, large = rows[0], rows[1]
    result.update(
        small_images=small["images"],
        large_images=large["images"],
        ratio_ru_maxrss=large["ru_maxrss_bytes"] / small["ru_maxrss_bytes"],
    )
    if small["peak_during_profile_bytes"] and large["peak_during_profile_bytes"]:
        result["ratio"] = large["peak_during_profile_bytes"] / small["peak_during_profile_bytes"]
        # What profiling adds on top of the memory held before it began (torch, the model).
        added = [
            r["peak_during_profile_bytes"] - r["rss_before_profile_bytes"] for r in (small, large)
        ]
        result["added_ratio"] = added[1] / added[0]
    else:
        result["ratio"] = result["ratio_ru_maxrss"]
    record()
    return result


# -- reporting -------------------------------------------------------------------------------


def _markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Profiling speed and memory (S1, S2)",
        "",
        f"Command: `{res['command']}`  ",
        _machine.header_line(res.get("cpu")),
        *([f"Note: {res['note']}  "] if res.get("note") else []),
        (
            f"torch {res['torch']}, {res['cpu_count']} CPUs, {res['threads']} torch threads, "
            f"{res['platform']}, {res['date']}"
        ),
        "",
        (
            "Memory format: "
            f"{'channels-last' if res.get('channels_last') else 'contiguous (NCHW)'} for the model "
            "and the batches, in the forward and the profile alike. Statistics: "
            + ("fused C kernels" if res.get("fused_statistics") else "eager torch operations")
            + "."
        ),
        "",
        "## S1: profile() throughput / plain no_grad forward throughput (target >= 0.8)",
        "",
        (
            "| model | image | batch | batches x repeats | forward img/s | profile img/s "
            "| ratio (median) | quartiles | best / best | CPU-time ratio (median) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["s1"].values():
        if "median_ratio" not in r:
            continue
        lines.append(
            f"| {r['model']} | {r['image_size']} px | {r['batch_size']} | {r['batches']} x "
            f"{len(r['repeats'])} | {r['median_forward_images_per_s']:.1f} | "
            f"{r['median_profile_images_per_s']:.1f} | **{r['median_ratio']:.3f}** | "
            f"{r['ratio_quartiles'][0]:.3f}-{r['ratio_quartiles'][1]:.3f} | "
            f"{r['ratio_of_best_times']:.3f} | {r.get('median_cpu_ratio', float('nan')):.3f} |"
        )
    lines += [
        "",
        (
            "img/s columns are medians over repeats; ratio = forward time / profile time of one "
            "interleaved round; best / best = fastest profile img/s over fastest forward img/s; "
            "CPU-time ratio = the same with this process's CPU time instead of wall time."
        ),
        "",
        (
            f"Load average (1 min) at start {res['loadavg_start'][0]:.2f}, at end "
            f"{(res.get('loadavg_end') or [float('nan')])[0]:.2f} on {res['cpu_count']} CPUs."
        ),
    ]
    by = [
        (r, label, v) for r in res["s1"].values() for label, v in (r.get("by_stats") or {}).items()
    ]
    if by:
        lines += [
            "",
            "## S1 by the statistics computed (same interleaved rounds, same forward)",
            "",
            "| model | image | statistics | profile img/s | ratio (median) | quartiles | CPU-time "
            "ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["s1"].values():
            if "median_ratio" in r and r.get("by_stats"):
                lines.append(
                    f"| {r['model']} | {r['image_size']} px | full (default) | "
                    f"{r['median_profile_images_per_s']:.1f} | **{r['median_ratio']:.3f}** | "
                    f"{r['ratio_quartiles'][0]:.3f}-{r['ratio_quartiles'][1]:.3f} | "
                    f"{r['median_cpu_ratio']:.3f} |"
                )
        for r, label, v in by:
            lines.append(
                f"| {r['model']} | {r['image_size']} px | {label} ({', '.join(v['stats'])}) | "
                f"{v['median_profile_images_per_s']:.1f} | **{v['median_ratio']:.3f}** | "
                f"{v['ratio_quartiles'][0]:.3f}-{v['ratio_quartiles'][1]:.3f} | "
                f"{v['median_cpu_ratio']:.3f} |"
            )
    s2 = res.get("s2") or {}
    if "ratio" in s2:
        mib = 2**20
        lines += [
            "",
            "## S2: peak RSS, many images over few (fresh process each; target ~1)",
            "",
            (
                "| images | peak RSS while profiling (MiB) | RSS before (MiB) | added (MiB) "
                "| ru_maxrss (MiB) | seconds |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for row in s2["runs"]:
            peak, before = row["peak_during_profile_bytes"], row["rss_before_profile_bytes"]
            cells = ["n/a"] * 3
            if peak is not None and before is not None:
                cells = [f"{peak / mib:.1f}", f"{before / mib:.1f}", f"{(peak - before) / mib:.1f}"]
            lines.append(
                f"| {row['images']} | {' | '.join(cells)} | {row['ru_maxrss_bytes'] / mib:.1f} "
                f"| {row['seconds']:.1f} |"
            )
        lines += [
            "",
            (
                f"Peak RSS ratio {s2['large_images']} / {s2['small_images']} images: "
                f"**{s2['ratio']:.3f}**; memory added by profiling: "
                f"{s2.get('added_ratio', float('nan')):.3f}; ru_maxrss: "
                f"{s2['ratio_ru_maxrss']:.3f} (ru_maxrss of a child also counts pages shared with "
                "its parent before exec)."
            ),
        ]
    lines += ["", "Every repeat is in the JSON file of the same name."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer batches/repeats, S2 with 1,024 images"
    )
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-s2", action="store_true", help="skip the memory benchmark")
    ap.add_argument(
        "--only", default=None, help="run S1 only for these model names (comma-separated)"
    )
    ap.add_argument("--tag", default=None, help="write profile_TAG.json / .md instead")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument(
        "--channels-last",
        action="store_true",
        help="model and batches in channels-last memory format (forward and profile alike)",
    )
    ap.add_argument(
        "--stats",
        default="full",
        help="comma-separated statistics sets to time against the forward, from "
        f"{list(STATS_SETS)}; 'full' (the default profile) is always timed, the others in the same "
        "interleaved rounds",
    )
    ap.add_argument("--note", default=None, help="a remark recorded in the results (e.g. the load)")
    ap.add_argument(
        "--_rss-child", dest="rss_child", type=int, default=None, help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    labels = [x.strip() for x in args.stats.split(",") if x.strip()]
    unknown = [x for x in labels if x not in STATS_SETS]
    if unknown:
        ap.error(f"--stats: unknown set(s) {unknown}; choose from {list(STATS_SETS)}")
    extra = {x: STATS_SETS[x] for x in labels if x != "full"}
    if args.rss_child is not None:
        _rss_child(args.rss_child, args.batch, args.size)
        return 0

    repeats = args.repeats or (3 if args.quick else 7)
    n_batches = 2 if args.quick else 4
    res: dict[str, Any] = {
        "schema_version": 1,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "channels_last": args.channels_last,
        "fused_statistics": native.kernels() is not None,
        "stats_sets": {
            "full": list(STATS_SETS["full"].stats),
            **{k: list(v.stats) for k, v in extra.items()},
        },
        "platform": platform.platform(),
        "cpu": _machine.cpu(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_start": list(os.getloadavg()),
        "note": args.note,
        "s1": {},
        "s2": None,
    }

    def record() -> None:
        stem = "profile" if not args.tag else f"profile_{args.tag}"
        atomic_write_text(RESULTS / f"{stem}.json", json.dumps(res, indent=2) + "\n")
        atomic_write_text(RESULTS / f"{stem}.md", _markdown(res))

    only = set(args.only.split(",")) if args.only else None
    for name, (factory, size, nb) in _models(args.size, args.quick).items():
        if only and name not in only:
            continue
        nb = min(nb, n_batches)
        reps = repeats if nb >= 4 else max(3, repeats // 2)
        rows: list[dict[str, Any]] = []
        res["s1"][name] = {"model": name, "repeats": rows}
        print(f"S1 {name} at {size} px, batch {args.batch}, {nb} batches, {reps} repeats")
        res["s1"][name] = run_s1(
            name, factory, size, args.batch, nb, reps, record, rows, args.channels_last, extra
        )
        res["loadavg_end"] = list(os.getloadavg())
    if not args.no_s2:
        counts = (256, 1024) if args.quick else (256, 4096)
        print(f"S2 peak RSS, {counts[0]} vs {counts[1]} images")
        res["s2"] = {"batch_size": args.batch, "image_size": args.size, "model": "smallvgg_bn"}
        run_s2(counts, args.batch, args.size, record, res["s2"])
    res["loadavg_end"] = list(os.getloadavg())
    record()
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
