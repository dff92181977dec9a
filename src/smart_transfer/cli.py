"""Command-line interface: thin subcommands over the library.

smart-transfer demo       # EfficientNet-Lite0 (ImageNet) -> Fashion-MNIST, 200 images
smart-transfer compare-strategies --data photos/ --strategies linear-probe lp-ft \\
    --seeds 0 1 2 --out runs/cmp
smart-transfer profile --data fashion-mnist --out new.pt
smart-transfer profile --source batchnorm --out pre.pt
smart-transfer compare pre.pt new.pt --measure gaussian_kl --quantile 0.5 --plan plan.json
smart-transfer list {measures,backbones,layers}
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import signal
import sys
import traceback
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn, TypedDict, cast

from ._atomic import Terminated, atomic_open
from ._paths import check_output_folders, check_outputs, is_run_folder
from .errors import ConfigError, SmartTransferError
from .spec import DataSpec, Recipe, RunSpec, default_text


def _write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write: a temp file in the same folder, then rename."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def _dataset(args: argparse.Namespace, spec: str, split: str, model: Any) -> Any:
    """The data ``spec`` names (every file decoded once, ``--on-error`` applied), at ``model``'s
    evaluation geometry for ``--size``; its summary printed first."""
    import smart_transfer as st

    from .api import _with_geometry
    from .data.manifest import summary
    from .data.spec import describe, open_data

    ds = open_data(spec, split, on_error=args.on_error, check=True)
    print(summary(ds, describe(spec)))
    return _with_geometry(ds, st.data.transforms_for(model, train=False, size=args.size))


def _device(args: argparse.Namespace) -> Any:
    """``--device`` checked (a missing device is a ConfigError, exit 2, before any work)."""
    from ._device import resolve_device

    return resolve_device(getattr(args, "device", None) or "auto")


def _per_class(text: str) -> int | None:
    """``--per-class N`` or ``all`` (every labelled image)."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--per-class takes a positive number or 'all', got {text!r}"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"--per-class takes a positive number or 'all', got {text!r}"
        )
    return n


