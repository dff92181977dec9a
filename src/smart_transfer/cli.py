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
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._atomic import Terminated, atomic_open
from ._paths import check_outputs
from .errors import ConfigError, SmartTransferError


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

    out = Path(args.out)
    check_outputs(
        {"--out (demo.json)": out / "demo.json", "--out (plan.json)": out / "plan.json"},
        {"--backbone": args.backbone},
    )
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

    check_outputs(
        {"--out": args.out},
        {"--backbone": args.backbone, "--data": args.data if args.source == "data" else None},
    )
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

    given = [f"--{k}" for k in ("threshold", "quantile", "budget") if getattr(args, k) is not None]
    if given and not args.plan:
        raise ConfigError(
            f"{given[0]} chooses what the freeze plan freezes, but no --plan was given; add "
            f"--plan plan.json to write the plan, or drop {given[0]}."
        )
    check_outputs({"--out": args.out, "--plan": args.plan}, {"pre": args.pre, "new": args.new})
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


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (usage mistakes exit 2 like every other user mistake)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="smart-transfer", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (any position)"
    )
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


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; map every outcome to one line on stderr and an exit status.

    0: done. 2: a mistake of the user (a bad argument, path, file or data: a
    :class:`SmartTransferError` or a usage error), one line naming it and the fix.
    1: an internal failure, one line and the hint to rerun with ``--debug``, which prints the
    full traceback (also for the other cases). 130: interrupted by Ctrl-C (SIGINT);
    143: terminated (SIGTERM); files written before stay intact and no temporary file is
    left behind.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    installed, previous = False, None
    try:
        try:
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
            installed = previous is not None  # None: a handler not set from Python, keep it
        except ValueError:  # not the main thread: leave SIGTERM alone
            pass
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help (0) or a usage error (2), already printed
            if isinstance(e, Terminated):
                raise
            return e.code if isinstance(e.code, int) else 2
        return int(args.func(args))
    except SmartTransferError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted (Ctrl-C); files written before are intact", file=sys.stderr)
        return 130
    except Terminated:
        if debug:
            traceback.print_exc()
        print("terminated (SIGTERM); files written before are intact", file=sys.stderr)
        return 143
    except Exception as e:  # noqa: BLE001 - the one place every other failure is reported
        if debug:
            traceback.print_exc()
        print(
            f"internal error: {type(e).__name__}: {_one_line(e)} (run again with --debug for "
            "the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
