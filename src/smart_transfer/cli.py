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
from ._paths import check_output_folders, check_outputs, check_replaced_folders
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

DEMO_STRATEGIES = ("linear-probe", "full-finetune", "smart-kernel", "random-mask", "auto")
QUICK_STEPS = 30  # demo --quick: a few minutes on two CPU cores


def cmd_demo(args: argparse.Namespace) -> int:
    """Advise, then train five strategies on the same 200 images; test each once; one table."""
    import shutil

    import torch

    import smart_transfer as st

    started = time.perf_counter()
    out = Path(args.out)
    check_outputs(
        {f"--out ({name})": out / name for name in ("metrics.json", "advice.json", "report.html")},
        {"--backbone": args.backbone},
    )
    check_replaced_folders(
        {f"--out ({name}/)": out / name for name in DEMO_STRATEGIES}, {"--backbone": args.backbone}
    )
    if args.steps is None and args.epochs is None:
        args.steps = 300
    if args.quick and args.epochs is None:
        args.steps = min(args.steps, QUICK_STEPS)
        args.test_size = min(args.test_size or 2000, 2000)
    print(f"[1/4] {args.backbone} (ImageNet weights) -> Fashion-MNIST, {args.per_class} images per class"
          + (" (--quick: fewer steps, a fixed 2,000-image test subset)" if args.quick else ""))
    train_ds, test_ds = st.data.fashion_mnist("train"), st.data.fashion_mnist("test")
    idx_train, idx_val = st.data.few_shot(train_ds, per_class=args.per_class, val_fraction=0.2, seed=args.seed)
    if args.test_size:
        g = torch.Generator().manual_seed(12345)  # a fixed subset, the same for every run
        idx_test = torch.randperm(len(test_ds), generator=g)[: args.test_size]
    else:
        idx_test = torch.arange(len(test_ds))
    backbone = st.load_backbone(args.backbone)

    print("[2/4] advice: D_pre from BatchNorm running statistics, D_new from the training images")
    advice = st.advise(backbone, (train_ds, torch.cat([idx_train, idx_val])), size=args.size)
    for line in str(advice).splitlines():
        print("      " + line)

    print(f"[3/4] training on {len(idx_train)} images, validating on {len(idx_val)} "
          f"(at most {f'{args.steps} optimizer steps' if args.epochs is None else f'{args.epochs} epochs'}, {args.size}px, AdamW lr={args.lr} fixed: the demo "
          "does not search smart-transfer train's learning-rate grid)")
    rows: dict[str, dict[str, Any]] = {}
    for name in DEMO_STRATEGIES:
        run = out / name
        if run.exists():
            shutil.rmtree(run)
        options: dict[str, Any] = {}
        if name == "random-mask":
            options["plan"] = str(out / "smart-kernel" / "plan.json")
        if name == "auto":
            options["budget_s"] = args.auto_budget
        t0 = time.perf_counter()
        result = st.train(
            backbone, (train_ds, idx_train), (train_ds, idx_val), strategy=name, steps=args.steps, epochs=args.epochs,
            lr=args.lr, batch_size=args.batch_size, size=args.size, seed=args.seed, out=run,
            progress=not args.no_progress, **options,
        )
        seconds = time.perf_counter() - t0
        metrics = st.evaluate(result, (test_ds, idx_test))  # read once, at the end
        rows[name] = {"val_accuracy": result.val_accuracy, "test_accuracy": metrics["accuracy"],
                      "frozen_fraction": result.frozen_fraction, "seconds": seconds,
                      "chosen": result.chosen, "test_images": metrics["test_images"]}
        print(f"      {name:<14} val {result.val_accuracy:.3f}  test {metrics['accuracy']:.3f}  "
              f"frozen {result.frozen_fraction:5.1%}  {seconds:4.0f} s")

    print(f"[4/4] test accuracy on {len(idx_test)} Fashion-MNIST test images"
          + (" (a fixed subset)" if len(idx_test) < len(test_ds) else " (the whole test split)"))
    print(f"      {'strategy':<16}{'val acc':>9}{'test acc':>10}{'frozen':>9}{'seconds':>9}")
    for name, r in rows.items():
        print(f"      {name:<16}{r['val_accuracy']:>9.3f}{r['test_accuracy']:>10.3f}"
              f"{r['frozen_fraction']:>9.1%}{r['seconds']:>9.0f}")
    note = ("One seed: read this as a demonstration, not a benchmark. Mean and spread over seeds: "
            "benchmarks/results/p1.md (README, 'Results').")
    print(f"      auto chose: {rows['auto']['chosen'].get('strategy')}; advice: {advice.strategy} ({advice.quadrant})")
    print(f"      {note}")
    _write_json(out / "metrics.json", {"schema_version": 1, "note": note, "seed": args.seed,
                                       "train_images": len(idx_train), "val_images": len(idx_val),
                                       "test_images": len(idx_test), "strategies": rows,
                                       "seconds": time.perf_counter() - started})
    comparison = {"rows": [{"strategy": n, **{k: r[k] for k in ("val_accuracy", "test_accuracy", "frozen_fraction", "seconds")}}
                           for n, r in rows.items()], "note": note}
    _write_json(out / "advice.json", advice.to_dict())
    for name in ("smart-kernel",):
        _write_json(out / name / "comparison.json", comparison)
        _write_json(out / name / "advice.json", advice.to_dict())
    try:
        from .report import make_report

        report = make_report(out / "smart-kernel", out=out / "report.html")
        print(f"      report: {report}")
    except ImportError as exc:  # the report needs matplotlib
        print(f"      no report ({exc})")
    print(f"      wrote {out / 'metrics.json'} ({time.perf_counter() - started:.0f} s in all)")
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
    elif args.what == "strategies":
        for info in st.list_strategies(details=True):
            print(f"{info['name']:<25}{info['trains']}")
            for opt, text in info["options"].items():
                print(f"{'':<27}{opt}: {text}")
    elif args.what == "backbones":
        for name in st.list_backbones():
            print(name)
    else:
        for name in st.list_layers(st.load_backbone(args.backbone)):
            print(name)
    return 0