def _size(text: str) -> int:
    """``--size``: a positive number of pixels."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--size takes a positive number of pixels, got {text!r}")
    return n


def _deprecated_image_size(args: argparse.Namespace) -> None:
    """``--image-size`` is an alias of ``--size`` (images are read at the network's geometry)."""
    if getattr(args, "image_size", None) is None:
        return
    print(
        "warning: --image-size is deprecated and will be removed; use --size (images of any size "
        "are resized and centre-cropped to it)",
        file=sys.stderr,
    )
    if getattr(args, "size", None) is None:
        args.size = args.image_size
    args.image_size = None


DATA_HELP = (
    "'fashion-mnist', a folder of class subfolders (images of any size), a CSV/TSV of path,label "
    "rows (paths relative to it), or an .npz of images and labels"
)
SIZE_HELP = (
    "the network's input size in pixels; every image is resized (short side, aspect kept) and "
    "centre-cropped to it (default: the backbone's)"
)


class _PlanRule(TypedDict, total=False):
    """The freezing rule given on the command line (one of the three)."""

    threshold: float
    quantile: float
    budget: float


def _plan_rule(args: argparse.Namespace) -> _PlanRule:
    rule = {k: getattr(args, k) for k in ("threshold", "quantile", "budget")}
    rule = {k: v for k, v in rule.items() if v is not None}
    return cast(_PlanRule, rule or {"quantile": 0.5})


# ------------------------------------------------------------------------ demo / compare-strategies

DEMO_STRATEGIES = ("linear-probe", "full-finetune", "smart-kernel", "random-mask", "auto")
QUICK_STEPS = 30  # demo --quick: a few minutes on two CPU cores
DEMO_LR = (
    Recipe.lr
)  # the demo trains at one fixed rate, the recipe's, instead of searching the grid


def cmd_compare_strategies(args: argparse.Namespace) -> int:
    """Train each strategy on the same splits per seed, test each once, print and write the
    table."""
    import smart_transfer as st

    options: dict[str, dict[str, Any]] = {}
    if getattr(args, "auto_budget", None) is not None:
        options["auto"] = {"budget_s": args.auto_budget}
    st.compare_strategies(
        args.backbone,
        args.data,
        strategies=args.strategies,
        seeds=args.seeds,
        per_class=args.per_class,
        size=args.size,
        out=args.out,
        **_recipe_kwargs(args),
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        test_size=args.test_size,
        device=args.device,
        options=options,
        advise=not args.no_advice,
        report=args.report or True,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        on_error=getattr(args, "on_error", "raise"),
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """compare-strategies on its embedded default: EfficientNet-Lite0 -> Fashion-MNIST, 200 images,
    advice and five strategies on the same images, each tested once; one table and a report."""
    if args.quick:
        if args.epochs is None:
            args.steps = min(args.steps or QUICK_STEPS, QUICK_STEPS)
        args.test_size = min(args.test_size or 2000, 2000)
        print(
            f"--quick: {args.steps or args.epochs} optimizer "
            f"{'steps' if args.epochs is None else 'epochs'} and a fixed 2,000-image test subset"
        )
    args.data, args.strategies, args.seeds = "fashion-mnist", list(DEMO_STRATEGIES), [args.seed]
    args.val_fraction, args.test_fraction, args.no_advice, args.lr_grid = 0.2, 0.2, False, None
    args.report, args.overwrite = "smart-kernel", True  # the report shows what the method froze
    rc = cmd_compare_strategies(args)
    print(
        "      Mean and spread over seeds: benchmarks/results/p1.md (README, 'Results'), or "
        "smart-transfer compare-strategies --data fashion-mnist --seeds 0 1 2 ..."
    )
    return rc


# ------------------------------------------------------------------ profile/compare


def cmd_profile(args: argparse.Namespace) -> int:
    import smart_transfer as st

    check_outputs(
        {"--out": args.out},
        {"--backbone": args.backbone, "--data": args.data if args.source == "data" else None},
    )
    dev = _device(args)
    model = st.load_backbone(args.backbone)
    if args.source == "batchnorm":
        prof = st.profile_from_batchnorm(model)
    else:
        ds = _dataset(args, args.data, args.split, model)
        tf = st.data.transforms_for(model, train=False, size=args.size)
        loader = st.data.loader(ds, batch_size=args.batch_size, transform=tf)
        prof = st.profile(
            model.to(dev),
            loader,
            max_batches=args.max_batches,
            progress=not args.no_progress,
            device=dev,
        )
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
            raise ConfigError(
                f"--option takes KEY=VALUE (e.g. --option quantile=0.3), got {pair!r}"
            )
        out[k.replace("-", "_")] = _option_value(v)
    return out


def _data_spec(args: argparse.Namespace) -> DataSpec:
    """The data flags as a :class:`DataSpec` (``--test-data`` absolute: evaluate and --resume run
    from anywhere)."""
    from .data.spec import describe

    return DataSpec(
        spec=args.data,
        per_class=args.per_class,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        test_data=None if args.test_data is None else describe(args.test_data),
        on_error=args.on_error,
        seed=args.seed,
    )


def _draw(data: DataSpec, resume: str | None = None) -> tuple[Any, Any, Any, Any, Any]:
    """``(train ds, train idx, val ds, val idx, manifest)``: the test split of --data held out
    first (--test-fraction; none with --test-data; Fashion-MNIST's own), then --per-class of the
    rest drawn for train/val; the summary printed. ``resume``: the run folder, whose manifest
    gives the same files (refused when they changed)."""
    from .data.manifest import Manifest
    from .data.spec import open_data

    quiet = _rank() != 0
    manifest: Manifest | None
    if resume is not None and (Path(resume) / "manifest.json").is_file():
        manifest = Manifest.load(Path(resume) / "manifest.json")
        manifest.check_unchanged(
            "the run cannot resume on the images it started with",
            "restore those files, or start a new run with another --out",
        )
        ds, idx_train = manifest.dataset("train")
        val_ds, idx_val = manifest.dataset("val")
        if not quiet:
            print(
                f"data: {manifest.root} (manifest.json of {resume}, unchanged): "
                + ", ".join(f"{k} {v}" for k, v in manifest.counts().items())
            )
        return ds, idx_train, val_ds, idx_val, manifest
    if data.spec is None:
        raise ConfigError(
            f"{resume!r} was not made by 'smart-transfer train'; resume it from Python"
        )
    if resume is not None:  # a run from before manifests: its recorded positions
        import torch

        old = json.loads((Path(resume) / "config.json").read_text(encoding="utf-8")).get("data", {})
        if "train_indices" in old:
            ds = open_data(data.spec, "train", on_error=data.on_error, check=True)
            return (
                ds,
                torch.tensor(old["train_indices"]),
                ds,
                torch.tensor(old["val_indices"]),
                None,
            )
    from .api import _open_path

    ds, splits, manifest = _open_path(
        data.spec,
        per_class=data.per_class,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.seed,
        on_error=data.on_error,
        progress=not quiet,
        test_data=data.test_data,
        say_split=True,
    )
    return ds, splits["train"], ds, splits["val"], manifest


def cmd_train(args: argparse.Namespace) -> int:
    """Train one run; launched by ``torchrun``, every rank joins the group it describes."""
    from .training.distributed import launched_group

    device = str(_device(args))  # --device (also with --resume), checked before any folder is made
    with launched_group(device) as (_, world):
        return _train(args, world)


def _run_spec(args: argparse.Namespace) -> RunSpec:
    """The run the flags describe: a new one's from the flags, a resumed one's from its
    config.json (a flag given now must agree with it, see :func:`_check_resume_flags`)."""
    if args.resume:
        folder = Path(args.resume)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"nothing to resume in {args.resume!r}: no config.json there")
        if (
            "out" in getattr(args, "_given", set())
            and args.out is not None
            and Path(args.out).resolve() != folder.resolve()
        ):
            raise ConfigError(f"--resume continues in {args.resume!r}; drop --out {args.out}")
        spec = RunSpec.from_json(folder)
        if not spec.backbone_is_name:
            raise ConfigError(
                f"{args.resume!r} was trained from a model object; resume it from Python"
            )
        _check_resume_flags(args, spec)
        return spec
    if not args.out:
        raise ConfigError("say where the run goes: --out DIR (or --resume DIR to continue one)")
    if args.data is None:
        raise ConfigError(
            "say what to train on: --data fashion-mnist, a folder of class subfolders, or an .npz"
        )
    if is_run_folder(args.out):
        raise ConfigError(
            f"{args.out!r} already holds a run; use --resume {args.out} or another --out"
        )
    options = _options(args.option)
    head = options.pop("head", "linear")
    return RunSpec(
        backbone=args.backbone,
        data=_data_spec(args),
        recipe=Recipe(),
        strategy=args.strategy,
        options=options,
        head=head,
        size=args.size,
        seed=args.seed,
        source=args.source or "batchnorm",
        sync_bn=args.sync_bn,
    )


def _spec_flags(spec: RunSpec) -> dict[str, Any]:
    """The value of every train flag (argparse destination) as the spec records it."""
    d = spec.data
    return {
        "backbone": spec.backbone,
        "data": d.spec,
        "per_class": d.per_class,
        "val_fraction": d.val_fraction,
        "test_fraction": d.test_fraction,
        "test_data": d.test_data,
        "on_error": d.on_error,
        "seed": spec.seed,
        "size": spec.size,
        "source": spec.source,
        "strategy": spec.strategy,
        "sync_bn": spec.sync_bn,
        "option": {**spec.options, **({"head": spec.head} if spec.head != "linear" else {})},
        **{f.name: getattr(spec.recipe, f.name) for f in fields(Recipe) if f.metadata.get("flag")},
    }


# Flags that --resume honours: they change how the run is shown or where it runs, not what
# it computes from the checkpoint.
_RESUME_FREE = ("resume", "no_progress", "device", "out")


def _check_resume_flags(args: argparse.Namespace, spec: RunSpec) -> None:
    """Refuse a flag given with --resume whose value differs from the run's spec (resume could
    not honour it, and config.json would record it falsely)."""
    from .data.spec import describe

    saved = _spec_flags(spec)
    for key in sorted(set(getattr(args, "_given", set())) - set(_RESUME_FREE)):
        if key not in saved:
            continue
        now = getattr(args, key)
        now = _options(now) if key == "option" else describe(now) if key == "test_data" else now
        now = "batchnorm" if key == "source" and now is None else now
        was = saved[key]
        if (tuple(now) if isinstance(now, list) else now) != was:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{flag} {getattr(args, key)!r} differs from the run's {was!r}, and --resume "
                f"continues a run as it was started; drop {flag} (or start a new run with --out)"
            )


