"""The practitioner's entry points: :func:`train`, :func:`evaluate`, :func:`advise`.

``train`` resolves the backbone, the data and the transforms once, hands a strategy a plain
:class:`~smart_transfer.strategies.Context`, and returns a :class:`TrainResult`; ``evaluate``
reads a test set once; ``advise`` says which strategy fits the data and why.
"""

from __future__ import annotations

import copy
import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__
from ._atomic import PathLike, atomic_open
from .errors import ConfigError, DataError
from .strategies import Context, Recipe, get_strategy
from .strategies.advice import Advice
from .strategies.base import PATIENCE
from .training import checkpoint as ckpt

SCHEMA_VERSION = 1
SAMPLES_PER_CLASS = 4  # images per class kept in samples.safetensors for the report


# --------------------------------------------------------------------------- data


def _dataset_and_indices(data: Any, what: str) -> tuple[Any, Tensor]:
    """A dataset, ``(dataset, indices)`` or an iterable of raw ``(x, y)`` batches -> (dataset, idx)."""
    from torch.utils.data import Dataset

    from .data.tensor_dataset import TensorImageDataset

    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Dataset):
        idx = torch.as_tensor(data[1], dtype=torch.int64).flatten()
        return data[0], idx
    if isinstance(data, Dataset):
        return data, torch.arange(len(data))  # type: ignore[arg-type]
    if data is None or isinstance(data, (str, bytes, Tensor)):
        raise DataError(
            f"{what} must be a dataset, (dataset, indices) or an iterable of (images, labels) "
            f"batches, got {type(data).__name__}"
        )
    xs, ys = [], []
    try:
        for batch in data:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise DataError(
                    f"{what} yielded a {type(batch).__name__}; batches must be (images, labels) pairs"
                )
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]).flatten())
    except TypeError:
        raise DataError(f"{what} is not iterable ({type(data).__name__})") from None
    if not xs:
        raise DataError(f"{what} yielded no batches")
    y = torch.cat(ys).to(torch.int64)
    k = int(y.max()) + 1
    return TensorImageDataset(torch.cat(xs), y, [str(i) for i in range(k)]), torch.arange(len(y))


def _targets(ds: Any, idx: Tensor) -> Tensor:
    t = getattr(ds, "targets", None)
    if t is not None:
        return torch.as_tensor(t)[idx]
    return torch.tensor([int(ds[int(i)][1]) for i in idx])


def _classes(ds: Any, targets: Tensor) -> list[str]:
    names = getattr(ds, "classes", None)
    if names:
        return [str(c) for c in names]
    return [str(i) for i in range(int(targets.max()) + 1)]


# --------------------------------------------------------------------------- result


