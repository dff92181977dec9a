"""Command-line interface: thin subcommands over the library.

    smart-transfer demo                      # EfficientNet-Lite0 (ImageNet) -> Fashion-MNIST, 200 images
    smart-transfer profile --data fashion-mnist --out new.pt
    smart-transfer profile --source batchnorm --out pre.pt
    smart-transfer compare pre.pt new.pt --measure gaussian_kl --quantile 0.5 --plan plan.json
    smart-transfer list {measures,backbones,layers}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._atomic import atomic_open
from .errors import SmartTransferError


def _write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write: a temp file in the same folder, then rename."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def _dataset(spec: str, split: str, size: int | None):
    from . import data

    if spec in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return data.fashion_mnist(split)
    return data.image_folder(spec, size=size)


def _plan_rule(args: argparse.Namespace) -> dict[str, float]:
    rule = {k: getattr(args, k) for k in ("threshold", "quantile", "budget")}
    rule = {k: v for k, v in rule.items() if v is not None}
    return rule or {"quantile": 0.5}


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Profile, compare, plan, then fine-tune with and without the plan; print a table."""
    import torch

    import smart_transfer as st

    torch.manual_seed(args.seed)
    print(f"[1/5] backbone {args.backbone} with its pretrained weights")
    backbone = st.load_backbone(args.backbone)
    cfg = dict(backbone.pretrained_cfg)
    size = args.size

    print("[2/5] Fashion-MNIST: few-shot training set, validation carved from it, test subset")
    train_ds, test_ds = st.data.fashion_mnist("train"), st.data.fashion_mnist("test")
    idx_train, idx_val = st.data.few_shot(
        train_ds.targets, per_class=args.per_class, val_fraction=0.2, seed=args.seed
    )
    g = torch.Generator().manual_seed(12345)  # fixed test subset, the same for every run
    idx_test = torch.randperm(len(test_ds), generator=g)[: args.test_size]
    eval_tf = st.data.transforms_for(cfg, train=False, size=size)
    train_tf = st.data.transforms_for(cfg, train=True, size=size)
    bs = args.batch_size
    train_loader = st.data.loader(train_ds, idx_train, batch_size=bs, shuffle=True, seed=args.seed)
    val_loader = st.data.loader(train_ds, idx_val, batch_size=256)
    test_loader = st.data.loader(test_ds, idx_test, batch_size=256)
    profile_loader = st.data.loader(train_ds, idx_train, batch_size=bs, transform=eval_tf)

    print("[3/5] profiling: D_pre from BatchNorm running statistics, D_new from the training images")
    prof_pre = st.profile_from_batchnorm(backbone)
    prof_new = st.profile(backbone, profile_loader, progress=not args.no_progress)
    sim = st.compare(prof_pre, prof_new, measure=args.measure)
    plan = st.plan_freeze(sim, scope="kernel", **_plan_rule(args))
    print(f"      measure={args.measure}, layers compared={len(sim.scores)}, {plan!r}")

    print(f"[4/5] fine-tuning for {args.epochs} epochs at {size}px (AdamW lr={args.lr})")
    results: dict[str, Any] = {}
    for name in ("full-finetune", "smart-kernel"):
        torch.manual_seed(args.seed)
        model = st.replace_head(st.load_backbone(args.backbone), 10)
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-4
        )
        handle = st.apply_plan(model, plan, optimizer=opt) if name == "smart-kernel" else None
        start = time.perf_counter()
        fit = st.training.fit(
            model, opt, train_loader, val_loader, args.epochs,
            train_transform=train_tf, val_transform=eval_tf,
            progress=not args.no_progress, desc=name,
        )
        test_acc = st.training.evaluate(model, test_loader, eval_tf)  # read once, at the end
        results[name] = {
            "test_accuracy": test_acc,
            "seconds": time.perf_counter() - start,
            "frozen_fraction": 0.0 if handle is None else plan.frozen_fraction,
            **fit.to_dict(),
        }
        if handle is not None:
            handle.remove()

    print(f"[5/5] test accuracy on {len(idx_test)} Fashion-MNIST test images (fixed subset)")
    print(f"      {'strategy':<16}{'val acc':>9}{'test acc':>10}{'best epoch':>12}{'frozen':>9}")
    for name, r in results.items():
        print(
            f"      {name:<16}{r['best_val_accuracy']:>9.3f}{r['test_accuracy']:>10.3f}"
            f"{r['best_epoch']:>12d}{r['frozen_fraction']:>9.1%}"
        )
    out = Path(args.out)
    _write_json(
        out / "demo.json",
        {
            "schema_version": 1,
            "args": vars(args) | {"func": None},
            "plan": plan.summary(),
            "results": results,
            "train_images": len(idx_train),
            "val_images": len(idx_val),
            "test_images": len(idx_test),
        },
    )
    plan.save(out / "plan.json")
    print(f"      wrote {out / 'demo.json'} and {out / 'plan.json'}")
    return 0