# ------------------------------------------------------------------ train/evaluate/advise


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _options(pairs: Sequence[str] | None) -> dict[str, Any]:
    from .errors import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs or []:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise ConfigError(f"--option takes KEY=VALUE (e.g. --option quantile=0.3), got {pair!r}")
        out[k.replace("-", "_")] = _option_value(v)
    return out


def _draw(args: argparse.Namespace) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The dataset and the few-shot train/val indices that --data/--per-class/--seed name."""
    import smart_transfer as st

    from .data.spec import open_data

    ds = open_data(args.data, "train", args.image_size)
    idx_train, idx_val = st.data.few_shot(ds, per_class=args.per_class, val_fraction=args.val_fraction, seed=args.seed)
    info = {"spec": args.data, "per_class": args.per_class, "val_fraction": args.val_fraction,
            "seed": args.seed, "image_size": args.image_size,
            "train_indices": idx_train.tolist(), "val_indices": idx_val.tolist()}
    return ds, idx_train, idx_val, info


_TRAIN_KEYS = ("backbone", "data", "per_class", "strategy", "epochs", "steps", "eval_every", "lr_grid", "seed", "lr",
               "batch_size",
               "optimizer", "weight_decay", "patience", "size", "image_size", "val_fraction", "source",
               "option", "amp", "channels_last", "sync_bn", "device")


def cmd_train(args: argparse.Namespace) -> int:
    """Train one run; launched by ``torchrun``, every rank joins the group it describes."""
    from .training.distributed import launched_group

    device = args.device
    if args.resume and device is None:  # the device the run was made with
        cfg_path = Path(args.resume) / "config.json"
        if cfg_path.is_file():
            device = json.loads(cfg_path.read_text(encoding="utf-8")).get("data", {}).get("cli", {}).get("device")
    with launched_group(device) as (_, world):
        return _train(args, world)


def _train(args: argparse.Namespace, world: int) -> int:
    import smart_transfer as st

    from .errors import ConfigError
    from .training import TrainingInterrupted

    if args.resume:
        cfg_path = Path(args.resume) / "config.json"
        if not cfg_path.is_file():
            raise ConfigError(f"nothing to resume in {args.resume!r}: no config.json there")
        saved = json.loads(cfg_path.read_text(encoding="utf-8")).get("data", {}).get("cli")
        if not saved:
            raise ConfigError(f"{args.resume!r} was not made by 'smart-transfer train'; resume it from Python")
        for k, v in saved.items():
            setattr(args, k, v)
        args.out = args.resume
    elif not args.out:
        raise ConfigError("say where the run goes: --out DIR (or --resume DIR to continue one)")
    elif args.data is None:
        raise ConfigError("say what to train on: --data fashion-mnist, a folder of class subfolders, or an .npz")
    elif (Path(args.out) / "config.json").exists():
        raise ConfigError(f"{args.out!r} already holds a run; use --resume {args.out} or another --out")
    check_output_folders({"--out": args.out}, {"--backbone": args.backbone, "--data": args.data})
    if world > 1:  # every rank has checked the folder before rank 0 writes into it
        import torch.distributed

        torch.distributed.barrier()
    ds, idx_train, idx_val, info = _draw(args)
    info["cli"] = {k: getattr(args, k) for k in _TRAIN_KEYS}
    source = None if args.source in (None, "batchnorm") else args.source
    try:
        result = st.train(
            args.backbone, (ds, idx_train), (ds, idx_val), strategy=args.strategy, epochs=args.epochs,
            steps=args.steps, eval_every=args.eval_every, lr=args.lr, lr_grid=args.lr_grid, batch_size=args.batch_size, optimizer=args.optimizer, weight_decay=args.weight_decay,
            patience=args.patience, size=args.size, source=source, seed=args.seed, out=args.out,
            resume=bool(args.resume), progress=not args.no_progress, device=args.device,
            amp=args.amp, channels_last=args.channels_last, sync_bn=args.sync_bn, data_info=info,
            **_options(args.option),
        )
    except TrainingInterrupted:
        print(f"\ninterrupted; the last finished epoch is saved. Resume with:\n"
              f"  smart-transfer train --resume {args.out}", file=sys.stderr)
        return 130
    if _rank() == 0:
        print(f"{result.strategy}: validation accuracy {result.val_accuracy:.4f}, "
              f"frozen {result.frozen_fraction:.1%}, {result.timings['train_s']:.0f} s -> {args.out}")
        if result.chosen:
            print(f"chosen on validation: {json.dumps(result.chosen)}")
    return 0


def _rank() -> int:
    from .training.distributed import world

    return world()[0]


def _test_split(cfg: dict[str, Any], spec: str, test_spec: str | None) -> tuple[Any, Any, str]:
    """The test split: a separate set, Fashion-MNIST's test split, or the unused images of SPEC."""
    import torch

    from .data.spec import is_fashion, open_data

    size = cfg.get("data", {}).get("image_size")
    if test_spec:
        ds = open_data(test_spec, "test", size)
        return ds, torch.arange(len(ds)), f"{test_spec} (all {len(ds)} images)"
    if is_fashion(spec):
        ds = open_data(spec, "test")
        return ds, torch.arange(len(ds)), "Fashion-MNIST's test split"
    ds = open_data(spec, "train", size)
    used = set(cfg.get("data", {}).get("train_indices", [])) | set(cfg.get("data", {}).get("val_indices", []))
    rest = torch.tensor([i for i in range(len(ds)) if i not in used], dtype=torch.int64)
    from .errors import DataError

    if len(rest) == 0:
        raise DataError(f"every image of {spec!r} was used for training or validation; pass --test-data")
    return ds, rest, f"the {len(rest)} images of {spec} not drawn for training or validation"