@dataclass
class TrainResult:
    """A trained model and everything about how it was made."""

    model: nn.Module
    strategy: str
    plan: Any  # the FreezePlan applied, or None
    val_accuracy: float
    history: list[dict[str, float]]
    config: dict[str, Any]  # everything resolved
    timings: dict[str, float]
    chosen: dict[str, Any] = field(default_factory=dict)  # hyper-parameters chosen on validation
    tried: list[dict[str, Any]] = field(default_factory=list)
    advice: Advice | dict | None = None
    out: Path | None = None

    @property
    def frozen_fraction(self) -> float:
        """Fraction of the model's parameters that training left as they were pretrained."""
        return float(self.config.get("frozen_fraction", 0.0))

    def save(self, out: PathLike) -> Path:
        """Write the run folder: config.json, result.json, log.jsonl, model.safetensors, plan.json."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", self.config)
        _write_json(out / "result.json", {
            "schema_version": SCHEMA_VERSION, "strategy": self.strategy,
            "val_accuracy": self.val_accuracy, "chosen": self.chosen, "tried": self.tried,
            "timings": self.timings, "history": self.history,
            "frozen_fraction": self.frozen_fraction,
            "plan": None if self.plan is None else self.plan.summary(),
        })
        with atomic_open(out / "log.jsonl", "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(h) + "\n" for h in self.history))
        ckpt.save_weights(out / "model.safetensors", self.model.state_dict(),
                          metadata={"strategy": self.strategy, "backbone": str(self.config.get("backbone"))})
        if self.plan is not None:
            self.plan.save(out / "plan.json")
        if self.advice is not None:
            adv = self.advice.to_dict() if isinstance(self.advice, Advice) else self.advice
            _write_json(out / "advice.json", adv)
        self.out = out
        return out

    @classmethod
    def load(cls, folder: PathLike, model: nn.Module | None = None) -> TrainResult:
        """Read a run folder back; the model is rebuilt from its backbone name (or pass ``model``:
        the backbone it was trained from, for a run made from an ``nn.Module``)."""
        from .freeze import FreezePlan

        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise DataError(f"{str(folder)!r} is not a run folder (no config.json); pass the --out of a train run")
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        res_path = folder / "result.json"
        if not res_path.is_file():
            raise DataError(f"the run in {str(folder)!r} has not finished (no result.json); resume it first")
        res = json.loads(res_path.read_text(encoding="utf-8"))
        net = build_model(config, model)
        state = ckpt.load_weights(folder / "model.safetensors")
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise DataError(f"model.safetensors in {str(folder)!r} does not fit {config.get('backbone')}: "
                            f"{str(exc).splitlines()[0]}") from None
        plan = FreezePlan.load(folder / "plan.json") if (folder / "plan.json").is_file() else None
        adv = folder / "advice.json"
        return cls(
            model=net, strategy=res["strategy"], plan=plan, val_accuracy=res["val_accuracy"],
            history=res["history"], config=config, timings=res["timings"], chosen=res["chosen"],
            tried=res["tried"], advice=json.loads(adv.read_text()) if adv.is_file() else None, out=folder,
        )

    def transform(self) -> Callable[[Tensor], Tensor]:
        """The evaluation transform this model was trained with."""
        from .data import transforms_for

        return transforms_for(self.model, train=False, size=self.config.get("size"))


def _write_json(path: Path, obj: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=_jsonable)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "to_dict"):
        return v.to_dict()
    return repr(v)


def build_model(config: dict[str, Any], backbone: nn.Module | None = None) -> nn.Module:
    """The untrained network a run's weights fit (backbone, new head, probe wrapper)."""
    from .models import load_backbone, replace_head
    from .strategies.concat import ConcatProbe
    from .strategies.probe import ProbeModel

    if backbone is None:
        name = config.get("backbone")
        if not config.get("backbone_is_name", True):
            raise ConfigError(
                f"this run was trained from a model object ({name}); pass it: TrainResult.load(dir, model=...)"
            )
        backbone = load_backbone(name, pretrained=False)  # type: ignore[arg-type]
    else:
        backbone = copy.deepcopy(backbone)
    k = int(config["num_classes"])
    kind = config.get("model", {"kind": "backbone"})
    replace_head(backbone, k)
    if config.get("head") == "mlp":
        from .models.heads import mlp_head

        mlp_head(backbone, k)
    if kind["kind"] == "probe":
        return ProbeModel(backbone, kind["layer"], int(kind["in_features"]), k)
    if kind["kind"] == "concat":
        return ConcatProbe(backbone, kind["layers"], nn.Linear(int(kind["in_features"]), k), k)
    return backbone


# --------------------------------------------------------------------------- train


def _resolve_backbone(backbone: Any) -> tuple[Callable[[], nn.Module], str, bool]:
    from .models import load_backbone

    if isinstance(backbone, nn.Module):
        template = copy.deepcopy(backbone)
        return (lambda: copy.deepcopy(template)), type(backbone).__name__, False
    if isinstance(backbone, (str, Path)):
        template = load_backbone(backbone)
        return (lambda: copy.deepcopy(template)), str(backbone), True
    raise ConfigError(f"backbone must be a name (see list_backbones()) or an nn.Module, got {type(backbone).__name__}")