# ------------------------------------------------------------------ profile/compare


def cmd_profile(args: argparse.Namespace) -> int:
    import smart_transfer as st

    model = st.load_backbone(args.backbone)
    if args.source == "batchnorm":
        prof = st.profile_from_batchnorm(model)
    else:
        ds = _dataset(args.data, args.split, args.size)
        tf = st.data.transforms_for(model, train=False, size=args.size)
        loader = st.data.loader(ds, batch_size=args.batch_size, transform=tf)
        prof = st.profile(model, loader, max_batches=args.max_batches, progress=not args.no_progress)
    prof.save(args.out)
    print(f"profiled {len(prof)} layers ({prof.source}, {prof.num_samples} images) -> {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import smart_transfer as st

    pre = st.ActivationProfile.load(args.pre)
    new = st.ActivationProfile.load(args.new)
    sim = st.compare(pre, new, measure=args.measure)
    for name in sim.scores:
        print(f"{name:<40} layer score {sim.layer_scores[name]:.3f}")
    if args.out:
        _write_json(Path(args.out), sim.to_dict())
    if args.plan:
        plan = st.plan_freeze(sim, scope=args.scope, **_plan_rule(args))
        plan.save(args.plan)
        print(plan.summary_text())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import smart_transfer as st

    if args.what == "measures":
        for m in st.list_measures(details=True):
            print(f"{m['name']:<14}{m['level']:<9}{m['direction']:<12}{m['assumption']}")
    elif args.what == "backbones":
        for name in st.list_backbones():
            print(name)
    else:
        for name in st.list_layers(st.load_backbone(args.backbone)):
            print(name)
    return 0


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smart-transfer", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def plan_args(q: argparse.ArgumentParser) -> None:
        g = q.add_mutually_exclusive_group()
        g.add_argument("--threshold", type=float, help="freeze channels with similarity >= T")
        g.add_argument("--quantile", type=float, help="freeze this fraction of each layer (default 0.5)")
        g.add_argument("--budget", type=float, help="fraction of plannable parameters left trainable")

    d = sub.add_parser("demo", help="EfficientNet-Lite0 -> Fashion-MNIST few-shot, smart freezing vs full fine-tuning")
    d.add_argument("--backbone", default="efficientnet_lite0")
    d.add_argument("--per-class", type=int, default=20, help="training images per class (default 20 = 200 images)")
    d.add_argument("--size", type=int, default=96, help="input resolution (default 96 on CPU)")
    d.add_argument("--epochs", type=int, default=8)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--measure", default="gaussian_kl")
    d.add_argument("--test-size", type=int, default=2000, help="fixed test subset (default 2000 of 10000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--no-progress", action="store_true")
    plan_args(d)
    d.set_defaults(func=cmd_demo)

    pr = sub.add_parser("profile", help="profile a backbone on a dataset (or from its BatchNorm statistics)")
    pr.add_argument("--backbone", default="efficientnet_lite0")
    pr.add_argument("--source", choices=("data", "batchnorm"), default="data")
    pr.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an image folder")
    pr.add_argument("--split", default="train")
    pr.add_argument("--size", type=int, default=None)
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--max-batches", type=int, default=None)
    pr.add_argument("--out", required=True)
    pr.add_argument("--no-progress", action="store_true")
    pr.set_defaults(func=cmd_profile)

    c = sub.add_parser("compare", help="compare two saved profiles, optionally write a freeze plan")
    c.add_argument("pre")
    c.add_argument("new")
    c.add_argument("--measure", default="lognormal_kl")
    c.add_argument("--out", help="write the similarity as JSON")
    c.add_argument("--plan", help="write a freeze plan as JSON")
    c.add_argument("--scope", choices=("kernel", "layer"), default="kernel")
    plan_args(c)
    c.set_defaults(func=cmd_compare)

    ls = sub.add_parser("list", help="list measures, backbones or the layers of a backbone")
    ls.add_argument("what", choices=("measures", "backbones", "layers"))
    ls.add_argument("--backbone", default="efficientnet_lite0")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SmartTransferError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