def cmd_evaluate(args: argparse.Namespace) -> int:
    import smart_transfer as st

    check_outputs({"run (metrics.json)": Path(args.run) / "metrics.json"},
                  {"--data": args.data, "--test-data": args.test_data})
    result = st.TrainResult.load(args.run)
    spec = args.data or result.config.get("data", {}).get("spec")
    from .errors import ConfigError

    if spec is None and args.test_data is None:
        raise ConfigError("say which data to test on: --data SPEC or --test-data SPEC")
    ds, idx, what = _test_split(result.config, spec, args.test_data)
    metrics = st.evaluate(result, (ds, idx), overwrite=args.overwrite)
    print(f"test accuracy {metrics['accuracy']:.4f} on {metrics['test_images']} images ({what}) "
          f"-> {Path(args.run) / 'metrics.json'}")
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    import smart_transfer as st

    check_outputs({"--out": args.out}, {"--backbone": args.backbone, "--data": args.data, "--source": args.source})
    ds, idx_train, idx_val, _ = _draw(args)
    import torch

    source = None if args.source in (None, "batchnorm") else args.source
    advice = st.advise(args.backbone, (ds, torch.cat([idx_train, idx_val])), source=source, size=args.size)
    print(advice)
    print("similarity curve (layer score, input to output):")
    for point in advice.curve:
        bar = "#" * round(30 * max(0.0, min(1.0, point["score"])))
        print(f"  {point['layer']:<36} {point['score']:.3f} {bar}")
    if args.out:
        _write_json(Path(args.out), advice.to_dict())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import smart_transfer as st

    from .data.spec import open_data

    check_outputs({"--out": args.out}, {"--backbone": args.backbone, "--data": args.data, "--source": args.source})
    model = st.load_backbone(args.backbone)
    tf = st.data.transforms_for(model, train=False, size=args.size)
    ds = open_data(args.data, "train", args.image_size)
    from .models.heads import find_head

    head, _ = find_head(model)
    loader = st.data.loader(ds, batch_size=args.batch_size, transform=tf)
    new = st.profile(model, loader, max_batches=args.max_batches, exclude=[head], progress=not args.no_progress)
    if args.source in (None, "batchnorm"):
        pre = st.profile_from_batchnorm(model, exclude=[head])
    elif Path(args.source).is_file():
        pre = st.ActivationProfile.load(args.source)
    else:
        src = open_data(args.source, "train", args.image_size)
        pre = st.profile(model, st.data.loader(src, batch_size=args.batch_size, transform=tf),
                         max_batches=args.max_batches, exclude=[head], progress=not args.no_progress)
    sim = st.compare(pre, new, measure=args.measure)
    plan = st.plan_freeze(sim, scope=args.scope, **_plan_rule(args))
    plan.save(args.out)
    print(plan.summary_text())
    print(f"-> {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    read = ("config.json", "plan.json", "log.jsonl", "metrics.json", "advice.json", "comparison.json")
    check_outputs({"--out": args.out or Path(args.run) / "report.html"},
                  {f"run ({name})": Path(args.run) / name for name in read})
    path = make_report(args.run, out=args.out)
    print(f"report -> {path}")
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

    d = sub.add_parser(
        "demo", help="EfficientNet-Lite0 -> Fashion-MNIST, 200 images: advice and five strategies side by side",
        epilog="example: smart-transfer demo --quick", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--backbone", default="efficientnet_lite0")
    d.add_argument("--per-class", type=int, default=20, help="labelled images per class, validation included (default 20)")
    d.add_argument("--size", type=int, default=96, help="input resolution (default 96 on CPU)")
    demo_budget = d.add_mutually_exclusive_group()
    demo_budget.add_argument("--steps", type=int, default=None, help="optimizer steps per trained model (default 300)")
    demo_budget.add_argument("--epochs", type=int, default=None, help="instead of --steps: passes over the images")
    d.add_argument("--lr", type=float, default=3e-4, help="one fixed learning rate (default 3e-4)")
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--test-size", type=int, default=None, help="a fixed test subset of this size (default: all 10,000)")
    d.add_argument("--auto-budget", type=float, default=300.0, help="seconds for auto's candidates (default 300)")
    d.add_argument("--quick", action="store_true",
                   help=f"{QUICK_STEPS} optimizer steps and a fixed 2,000-image test subset")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--no-progress", action="store_true")
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


    def data_args(q: argparse.ArgumentParser, required: bool = True) -> None:
        q.add_argument("--backbone", default="efficientnet_lite0", help="a name (smart-transfer list backbones) or a weights file")
        q.add_argument("--data", required=required, help="'fashion-mnist', a folder of class subfolders, or an .npz")
        q.add_argument("--per-class", type=int, default=20, help="labelled images drawn per class (default 20)")
        q.add_argument("--val-fraction", type=float, default=0.2, help="validation share of the drawn images (default 0.2)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--size", type=int, default=None, help="network input size (default: the backbone's)")
        q.add_argument("--image-size", type=int, default=None, help="resize a folder's images when read")
        q.add_argument("--source", default=None, help="D_pre: 'batchnorm' (default), a saved profile or a folder of source images")

    examples = argparse.RawDescriptionHelpFormatter
    t = sub.add_parser("train", help="train a backbone on few labelled images with one strategy", formatter_class=examples,
                       epilog="examples:\n  smart-transfer train --backbone efficientnet_lite0 --data fashion-mnist "
                              "--per-class 20 --strategy smart-kernel --steps 300 --seed 0 --out runs/x\n"
                              "  smart-transfer train --resume runs/x\n"
                              "  torchrun --nproc-per-node 2 -m smart_transfer.cli train ... --out runs/ddp")
    data_args(t, required=False)
    t.add_argument("--strategy", default="auto", help="see: smart-transfer list strategies (default auto)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None,
                        help="optimizer steps at most, whatever the dataset size (default 300)")
    budget.add_argument("--epochs", type=int, default=None, help="instead of --steps: passes over the training images")
    rate = t.add_mutually_exclusive_group()
    rate.add_argument("--lr", type=float, default=None,
                      help="one fixed learning rate for the pretrained layers (default: chosen from --lr-grid)")
    rate.add_argument("--lr-grid", type=float, nargs="+", default=None, metavar="LR",
                      help="learning rates tried on validation, the lowest validation loss kept "
                           "(default 1e-4 3e-4 1e-3)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    t.add_argument("--weight-decay", type=float, default=1e-4, help="on conv/linear weights; never on biases "
                   "and norm layers (default 1e-4)")
    t.add_argument("--patience", type=int, default=100,
                   help="early stopping: optimizer steps without a better validation score (default 100)")
    t.add_argument("--eval-every", type=int, default=None,
                   help="validate every this many steps (default: every pass over the images, at most 10 steps)")
    t.add_argument("--option", action="append", metavar="KEY=VALUE", help="a strategy option, e.g. quantile=0.3 (repeatable)")
    t.add_argument("--out", help="the run folder")
    t.add_argument("--resume", metavar="DIR", help="continue an interrupted run (needs nothing but its folder)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    t.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                   help="mixed precision: bf16 on CUDA or the CPU, fp16 on CUDA")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="image batches in channels-last memory format, faster convolutions (default on; "
                        "on CUDA the model too)")
    t.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="test a finished run once; writes DIR/metrics.json", formatter_class=examples,
                       epilog="example:\n  smart-transfer evaluate runs/x --data fashion-mnist")
    e.add_argument("run")
    e.add_argument("--data", help="the data the run was trained on (default: as recorded in the run)")
    e.add_argument("--test-data", help="a separate test set (folder or .npz)")
    e.add_argument("--overwrite", action="store_true", help="evaluate again although metrics.json exists")
    e.set_defaults(func=cmd_evaluate)

    a = sub.add_parser("advise", help="which strategy fits the data, with the evidence", formatter_class=examples,
                       epilog="example:\n  smart-transfer advise --backbone efficientnet_lite0 --data photos/ --per-class 20")
    data_args(a)
    a.add_argument("--out", help="also write the advice as JSON")
    a.set_defaults(func=cmd_advise)

    pl = sub.add_parser("plan", help="profile, compare and write a freeze plan in one step", formatter_class=examples,
                        epilog="example:\n  smart-transfer plan --data fashion-mnist --size 96 --max-batches 10 --out plan.json")
    pl.add_argument("--backbone", default="efficientnet_lite0")
    pl.add_argument("--data", required=True)
    pl.add_argument("--source", default=None)
    pl.add_argument("--size", type=int, default=None)
    pl.add_argument("--image-size", type=int, default=None)
    pl.add_argument("--batch-size", type=int, default=64)
    pl.add_argument("--max-batches", type=int, default=None)
    pl.add_argument("--measure", default="gaussian_kl")
    pl.add_argument("--scope", choices=("kernel", "layer"), default="kernel")
    pl.add_argument("--out", required=True)
    pl.add_argument("--no-progress", action="store_true")
    plan_args(pl)
    pl.set_defaults(func=cmd_plan)

    rp = sub.add_parser("report", help="write DIR/report.html for a run", formatter_class=examples,
                        epilog="example:\n  smart-transfer report runs/x")
    rp.add_argument("run")
    rp.add_argument("--out", default=None, help="where the HTML goes (default DIR/report.html)")
    rp.set_defaults(func=cmd_report)

    ls = sub.add_parser("list", help="list measures, backbones or the layers of a backbone")
    ls.add_argument("what", choices=("measures", "backbones", "layers", "strategies"))
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
    except KeyboardInterrupt as e:  # also TrainingInterrupted, which says what was saved
        if debug:
            traceback.print_exc()
        said = f": {_one_line(e)}" if str(e) else ""
        print(f"interrupted (Ctrl-C){said}; files written before are intact", file=sys.stderr)
        return 130
    except SmartTransferError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
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