def train(
    backbone: Any,
    train_data: Any,
    val_data: Any = None,
    strategy: str = "auto",
    *,
    steps: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    lr_grid: Any = None,
    batch_size: int = 32,
    optimizer: str = "adamw",
    weight_decay: float = 1e-4,
    head_lr_mult: float = 10.0,
    warmup: float = 0.1,
    patience: int | None = PATIENCE,
    eval_every: int | None = None,
    size: int | None = None,
    transform: Any = None,
    source: Any = None,
    seed: int = 0,
    out: PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    val_fraction: float = 0.2,
    amp: str | None = None,
    channels_last: bool = True,
    sync_bn: bool = False,
    data_info: dict[str, Any] | None = None,
    **options: Any,
) -> TrainResult:
    """Train ``backbone`` on ``train_data`` with ``strategy`` (see :func:`list_strategies`).

    ``backbone``: a name (``load_backbone``) or an ``nn.Module`` (its head is replaced to fit the
    classes). ``train_data`` / ``val_data``: a dataset, ``(dataset, indices)`` or an iterable of
    raw ``(x, y)`` batches; without ``val_data`` a stratified ``val_fraction`` of the training
    samples is carved out. The backbone's own transforms are used (evaluation transform for
    profiles and probe features, augmentation for training) unless ``transform=`` gives one
    callable or a ``(train, eval)`` pair. ``source``: D_pre for the smart strategies (a loader,
    a folder of images or a saved profile; default the BatchNorm statistics). ``out``: the run
    folder (checkpoints every validation, ``resume=True`` continues there). ``options`` go to the
    strategy. Under ``torch.distributed`` each rank trains on its share of every batch.

    The recipe of every gradient-trained strategy (see :class:`~smart_transfer.strategies.Recipe`):
    ``steps`` optimizer steps (default 300) or, instead, ``epochs`` passes over the training
    images; validation every ``eval_every`` steps, the best state kept, early stopping after
    ``patience`` steps without a better validation score; the pretrained layers' learning rate
    chosen on validation from ``lr_grid`` (default 1e-4, 3e-4, 1e-3; lowest validation loss,
    ties to the higher accuracy), or fixed with ``lr=``. ``amp="bf16"`` autocasts on CUDA and
    on CPUs (see :func:`smart_transfer.training.cpu_bf16_supported`).
    """
    from .data import few_shot, loader, transforms_for
    from .strategies.base import check_options
    from .strategies.registry import list_strategies

    started = time.perf_counter()
    info = get_strategy(strategy)
    check_options(strategy, options, info.options)
    head = _head_option(options)
    steps, lr, grid = _budget_and_rates(steps, epochs, lr, lr_grid)
    recipe = Recipe(steps=steps, epochs=epochs, lr=lr, lr_grid=grid, head_lr_mult=head_lr_mult,
                    weight_decay=weight_decay, optimizer=optimizer, batch_size=batch_size, warmup=warmup,
                    patience=patience, eval_every=eval_every, amp=amp, channels_last=channels_last)
    if optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"unknown optimizer {optimizer!r}; use 'adamw' or 'sgd'")
    for name, value in (("patience", patience), ("eval_every", eval_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer (optimizer steps) or None, got {value!r}")
    out_dir = Path(out) if out is not None else None
    if resume and (out_dir is None or not (out_dir / "config.json").is_file()):
        raise ConfigError(f"nothing to resume: {str(out_dir)!r} holds no run (no config.json)")

    ds, idx = _dataset_and_indices(train_data, "train_data")
    if val_data is None:
        t = _targets(ds, idx)
        tr, va = few_shot(t, per_class=None, val_fraction=val_fraction, seed=seed)
        idx, val_ds, val_idx = idx[tr], ds, idx[va]
    else:
        val_ds, val_idx = _dataset_and_indices(val_data, "val_data")
    if len(idx) == 0 or len(val_idx) == 0:
        raise DataError("training and validation sets must both be non-empty; give more samples per class")
    targets = _targets(ds, idx)
    classes = _classes(ds, torch.cat([targets, _targets(val_ds, val_idx)]))
    num_classes = len(classes)

    torch.manual_seed(seed)  # a backbone without pretrained weights is initialised from the seed
    make, backbone_name, is_name = _resolve_backbone(backbone)
    from .models import replace_head

    template = make()
    if transform is None:
        train_tf, eval_tf = transforms_for(template, train=True, size=size), transforms_for(template, train=False, size=size)
    elif isinstance(transform, (tuple, list)) and len(transform) == 2:
        train_tf, eval_tf = transform
    elif callable(transform):
        train_tf = eval_tf = transform
    else:
        raise ConfigError("transform must be a callable or a (train, eval) pair of callables")
    del template
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from .training.distributed import world as _world

    rank, world = _world()
    if sync_bn and world > 1 and dev.type != "cuda":
        raise ConfigError(f"sync_bn needs CUDA (SyncBatchNorm works on GPU modules only), and this run is on "
                          f"{dev.type!r}; leave --sync-bn / sync_bn=True off, or train on CUDA devices")

    def make_model() -> nn.Module:
        m = replace_head(make(), num_classes)
        if sync_bn and world > 1:
            m = nn.SyncBatchNorm.convert_sync_batchnorm(m)
        return m

    train_loader: Any = loader(ds, idx, batch_size=batch_size, shuffle=True, seed=seed)
    if world > 1:
        from .training.distributed import ShardedBatches

        train_loader = ShardedBatches(train_loader, rank, world, train_tf)
        train_tf_ctx: Any = _identity
    else:
        train_tf_ctx = train_tf
    counts = torch.bincount(targets, minlength=num_classes).float()
    ctx = Context(
        make_model=make_model, backbone_name=backbone_name, num_classes=num_classes,
        train=train_loader, val=loader(val_ds, val_idx, batch_size=max(batch_size, 128)),
        train_eval=loader(ds, idx, batch_size=max(batch_size, 64)),
        train_tf=train_tf_ctx, eval_tf=eval_tf, recipe=recipe, seed=seed, out=out_dir,
        resume=resume, progress=progress, source=source, device=dev,
        samples_per_class=float((len(idx) + len(val_idx)) / num_classes), head=head,
    )
    config = {
        "schema_version": SCHEMA_VERSION, "version": __version__, "strategy": strategy,
        "options": {k: _plain(v) for k, v in options.items()}, "head": head, "backbone": backbone_name,
        "backbone_is_name": is_name, "num_classes": num_classes, "class_names": classes,
        "size": size, "seed": seed, "epochs": epochs, "steps": steps, "recipe": recipe.to_dict(),
        "samples": int(len(idx) + len(val_idx)), "train_samples": len(idx),
        "val_samples": len(val_idx), "per_class_counts": counts.tolist(),
        "source": "batchnorm" if source is None else str(source) if isinstance(source, (str, Path)) else type(source).__name__,
        "transform": "backbone" if transform is None else "custom", "device": str(dev),
        "world_size": world, "sync_bn": sync_bn, "data": data_info or {},
        "torch": torch.__version__, "python": platform.python_version(), "strategies": list_strategies(),
    }
    if out_dir is not None and rank == 0:
        if resume:
            old = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
            for key in ("strategy", "backbone", "seed", "epochs", "steps", "samples", "options"):
                if old.get(key) != config[key]:
                    raise ConfigError(f"cannot resume {str(out_dir)!r}: it was run with {key}={old.get(key)!r}, "
                                      f"not {config[key]!r}")
        _write_json(out_dir / "config.json", config)
        _save_samples(out_dir / "samples.safetensors", val_ds, val_idx, _targets(val_ds, val_idx), num_classes)

    t0 = time.perf_counter()
    outcome = info.run(ctx, **options)
    train_s = time.perf_counter() - t0
    model = outcome.model
    config["model"] = outcome.model_kind
    config["frozen_fraction"] = _frozen_fraction(model, outcome)
    history = outcome.fit.history if outcome.fit is not None else []
    advice = outcome.extra.get("advice")
    result = TrainResult(
        model=model, strategy=strategy, plan=outcome.plan, val_accuracy=float(outcome.val_accuracy),
        history=history, config=config,
        timings={"train_s": train_s, "total_s": time.perf_counter() - started},
        chosen=_plain(outcome.chosen), tried=_plain(outcome.tried), advice=advice,
    )
    if out_dir is not None and rank == 0:
        result.save(out_dir)
        if "profile_pre" in outcome.extra:
            outcome.extra["profile_pre"].save(out_dir / "profile_pre.pt")
            outcome.extra["profile_new"].save(out_dir / "profile_new.pt")
        if outcome.log_tag is not None:
            src_log = out_dir / "checkpoints" / outcome.log_tag / "log.jsonl"
            if src_log.is_file():
                shutil.copyfile(src_log, out_dir / "log.jsonl")
    elif out_dir is not None:
        result.out = out_dir
    return result


def _head_option(options: dict[str, Any]) -> str:
    """Take the ``head`` option out of a gradient-trained strategy's options (the context
    carries it to every model the strategy trains)."""
    head = options.pop("head", "linear")
    if head not in ("linear", "mlp"):
        raise ConfigError(f"head must be 'linear' or 'mlp' (seed 001's head), got {head!r}")
    return str(head)


def _budget_and_rates(steps: Any, epochs: Any, lr: Any, lr_grid: Any) -> tuple[int | None, float, tuple[float, ...] | None]:
    """``(steps, lr, lr_grid)`` of the recipe: the step budget (default 300) unless epochs are
    given; the grid searched on validation (default 1e-4, 3e-4, 1e-3) unless ``lr`` fixes one rate."""
    import math

    from .strategies.base import LR_GRID, STEPS

    for name, value in (("steps", steps), ("epochs", epochs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if steps is not None and epochs is not None:
        raise ConfigError("give the budget as steps= (optimizer steps) or epochs=, not both")
    if steps is None and epochs is None:
        steps = STEPS
    if lr is not None and lr_grid is not None:
        raise ConfigError("give lr= (one fixed rate) or lr_grid= (rates chosen on validation), not both")
    grid = None if lr is not None else (LR_GRID if lr_grid is None else
                                        tuple([lr_grid] if isinstance(lr_grid, (int, float)) else lr_grid))
    for value in ([lr] if lr is not None else list(grid or ())):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"a learning rate must be a positive number, got {value!r} (lr= / lr_grid=, --lr / --lr-grid)")
    if grid is not None and not grid:
        raise ConfigError("lr_grid is empty; give at least one learning rate (or lr= for a fixed one)")
    return steps, float(lr if lr is not None else grid[0] if grid and len(grid) == 1 else 3e-4), (
        tuple(float(g) for g in grid) if grid else None)


def _frozen_fraction(model: nn.Module, outcome: Any) -> float:
    """Frozen parameters over all parameters: the plan's, or everything but the head for
    strategies that train only a classifier."""
    from .models.heads import find_head

    total = sum(p.numel() for p in model.parameters())
    if outcome.plan is not None:
        return sum(outcome.plan.frozen_params(n) for n in outcome.plan.masks) / max(total, 1)
    if outcome.extra.get("head_only"):
        head = getattr(model, "head", None) if outcome.model_kind["kind"] != "backbone" else find_head(model)[1]
        trainable = sum(p.numel() for p in head.parameters()) if head is not None else 0
        return 1 - trainable / max(total, 1)
    return 0.0


def _identity(x: Tensor) -> Tensor:
    return x


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, Tensor):
        return v.tolist()
    return repr(v)


def _save_samples(path: Path, ds: Any, idx: Tensor, targets: Tensor, num_classes: int,
                  per_class: int = SAMPLES_PER_CLASS) -> None:
    picks = []
    for c in range(num_classes):
        picks += idx[targets == c][:per_class].tolist()
    images = [torch.as_tensor(ds[i][0]) for i in picks]
    if not images or len({tuple(im.shape) for im in images}) != 1:
        return  # images of different sizes: no sample sheet
    x = torch.stack(images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    y = torch.tensor([int(ds[i][1]) for i in picks], dtype=torch.int64)
    ckpt.save_weights(path, {"images": x, "labels": y})


# --------------------------------------------------------------------------- evaluate


def evaluate(
    result: TrainResult | PathLike, test_data: Any, *, batch_size: int = 256, overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix of a trained model on ``test_data``.

    The test set is meant to be read once: when the run folder already holds a ``metrics.json``
    this refuses unless ``overwrite=True``. Writes ``metrics.json`` (and a few test images in
    ``test_samples.safetensors`` for the report) into the run folder, when there is one."""
    from .data import loader
    from .training import predict

    if not isinstance(result, TrainResult):
        result = TrainResult.load(result)
    out = result.out
    if out is not None and (out / "metrics.json").is_file() and not overwrite:
        raise ConfigError(
            f"{str(out / 'metrics.json')!r} exists: this run was already evaluated on a test set, "
            "which is read once; pass overwrite=True (--overwrite) to evaluate again"
        )
    ds, idx = _dataset_and_indices(test_data, "test_data")
    k = int(result.config["num_classes"])
    logits, labels = predict(result.model, loader(ds, idx, batch_size=batch_size), result.transform())
    pred = logits.argmax(1)
    if len(labels) and (int(labels.max()) >= k or int(labels.min()) < 0):
        raise DataError(f"test labels go up to {int(labels.max())} but the model has {k} classes")
    cm = torch.zeros(k, k, dtype=torch.int64)
    cm.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = (cm.diag().double() / cm.sum(1).clamp(min=1).double()).tolist()
    metrics = {
        "schema_version": SCHEMA_VERSION, "strategy": result.strategy,
        "accuracy": float((pred == labels).double().mean()), "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(), "test_images": len(labels),
        "class_names": result.config.get("class_names"),
    }
    if out is not None:
        _write_json(out / "metrics.json", metrics)
        t = _targets(ds, idx)
        _save_samples(out / "test_samples.safetensors", ds, idx, t, k, per_class=1)
    return metrics


def predict(result: TrainResult | PathLike, data: Any, batch_size: int = 256) -> Tensor:
    """Class probabilities for ``data`` (a dataset, (dataset, indices) or (x, y) batches)."""
    from .data import loader
    from .training import predict as _predict

    if not isinstance(result, TrainResult):
        result = TrainResult.load(result)
    ds, idx = _dataset_and_indices(data, "data")
    logits, _ = _predict(result.model, loader(ds, idx, batch_size=batch_size), result.transform())
    return logits.softmax(1)


# --------------------------------------------------------------------------- advise


def advise(
    model: Any, train_data: Any, source: Any = None, *, size: int | None = None,
    batch_size: int = 64, max_images: int = 512, small_per_class: float | None = None,
    similar: float | None = None,
) -> Advice:
    """Which strategy fits ``train_data`` (see :mod:`smart_transfer.strategies.advice`)."""
    from .data import loader, transforms_for
    from .freeze import plan_freeze
    from .measures import compare
    from .models.heads import find_head
    from .stats import profile
    from .strategies import advice as adv
    from .strategies.base import Transformed
    from .strategies.smart import source_profile

    make, _, _ = _resolve_backbone(model)
    net = make()
    ds, idx = _dataset_and_indices(train_data, "train_data")
    targets = _targets(ds, idx)
    classes = _classes(ds, targets)
    per_class = len(idx) / max(len(classes), 1)
    eval_tf = transforms_for(net, train=False, size=size)
    g = torch.Generator().manual_seed(0)
    sub = idx[torch.randperm(len(idx), generator=g)[:max_images]]
    head_name, _ = find_head(net)
    ctx = Context(make_model=make, backbone_name="", num_classes=len(classes), train=None, val=None,
                  train_eval=None, train_tf=eval_tf, eval_tf=eval_tf, recipe=Recipe(batch_size=batch_size),
                  source=source)
    pre = source_profile(ctx, net, [head_name])
    new = profile(net, Transformed(loader(ds, sub, batch_size=batch_size), eval_tf), exclude=[head_name], progress=False)
    sim = compare(pre, new, measure="gaussian_kl")
    plan = plan_freeze(sim, quantile=0.5)
    return adv.decide(
        per_class, sim.layer_scores, sim.source, plan.frozen_fraction,
        small_per_class=adv.SMALL_PER_CLASS if small_per_class is None else small_per_class,
        similar=adv.SIMILAR if similar is None else similar,
    )


def list_strategies(details: bool = False) -> list[Any]:
    """Strategy names, or dicts with what each trains, needs and its options."""
    from .strategies import list_strategies as _list

    return _list(details)


__all__ = ["TrainResult", "advise", "build_model", "evaluate", "list_strategies", "predict", "train"]