def _recipe_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe flags that were given (the others keep the :class:`Recipe` default)."""
    return {
        f.name: getattr(args, f.name)
        for f in fields(Recipe)
        if f.metadata.get("flag") and getattr(args, f.name, None) is not None
    }


def _train(args: argparse.Namespace, world: int) -> int:
    import smart_transfer as st

    from .training import TrainingInterrupted

    spec = _run_spec(args)
    out = args.resume or args.out
    check_output_folders(
        {"--out": out},
        {
            "--backbone": spec.backbone,
            "--data": spec.data.spec,
            "--source": None if spec.source == "batchnorm" else spec.source,
            "--test-data": spec.data.test_data,
        },
    )
    from .strategies import get_strategy

    options = dict(spec.options) if args.resume else _options(args.option)
    get_strategy(spec.strategy).check(options)  # before the data is read
    if world > 1:  # every rank has checked the folder before rank 0 writes into it
        import torch.distributed

        torch.distributed.barrier()
    if args.resume and spec.head != "linear":
        options["head"] = spec.head
    recipe = spec.recipe.keywords() if args.resume else _recipe_kwargs(args)
    ds, idx_train, val_ds, idx_val, manifest = _draw(spec.data, args.resume)
    try:
        result = st.train(
            spec.backbone,
            (ds, idx_train),
            (val_ds, idx_val),
            strategy=spec.strategy,
            size=spec.size,
            source=None if spec.source == "batchnorm" else spec.source,
            seed=spec.seed,
            out=out,
            resume=bool(args.resume),
            progress=not args.no_progress,
            device=args.device or "auto",
            sync_bn=spec.sync_bn,
            data_info=spec.data.to_dict(),
            manifest=manifest,
            on_error=spec.data.on_error,
            **recipe,
            **options,
        )
    except TrainingInterrupted:
        print(
            f"\ninterrupted; the last finished epoch is saved. Resume with:\n"
            f"  smart-transfer train --resume {out}",
            file=sys.stderr,
        )
        return 130
    if _rank() == 0:
        print(
            f"{result.strategy}: validation accuracy {result.val_accuracy:.4f}, "
            f"frozen {result.frozen_fraction:.1%}, {result.timings['train_s']:.0f} s -> {out}"
        )
        if result.chosen:
            print(f"chosen on validation: {json.dumps(result.chosen)}")
    return 0


def _given_flags(argv: Sequence[str]) -> set[str]:
    """The destinations of the options typed on the command line (abbreviations included):
    the parser is run again with every default suppressed, so only typed options remain."""
    parser = build_parser()
    stack: list[argparse.ArgumentParser] = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.dest not in ("help", "command"):
                action.default = argparse.SUPPRESS
        p.set_defaults(func=None)
    try:
        ns = parser.parse_args(list(argv))
    except SystemExit:  # pragma: no cover - the first parse accepted the same argv
        return set()
    return set(vars(ns)) - {"func", "command"}


def _rank() -> int:
    from .training.distributed import world

    return world()[0]


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Test a run once: on its held-out images (by manifest.json), or on --test-data."""
    import smart_transfer as st

    check_outputs(
        {"run (metrics.json)": Path(args.run) / "metrics.json"},
        {"--data": args.data, "--test-data": args.test_data},
        own=("metrics.json", "test_samples.safetensors"),
    )
    dev = _device(args)
    result = st.TrainResult.load(args.run)
    test = args.test_data
    if test is None and args.data is not None:  # the run's own data means its held-out split
        from .api import _run_manifest
        from .data.spec import describe

        manifest = _run_manifest(result)
        own = manifest is not None and describe(args.data) in (manifest.root, manifest.source)
        test = None if own else args.data
    if test is None:  # trained with --test-data: that is its test set
        test = result.spec.data.test_data
    metrics = st.evaluate(
        result, test, overwrite=args.overwrite, device=dev, on_error=args.on_error, progress=True
    )
    print(
        f"test accuracy {metrics['accuracy']:.4f} on {metrics['test_images']} images "
        f"({metrics['test_data']}) -> {Path(args.run) / 'metrics.json'}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict the class of new images with a finished run: a CSV and a short table."""
    from ._device import resolve_device
    from .errors import DataError
    from .predictions import UnreadableImage, check_out_of_data, predict, resolve_images

    for flag, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    device = resolve_device(args.device)
    files = resolve_images(args.images)  # a wrong path or an empty folder fails before any work
    # predictions may go into the run folder, never over one of its files (_paths.RUN_FILES)
    check_outputs({"--out": args.out}, {**{f"image {p}": p for p in files}})
    check_out_of_data(args.out, args.images)
    try:
        preds = predict(
            args.run,
            [str(p) for p in files],
            top_k=args.top_k,
            batch_size=args.batch_size,
            device=device,
            on_error=args.on_error,
        )
    except UnreadableImage as exc:
        raise DataError(
            f"{exc.reason}; replace or delete it, or pass --on-error skip to leave "
            "unreadable files out"
        ) from None
    out = preds.to_csv(args.out)
    print(preds.table(more=f"see {out}"))
    print(f"predicted {len(preds)} image(s), classes {', '.join(preds.classes)} -> {out}")
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    import smart_transfer as st

    check_outputs(
        {"--out": args.out},
        {"--backbone": args.backbone, "--data": args.data, "--source": args.source},
    )
    dev = _device(args)
    ds, idx_train, _, idx_val, _ = _draw(_data_spec(args))
    import torch

    source = None if args.source in (None, "batchnorm") else args.source
    advice = st.advise(
        args.backbone,
        (ds, torch.cat([idx_train, idx_val])),
        source=source,
        size=args.size,
        device=dev,
        on_error=args.on_error,
    )
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

    check_outputs(
        {"--out": args.out},
        {"--backbone": args.backbone, "--data": args.data, "--source": args.source},
    )
    dev = _device(args)
    model = st.load_backbone(args.backbone)
    tf = st.data.transforms_for(model, train=False, size=args.size)
    ds = _dataset(args, args.data, "train", model)
    model.to(dev)
    from .models.heads import find_head

    head, _ = find_head(model)
    loader = st.data.loader(ds, batch_size=args.batch_size, transform=tf)
    new = st.profile(
        model,
        loader,
        max_batches=args.max_batches,
        exclude=[head],
        progress=not args.no_progress,
        device=dev,
    )
    if args.source in (None, "batchnorm"):
        pre = st.profile_from_batchnorm(model, exclude=[head])
    elif Path(args.source).is_file():
        pre = st.ActivationProfile.load(args.source)
    else:
        src = _dataset(args, args.source, "train", model)
        pre = st.profile(
            model,
            st.data.loader(src, batch_size=args.batch_size, transform=tf),
            max_batches=args.max_batches,
            exclude=[head],
            progress=not args.no_progress,
            device=dev,
        )
    sim = st.compare(pre, new, measure=args.measure)
    plan = st.plan_freeze(sim, scope=args.scope, **_plan_rule(args))
    plan.save(args.out)
    print(plan.summary_text())
    print(f"-> {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    path = make_report(args.run, out=args.out, option="--out")
    print(f"report -> {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .exporting import export, sidecar

    path = export(args.run, args.out, format=args.format)
    beside = path if args.format == "folder" else sidecar(path)
    what = (
        "config.json + model.safetensors"
        if args.format == "folder"
        else f"preprocessing in {beside}"
    )
    print(
        f"{args.format} -> {path} ({what}); input: the preprocessed (B, C, H, W) float batch, "
        "output: logits"
    )
    return 0


# ---------------------------------------------------------------------- parser


def _number(text: str, what: str, ok: Any) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; pass {what}") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; pass {what}")
    return value


def _count(text: str, what: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; pass {what}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; pass {what}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate)."""
    return _number(text, "a positive finite number, e.g. 1e-3", lambda v: v > 0)


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0 (weight decay)."""
    return _number(text, "a finite number >= 0, e.g. 1e-4", lambda v: v >= 0)


def open_fraction(text: str) -> float:
    """argparse type: a fraction in (0, 1) (the validation share)."""
    return _number(text, "a fraction between 0 and 1, e.g. 0.2", lambda v: 0 < v < 1)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (epochs, batch size, patience)."""
    return _count(text, "an integer >= 1", 1)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (usage mistakes exit 2 like every other user mistake)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def unit_fraction(text: str) -> float:
    """argparse type: a fraction in [0, 1) (the warm-up share)."""
    return _number(text, "a fraction in [0, 1), e.g. 0.1", lambda v: 0 <= v < 1)


_TYPES = {
    "positive_int": positive_int,
    "positive_float": positive_float,
    "nonneg_float": nonneg_float,
    "unit_fraction": unit_fraction,
}


def recipe_args(
    q: argparse.ArgumentParser,
    names: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """The recipe flags, generated from the :class:`~smart_transfer.spec.Recipe` fields' metadata
    (``names``: only these fields). Their argparse default is None, so a flag not given keeps
    the Recipe's default, which ``--help`` shows; ``defaults`` / ``helps`` override a
    subcommand's own (the demo's fixed learning rate)."""
    defaults, helps = defaults or {}, helps or {}
    groups: dict[str, Any] = {}
    for f in fields(Recipe):
        flag = f.metadata.get("flag")
        if not flag or (names is not None and f.name not in names):
            continue
        cli = dict(f.metadata["cli"])
        group, kind = cli.pop("group", None), cli.pop("type", None)
        if group is not None and group not in groups:
            groups[group] = q.add_mutually_exclusive_group()
        target = q if group is None else groups[group]
        default = defaults.get(f.name)
        shown = default_text(f) if default is None else default
        text = f"{helps.get(f.name, f.metadata['help'])} (default {shown})"
        if kind == "bool":
            target.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=text
            )
        else:
            target.add_argument(flag, type=_TYPES.get(kind, str), default=default, help=text, **cli)


_EXAMPLES = argparse.RawDescriptionHelpFormatter


def _io_args(q: argparse.ArgumentParser) -> None:
    """--on-error, --device and the deprecated --image-size."""
    q.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default=DataSpec.on_error,
        help="an unreadable image file or an empty class folder: stop naming it (raise), or "
        "leave it out and say so in the summary (skip) (default raise)",
    )
    q.add_argument(
        "--device",
        default=None,
        help="where the network runs: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps "
        "(default auto)",
    )
    q.add_argument(
        "--image-size",
        type=_size,
        default=None,
        help="deprecated alias of --size (default: --size)",
    )


def _plan_args(q: argparse.ArgumentParser) -> None:
    """What a freeze plan freezes: --threshold, --quantile or --budget."""
    g = q.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="freeze channels with similarity >= T")
    g.add_argument(
        "--quantile", type=float, help="freeze this fraction of each layer (default 0.5)"
    )
    g.add_argument("--budget", type=float, help="fraction of plannable parameters left trainable")


def _data_args(q: argparse.ArgumentParser, required: bool = True) -> None:
    """The data and its split (a DataSpec), the backbone, size and D_pre source."""
    q.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="a name (smart-transfer list backbones) or a weights file (default "
        "efficientnet_lite0)",
    )
    q.add_argument(
        "--data",
        required=required,
        help=DATA_HELP
        + " (no default: "
        + ("required" if required else "required unless --resume")
        + ")",
    )
    q.add_argument(
        "--per-class",
        type=_per_class,
        default=None,
        metavar="N|all",
        help="labelled images drawn per class for train+validation (default all)",
    )
    q.add_argument(
        "--val-fraction",
        type=open_fraction,
        default=DataSpec.val_fraction,
        help=f"validation share of the drawn images (default {DataSpec.val_fraction})",
    )
    q.add_argument(
        "--test-data",
        default=None,
        help="a separate test set (folder, CSV or .npz); then nothing of --data is held out "
        "(default none)",
    )
    q.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="share of every class of --data held out as the test split, drawn first (default 0.2 "
        "for a folder/CSV/.npz without --test-data; Fashion-MNIST uses its test split)",
    )
    q.add_argument(
        "--seed", type=int, default=0, help="seed of the draw and of training (default 0)"
    )
    q.add_argument("--size", type=_size, default=None, help=SIZE_HELP)
    q.add_argument(
        "--source",
        default=None,
        help="D_pre: 'batchnorm' (default), a saved profile or a folder of source images",
    )
    _io_args(q)


def _add_demo(sub: Any) -> None:
    """demo: compare-strategies on its embedded default."""
    d = sub.add_parser(
        "demo",
        help="EfficientNet-Lite0 -> Fashion-MNIST, 200 images: advice and five strategies side by "
        "side",
        epilog="example: smart-transfer demo --quick   (writes runs/demo/report.html)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--backbone", default="efficientnet_lite0", help="default efficientnet_lite0")
    d.add_argument(
        "--per-class",
        type=_per_class,
        default=20,
        metavar="N|all",
        help="labelled images per class, validation included (default 20)",
    )
    d.add_argument("--size", type=int, default=96, help="input resolution (default 96 on CPU)")
    recipe_args(
        d,
        ("steps", "epochs", "lr", "batch_size"),
        defaults={"lr": DEMO_LR},
        helps={"lr": "one fixed learning rate: the demo does not search train's grid"},
    )
    d.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="a fixed test subset of this size (default: all 10,000)",
    )
    d.add_argument(
        "--auto-budget",
        type=float,
        default=300.0,
        help="seconds for auto's candidates (default 300)",
    )
    d.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_STEPS} optimizer steps and a fixed 2,000-image test subset",
    )
    d.add_argument("--seed", type=int, default=0, help="default 0")
    d.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, then MPS, then CPU; default), cuda, mps or cpu",
    )
    d.add_argument("--out", default="runs/demo", help="default runs/demo")
    d.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    d.set_defaults(func=cmd_demo)


def _add_compare_strategies(sub: Any) -> None:
    """compare-strategies: several strategies on the same splits, over seeds."""
    cs = sub.add_parser(
        "compare-strategies",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train several strategies on the same splits of your data, over seeds; test each "
        "once; one table",
        epilog="example:\n  smart-transfer compare-strategies --data photos/ --strategies "
        "linear-probe lp-ft smart-kernel random-mask --seeds 0 1 2 --size 96 --out "
        "runs/cmp\nwrites runs/cmp/comparison.json, comparison.md, report.html and "
        "seed-S/STRATEGY/ run folders",
    )
    cs.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="a name (smart-transfer list backbones); default efficientnet_lite0",
    )
    cs.add_argument("--data", required=True, help=DATA_HELP + " (no default: required)")
    cs.add_argument(
        "--strategies",
        nargs="+",
        required=True,
        metavar="STRATEGY",
        help="strategies to compare (smart-transfer list strategies; no default: required)",
    )
    cs.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        metavar="SEED",
        help="one split and one training per seed (default: 0)",
    )
    cs.add_argument(
        "--per-class",
        type=_per_class,
        default=None,
        metavar="N|all",
        help="labelled images per class for training + validation, or 'all' (default all)",
    )
    cs.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="validation share of those images (default 0.2)",
    )
    cs.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of every class held out for the test first (default 0.2; Fashion-MNIST: its "
        "test split)",
    )
    cs.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="test on a fixed subset of this many test images (default: all)",
    )
    cs.add_argument(
        "--size", type=int, default=None, help="network input size (default: the backbone's)"
    )
    recipe_args(cs, ("steps", "epochs", "lr", "lr_grid", "batch_size"))
    cs.add_argument(
        "--auto-budget",
        type=float,
        default=None,
        help="seconds for auto's candidates (default: auto's own, 900)",
    )
    cs.add_argument(
        "--report",
        metavar="STRATEGY",
        default=None,
        help="the strategy whose run the report shows (default: the best by mean validation "
        "accuracy)",
    )
    cs.add_argument(
        "--no-advice",
        action="store_true",
        help="skip the advisor (default: advise on the first seed's images)",
    )
    cs.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="an unreadable image file or an empty class folder: stop naming it (raise), or "
        "leave it out and say so in the summary (skip) (default raise)",
    )
    cs.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, then MPS, then CPU; default), cuda, mps or cpu",
    )
    cs.add_argument("--out", required=True, help="the comparison folder (no default: required)")
    cs.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the runs of an earlier comparison in --out",
    )
    cs.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    cs.set_defaults(func=cmd_compare_strategies)


def _add_profile_compare(sub: Any) -> None:
    """profile and compare: the method's steps one at a time."""
    pr = sub.add_parser(
        "profile",
        help="profile a backbone on a dataset (or from its BatchNorm statistics)",
        formatter_class=_EXAMPLES,
        epilog="examples:\n  smart-transfer profile --data photos/ --size 96 --out new.pt\n"
        "  smart-transfer profile --source batchnorm --out pre.pt",
    )
    pr.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="a name (smart-transfer list backbones) or a weights file (default "
        "efficientnet_lite0)",
    )
    pr.add_argument(
        "--source",
        choices=("data", "batchnorm"),
        default="data",
        help="profile images (data) or read the BatchNorm running statistics (default data)",
    )
    pr.add_argument("--data", default="fashion-mnist", help=DATA_HELP + " (default fashion-mnist)")
    pr.add_argument(
        "--split", default="train", help="Fashion-MNIST's split: train or test (default train)"
    )
    pr.add_argument("--size", type=_size, default=None, help=SIZE_HELP)
    _io_args(pr)
    pr.add_argument(
        "--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)"
    )
    pr.add_argument(
        "--max-batches",
        type=positive_int,
        default=None,
        help="stop after this many batches (default: all)",
    )
    pr.add_argument("--out", required=True, help="the profile file to write (.pt; required)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_profile)

    c = sub.add_parser(
        "compare",
        help="compare two saved profiles, optionally write a freeze plan",
        formatter_class=_EXAMPLES,
        epilog="example:\n  smart-transfer compare pre.pt new.pt --quantile 0.5 --plan plan.json",
    )
    c.add_argument("pre", help="the profile of the pretraining data (D_pre)")
    c.add_argument("new", help="the profile of the new data (D_new)")
    c.add_argument(
        "--measure",
        default="gaussian_kl",
        help="a measure (smart-transfer list measures); default gaussian_kl",
    )
    c.add_argument("--out", help="write the similarity as JSON (default: not written)")
    c.add_argument("--plan", help="write a freeze plan as JSON (default: not written)")
    c.add_argument(
        "--scope",
        choices=("kernel", "layer"),
        default="kernel",
        help="freeze single kernels or whole layers (default kernel)",
    )
    _plan_args(c)
    c.set_defaults(func=cmd_compare)


def _add_train(sub: Any) -> None:
    """train: one strategy on few labelled images (or --resume a run)."""
    t = sub.add_parser(
        "train",
        help="train a backbone on few labelled images with one strategy",
        formatter_class=_EXAMPLES,
        epilog="examples:\n  smart-transfer train --backbone efficientnet_lite0 --data "
        "fashion-mnist --per-class 20 --strategy smart-kernel --steps 300 --seed 0 --out runs/x\n  "
        "smart-transfer train --resume runs/x\n  torchrun --nproc-per-node 2 -m smart_transfer.cli "
        "train ... --out runs/ddp",
    )
    _data_args(t, required=False)
    t.add_argument(
        "--strategy", default="auto", help="see: smart-transfer list strategies (default auto)"
    )
    recipe_args(t)
    t.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a strategy option, e.g. quantile=0.3 (repeatable; default: the strategy's own, see "
        "smart-transfer list strategies)",
    )
    t.add_argument("--out", help="the run folder (no default: required unless --resume)")
    t.add_argument(
        "--resume",
        metavar="DIR",
        help="continue an interrupted run (needs nothing but its folder; default: a new run)",
    )
    t.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")
    t.set_defaults(func=cmd_train)


def _add_run_commands(sub: Any) -> None:
    """evaluate, predict and advise: what a user does with data and a run."""
    e = sub.add_parser(
        "evaluate",
        help="test a finished run once; writes DIR/metrics.json",
        formatter_class=_EXAMPLES,
        epilog="example:\n  smart-transfer evaluate runs/x --data fashion-mnist",
    )
    e.add_argument("run", help="the run folder (the --out of train)")
    e.add_argument(
        "--data", help="the data the run was trained on (default: as recorded in the run)"
    )
    e.add_argument(
        "--test-data",
        help="a separate test set (folder, CSV or .npz) whose class names are the run's "
        "(default: the run's held-out test split in manifest.json)",
    )
    e.add_argument(
        "--overwrite", action="store_true", help="evaluate again although metrics.json exists"
    )
    e.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="an unreadable --test-data image: stop naming it, or leave it out (default raise)",
    )
    e.add_argument(
        "--device", default=None, help="where the network runs: auto, cpu, cuda, mps (default auto)"
    )
    e.set_defaults(func=cmd_evaluate)

    pd = sub.add_parser(
        "predict",
        help="predict the class of new images with a finished run; writes a CSV",
        formatter_class=_EXAMPLES,
        epilog="examples:\n  smart-transfer predict runs/photos new_photos/ --top-k 3 --out "
        "predictions.csv\n  smart-transfer predict runs/photos 'new/*.jpg' photo.png --on-error "
        "skip",
    )
    pd.add_argument("run", metavar="RUN", help="the run folder (the --out of smart-transfer train)")
    pd.add_argument(
        "images",
        nargs="+",
        metavar="IMAGES",
        help="image files, folders (flat or nested) or glob patterns (quote them)",
    )
    pd.add_argument(
        "--top-k",
        type=int,
        default=3,
        metavar="K",
        help="classes listed per image, best first (default 3)",
    )
    pd.add_argument(
        "--out",
        default="predictions.csv",
        metavar="CSV",
        help="the CSV to write (default predictions.csv in the current folder)",
    )
    pd.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps (default auto)",
    )
    pd.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="N",
        help="images per forward pass (default 64)",
    )
    pd.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="an unreadable file: stop naming it (raise) or leave it out and list it (skip); "
        "default raise",
    )
    pd.set_defaults(func=cmd_predict)

    a = sub.add_parser(
        "advise",
        help="which strategy fits the data, with the evidence",
        formatter_class=_EXAMPLES,
        epilog="example:\n  smart-transfer advise --backbone efficientnet_lite0 --data photos/ "
        "--per-class 20",
    )
    _data_args(a)
    a.add_argument("--out", help="also write the advice as JSON")
    a.set_defaults(func=cmd_advise)


def _add_tools(sub: Any) -> None:
    """plan, report, export and list."""
    pl = sub.add_parser(
        "plan",
        help="profile, compare and write a freeze plan in one step",
        formatter_class=_EXAMPLES,
        epilog="example:\n  smart-transfer plan --data fashion-mnist --size 96 --max-batches 10 "
        "--out plan.json",
    )
    pl.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="a name (smart-transfer list backbones) or a weights file (default "
        "efficientnet_lite0)",
    )
    pl.add_argument("--data", required=True, help=DATA_HELP)
    pl.add_argument(
        "--source",
        default=None,
        help="D_pre: 'batchnorm' (default), a saved profile or an image folder",
    )
    pl.add_argument("--size", type=_size, default=None, help=SIZE_HELP)
    _io_args(pl)
    pl.add_argument(
        "--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)"
    )
    pl.add_argument(
        "--max-batches",
        type=positive_int,
        default=None,
        help="stop after this many batches (default: all)",
    )
    pl.add_argument(
        "--measure",
        default="gaussian_kl",
        help="a measure (smart-transfer list measures); default gaussian_kl",
    )
    pl.add_argument(
        "--scope",
        choices=("kernel", "layer"),
        default="kernel",
        help="freeze single kernels or whole layers (default kernel)",
    )
    pl.add_argument("--out", required=True, help="the plan file to write (.json; required)")
    pl.add_argument("--no-progress", action="store_true", help="no progress bar")
    _plan_args(pl)
    pl.set_defaults(func=cmd_plan)

    rp = sub.add_parser(
        "report",
        help="write DIR/report.html for a run",
        formatter_class=_EXAMPLES,
        epilog="example:\n  smart-transfer report runs/x",
    )
    rp.add_argument("run", help="the run folder (or a compare-strategies --out)")
    rp.add_argument("--out", default=None, help="where the HTML goes (default DIR/report.html)")
    rp.set_defaults(func=cmd_report)

    ex = sub.add_parser(
        "export",
        help="write a run's network as TorchScript, ONNX or a timm-style folder",
        formatter_class=_EXAMPLES,
        epilog="examples:\n  smart-transfer export runs/x --format onnx --out model.onnx\n"
        "  smart-transfer export runs/x --format folder --out exported/x\n"
        "the network takes the preprocessed (B, C, H, W) float batch and returns logits; "
        "the preprocessing goes beside it\n(model.onnx -> model.json) or in the folder's "
        "config.json",
    )
    ex.add_argument("run", help="the run folder (the --out of train)")
    ex.add_argument(
        "--format",
        choices=("torchscript", "onnx", "folder"),
        default="torchscript",
        help="torchscript (a .pt file), onnx, or folder (config.json + model.safetensors) "
        "(default torchscript)",
    )
    ex.add_argument("--out", required=True, help="the file to write (a folder for --format folder)")
    ex.set_defaults(func=cmd_export)

    ls = sub.add_parser(
        "list",
        help="list measures, backbones, strategies or the layers of a backbone",
        formatter_class=_EXAMPLES,
        epilog="examples:\n  smart-transfer list strategies\n  smart-transfer list layers "
        "--backbone small_vgg",
    )
    ls.add_argument(
        "what", choices=("measures", "backbones", "layers", "strategies"), help="what to list"
    )
    ls.add_argument(
        "--backbone", default="efficientnet_lite0", help="whose layers (default efficientnet_lite0)"
    )
    ls.set_defaults(func=cmd_list)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="smart-transfer", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (any position)"
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"smart-transfer {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    _add_demo(sub)
    _add_compare_strategies(sub)
    _add_profile_compare(sub)
    _add_train(sub)
    _add_run_commands(sub)
    _add_tools(sub)
    return p


_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))


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
        return _run(argv)
    except (Exception, KeyboardInterrupt, Terminated) as e:  # noqa: BLE001 - reported here
        if debug:
            traceback.print_exc()
        return _exit_status(e)
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        if isinstance(e, Terminated):
            raise
        return e.code if isinstance(e.code, int) else 2
    args._given = _given_flags(argv)
    _deprecated_image_size(args)
    return int(args.func(args))


def _exit_status(e: BaseException) -> int:
    """Say what ended the command in one line on stderr; its exit status."""
    if isinstance(e, KeyboardInterrupt):  # also TrainingInterrupted, which says what was saved
        said = f": {_one_line(e)}" if str(e) else ""
        print(f"interrupted (Ctrl-C){said}; files written before are intact", file=sys.stderr)
        return 130
    if isinstance(e, SmartTransferError):
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    if isinstance(e, Terminated):
        print("terminated (SIGTERM); files written before are intact", file=sys.stderr)
        return 143
    if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:  # disk full, ulimit -f
        from ._atomic import storage_error

        full = storage_error(e, e.filename or "a file")
        if full is not None:
            print(f"error: {_one_line(full)}", file=sys.stderr)
            return 2
    print(
        f"internal error: {type(e).__name__}: {_one_line(e)} (run again with --debug for "
        "the traceback)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
