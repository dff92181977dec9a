"""The practitioner's entry points: :func:`train`, :func:`evaluate`, :func:`predict`,
:func:`advise`.

``train`` resolves the backbone, the data and the transforms once, hands a strategy a plain
:class:`~smart_transfer.strategies.Context`, and returns a :class:`TrainResult`; ``evaluate``
reads a test set once; ``advise`` says which strategy fits the data and why.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from . import __version__
from ._atomic import PathLike, atomic_open
from ._json import plain, write_json as _write_json
from ._paths import claim_run_folder, writing_run
from .errors import ConfigError, DataError
from .predictions import Predictions, predict  # re-exported: st.predict, st.Predictions
from .spec import SCHEMA_VERSION, DataSpec, Recipe, RunSpec, option_name
from .strategies import Context, get_strategy
from .strategies.advice import Advice
from .strategies.registry import CONTEXT_DEFAULTS
from .training import checkpoint as ckpt

if TYPE_CHECKING:
    from .freeze import FreezePlan
    from .strategies.base import Outcome

SAMPLES_PER_CLASS = 4  # images per class kept in samples.safetensors for the report


# --------------------------------------------------------------------------- data


def _dataset_and_indices(
    data: Any, what: str, *, classes: list[str] | None = None, on_error: str = "raise"
) -> tuple[Any, Tensor]:
    """What a user passes as data -> ``(dataset, positions)``.

    ``data``: a path (opened as ``--data`` is: a folder of class subfolders, a CSV/TSV of
    ``path,label``, an ``.npz`` or ``'fashion-mnist'``; every file decoded once, ``on_error``
    says what an unreadable one does); a dataset (this package's, a torch one, or any
    map-style one with ``(image, label)`` or dict items, Hugging Face style); ``(dataset,
    indices)``; or raw ``(x, y)`` batches, checked and remapped as
    :func:`~smart_transfer.data.arrays` does (``classes``: the names their labels index, for
    evaluation).
    """

    from .data.adapt import _is_map_style, as_dataset
    from .data.spec import open_data

    if isinstance(data, (str, os.PathLike)):
        ds = open_data(os.fspath(data), "train", on_error=on_error, check=True)
        return ds, torch.arange(len(ds))
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and not isinstance(data[0], (Tensor, list, tuple))
        and (isinstance(data[0], torch.utils.data.Dataset) or _is_map_style(data[0]))
    ):
        idx = torch.as_tensor(data[1], dtype=torch.int64).flatten()
        return as_dataset(data[0], what), idx
    ds = as_dataset(data, what, classes)
    return ds, torch.arange(len(ds))  # type: ignore[arg-type]


def _targets(ds: Any, idx: Tensor) -> Tensor:
    t = getattr(ds, "targets", None)
    if t is not None:
        return torch.as_tensor(t)[idx]
    return torch.tensor([int(ds[int(i)][1]) for i in idx])


def _classes(ds: Any, targets: Tensor) -> list[str]:
    """The class names: the dataset's own (datasets reaching here always carry them, see
    :func:`~smart_transfer.data.adapt.as_dataset`); never a list as long as the largest label."""
    names = getattr(ds, "classes", None)
    if names:
        return [str(c) for c in names]
    from .data.adapt import dense

    return dense(targets)[1]


def _check_classes(classes: list[str], what: str) -> None:
    if len(classes) < 2:
        raise DataError(
            f"{what} has {len(classes)} class ({', '.join(classes) or 'none'}); a classifier "
            "needs images of at least two classes."
        )


def _with_geometry(ds: Any, eval_tf: Any) -> Any:
    """``ds`` reading its images at the evaluation geometry of ``eval_tf`` (files and dict
    datasets, whose images may differ in size); other datasets as they are."""
    size = getattr(eval_tf, "size", None)
    if size is None or not hasattr(ds, "with_geometry") or getattr(ds, "size", None) is not None:
        return ds
    return ds.with_geometry(
        size, getattr(eval_tf, "crop_pct", None), getattr(eval_tf, "interpolation", "bilinear")
    )


def _open_path(
    data: Any,
    *,
    per_class: int | None,
    val_fraction: float,
    test_fraction: float | None,
    seed: int,
    on_error: str,
    progress: bool,
    test_data: str | None = None,
    say_split: bool = False,
) -> tuple[Any, dict[str, Tensor], Any]:
    """A path given as ``train_data``: opened, its test split held out first (none when
    ``test_data`` names a separate test set), then ``per_class`` of the rest drawn for
    train/val; the manifest that records it. ``say_split``: the summary also says where the
    test images come from."""
    from .data.manifest import Manifest, draw_splits, summary
    from .data.spec import describe, is_fashion, open_data

    spec = str(data)
    ds = open_data(spec, "train", on_error=on_error, check=True)
    if test_fraction is None:
        test_fraction = 0.0 if (test_data or is_fashion(spec)) else 0.2
    splits = draw_splits(
        ds.targets, per_class, val_fraction, test_fraction, seed, classes=ds.classes
    )
    manifest = Manifest.record(ds, splits, spec, on_error)
    if progress:
        counts = {k: len(v) for k, v in splits.items()}
        if say_split:
            note = _split_note(spec, test_fraction, test_data, seed)
            print(summary(ds, describe(spec), counts, note))
        else:
            print(summary(ds, describe(spec), counts))
    return ds, splits, manifest


def _split_note(spec: str, fraction: float, test_data: str | None, seed: int) -> str:
    """Where the test images come from, in the data summary's words."""
    from .data.spec import describe, is_fashion

    if test_data:
        return f"test images: {describe(test_data)}"
    if is_fashion(spec) and fraction == 0:
        return "test images: Fashion-MNIST's test split"
    return f"test: {fraction:.0%} of every class held out first, seed {seed}"


def _train_data(
    train_data: Any,
    val_data: Any,
    out_dir: Path | None,
    resume: bool,
    manifest: Any,
    *,
    per_class: int | None,
    val_fraction: float,
    test_fraction: float | None,
    seed: int,
    on_error: str,
    progress: bool,
) -> tuple[Any, Tensor, Any, Tensor, Any]:
    """``(train ds, idx, val ds, idx, manifest)`` of what :func:`train` was given. A resumed run
    whose data changed since it started is refused (its manifest says so)."""

    from .data import few_shot
    from .data.manifest import Manifest

    saved = out_dir / "manifest.json" if (resume and out_dir is not None) else None
    if saved is not None and saved.is_file():
        Manifest.load(saved).check_unchanged(
            "the run cannot resume on the images it started with",
            "restore those files, or start a new run with another --out",
        )
    if isinstance(train_data, (str, os.PathLike)):
        if saved is not None and saved.is_file():  # resume on the recorded files, not a new listing
            manifest = Manifest.load(saved)
            ds, idx = manifest.dataset("train")
            val_ds, val_idx = manifest.dataset("val")
            return ds, idx, val_ds, val_idx, manifest
        ds, splits, manifest = _open_path(
            train_data,
            per_class=per_class,
            val_fraction=0.0 if val_data is not None else val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            on_error=on_error,
            progress=progress,
        )
        idx = (
            torch.cat([splits["train"], splits["val"]]).sort().values
            if val_data is not None
            else splits["train"]
        )
        if val_data is None:
            return ds, idx, ds, splits["val"], manifest
        val_ds, val_idx = _dataset_and_indices(val_data, "val_data", on_error=on_error)
        return ds, idx, val_ds, val_idx, manifest
    ds, idx = _dataset_and_indices(train_data, "train_data", on_error=on_error)
    if val_data is None:
        t = _targets(ds, idx)
        tr, va = few_shot(
            t,
            per_class=per_class,
            val_fraction=val_fraction,
            seed=seed,
            classes=getattr(ds, "classes", None),
        )
        idx, val_ds, val_idx = idx[tr], ds, idx[va]
    else:
        val_ds, val_idx = _dataset_and_indices(val_data, "val_data", on_error=on_error)
    if manifest is None and val_ds is ds and hasattr(ds, "relative"):
        manifest = Manifest.record(ds, {"train": idx, "val": val_idx}, on_error=on_error)
    return ds, idx, val_ds, val_idx, manifest


def _data_record(manifest: Any) -> dict[str, Any]:
    if manifest is None:
        return {}
    return {
        "root": manifest.root,
        "kind": manifest.kind,
        "on_error": manifest.on_error,
        "counts": manifest.counts(),
        "manifest": "manifest.json",
    }


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
    advice: Advice | None = None  # the advisor's (auto's) advice, after train and after load
    out: Path | None = None
    manifest: Any = None  # the Manifest of the data (also out/manifest.json), or None

    @property
    def spec(self) -> RunSpec:
        """The run spec this result was trained with (its config.json, typed)."""
        return RunSpec.from_dict(self.config)

    @property
    def frozen_fraction(self) -> float:
        """Fraction of the model's parameters that training left as they were pretrained."""
        return float(self.config.get("frozen_fraction", 0.0))

    def save(self, out: PathLike) -> Path:
        """Write the run folder: config.json, result.json, log.jsonl, model.safetensors,
        plan.json."""
        out = Path(out)
        if self.out is None or not _same_folder(out, self.out):
            claim_run_folder(out, "out")  # never into a folder that holds another run
        _write_json(out / "config.json", self.config)
        _write_json(
            out / "result.json",
            {
                "schema_version": SCHEMA_VERSION,
                "strategy": self.strategy,
                "val_accuracy": self.val_accuracy,
                "chosen": self.chosen,
                "tried": self.tried,
                "timings": self.timings,
                "history": self.history,
                "frozen_fraction": self.frozen_fraction,
                "plan": None if self.plan is None else self.plan.summary(),
            },
        )
        with atomic_open(out / "log.jsonl", "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(h) + "\n" for h in self.history))
        from .exporting import weights_metadata

        # architecture, class names and preprocessing travel with the weights (str -> str, JSON
        # inside)
        ckpt.save_weights(
            out / "model.safetensors", self.model.state_dict(), metadata=weights_metadata(self)
        )
        if self.plan is not None:
            with writing_run(out):  # the run's own plan.json
                self.plan.save(out / "plan.json")
        if self.manifest is not None and not (out / "manifest.json").is_file():
            with writing_run(out):
                self.manifest.save(out / "manifest.json")
        if self.advice is not None:
            _write_json(out / "advice.json", self.advice.to_dict())
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
            raise DataError(
                f"{str(folder)!r} is not a run folder (no config.json); pass the --out of a train "
                "run"
            )
        config = read_config(folder)
        res_path = folder / "result.json"
        if not res_path.is_file():
            raise DataError(
                f"the run in {str(folder)!r} has not finished (no result.json); resume it first"
            )
        res = read_result(folder)
        net = build_model(config, model)
        state = ckpt.load_weights(folder / "model.safetensors")
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise DataError(
                f"model.safetensors in {str(folder)!r} does not fit {config.get('backbone')}: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        plan = FreezePlan.load(folder / "plan.json") if (folder / "plan.json").is_file() else None
        adv = folder / "advice.json"
        return cls(
            model=net,
            strategy=res["strategy"],
            plan=plan,
            val_accuracy=res["val_accuracy"],
            history=res["history"],
            config=config,
            timings=res["timings"],
            chosen=res["chosen"],
            tried=res["tried"],
            advice=Advice.from_dict(read_json(adv)) if adv.is_file() else None,
            out=folder,
        )

    def transform(self) -> Callable[[Tensor], Tensor]:
        """The evaluation transform this model was trained with: the short side resized to
        ``floor(size / crop_pct)`` (aspect kept), the centre ``size`` cut out, mean/std; on one
        image as a ``(1, C, H, W)`` batch it gives the run's preprocessing of that image."""
        from .data import transforms_for

        return transforms_for(self.model, train=False, size=self.config.get("size"))


def _same_folder(a: Path, b: Path) -> bool:
    return a.expanduser().resolve() == Path(b).expanduser().resolve()


# The train() arguments a resumed run must share with the run it continues, and how to name
# each for both front ends (keyword argument / CLI flag).
_RESUME_NAMES = {
    "strategy": "strategy (--strategy)",
    "options": "options (--option)",
    "seed": "seed (--seed)",
    "size": "size (--size)",
    "sync_bn": "sync_bn (--sync-bn)",
    "transform": "transform",
    "backbone": "backbone (--backbone)",
    "samples": "the data (--data, --per-class)",
    **{f.name: option_name(f.name) for f in fields(Recipe)},
}


def _check_resume(out_dir: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to resume with a setting the run was not started with: the checkpoint's optimizer,
    schedule and data order belong to the old settings, so a new value could not be honoured
    (and config.json would record a value that was not used)."""
    pairs = [(k, old.get(k), v) for k, v in new.items() if k != "recipe" and v is not None]
    if "recipe" in new:
        was: dict[str, Any] = old["recipe"] if isinstance(old.get("recipe"), dict) else {}
        pairs += [(k, was.get(k), v) for k, v in new["recipe"].items() if k in was]
    for key, before, now in pairs:
        if before != now:
            name = _RESUME_NAMES.get(key, key)
            raise ConfigError(
                f"cannot resume {str(out_dir)!r} with {key}={now!r}: the run was started with "
                f"{key}={before!r}, and a resumed run continues as it was started; drop "
                f"{name} or start a new run in another folder"
            )


def _check_out_folder(out_dir: Path, resume: bool, data: dict[str, Any]) -> None:
    """Before any work: the run folder is not inside a data folder, and a new run does not go
    into a folder that holds one already."""
    from ._paths import check_output_folders, is_run_folder

    roots: dict[str, Any] = {}
    for name, value in data.items():
        root = getattr(value[0] if isinstance(value, tuple) and value else value, "root", None)
        if isinstance(value, (str, Path)):
            root = value
        if root is not None and Path(root).is_dir():
            roots[name] = root
    check_output_folders({"out": out_dir}, roots)
    from .training.distributed import world

    if not resume and world()[0] == 0 and is_run_folder(out_dir):  # rank 0 writes the folder
        raise ConfigError(
            f"out={str(out_dir)!r} already holds a run; pass resume=True (--resume) to continue "
            "it, or another folder"
        )


def read_json(path: Path, what: str = "") -> Any:
    """A JSON file of a run folder; a damaged one is one :class:`DataError` naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{str(path)!r} is missing{what}; the run folder is incomplete") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"cannot read {str(path)!r} ({type(exc).__name__}); the run folder is damaged"
        ) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DataError(
            f"{str(path)!r} is not valid JSON ({exc}); the run folder is damaged: restore the file "
            "or train the run again"
        ) from None


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a run folder, checked to hold what loading and resuming need."""
    path = folder / "config.json"
    cfg = read_json(path)
    fix = "the run folder is damaged: restore the file or train the run again"
    if not isinstance(cfg, dict):
        raise DataError(
            f"{str(path)!r} holds a {type(cfg).__name__}, not a run configuration; {fix}"
        )
    k = cfg.get("num_classes")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"{str(path)!r} has num_classes={k!r}, not a positive integer; {fix}")
    names = cfg.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != k):
        raise DataError(f"{str(path)!r} has class_names that are not a list of {k} names; {fix}")
    for key, kind in (("recipe", dict), ("data", dict), ("options", dict), ("strategy", str)):
        if key in cfg and not isinstance(cfg[key], kind):
            raise DataError(
                f"{str(path)!r} has {key} of type {type(cfg[key]).__name__}, not {kind.__name__}; "
                f"{fix}"
            )
    return cfg


_RESULT_KEYS: dict[str, Any] = {
    "strategy": str,
    "val_accuracy": (int, float),
    "history": list,
    "timings": dict,
    "chosen": dict,
    "tried": list,
}


def read_result(folder: Path) -> dict[str, Any]:
    """``result.json`` of a finished run, checked to hold every key :meth:`TrainResult.load`
    reads."""
    path = folder / "result.json"
    res = read_json(path, " (the run has not finished: resume it first)")
    fix = "the run folder is damaged: restore the file or train the run again"
    if not isinstance(res, dict):
        raise DataError(f"{str(path)!r} holds a {type(res).__name__}, not a run result; {fix}")
    for key, kind in _RESULT_KEYS.items():
        if key not in res:
            raise DataError(f"{str(path)!r} lacks {key!r}; {fix}")
        if not isinstance(res[key], kind) or isinstance(res[key], bool):
            raise DataError(f"{str(path)!r} has {key} of type {type(res[key]).__name__}; {fix}")
    return res


def build_model(config: dict[str, Any], backbone: nn.Module | None = None) -> nn.Module:
    """The untrained network a run's weights fit (backbone, new head, probe wrapper)."""
    from .models import load_backbone, replace_head
    from .strategies.concat import ConcatProbe
    from .strategies.probe import ProbeModel

    if backbone is None:
        name = config.get("backbone")
        if not config.get("backbone_is_name", True):
            raise ConfigError(
                f"this run was trained from a model object ({name}); pass it: "
                "TrainResult.load(dir, model=...)"
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
    raise ConfigError(
        "backbone must be a name (see list_backbones()) or an nn.Module, got "
        f"{type(backbone).__name__}"
    )


@dataclass
class _Data:
    """The images a run trains and validates on, and what was found about them."""

    ds: Any
    idx: Tensor
    val_ds: Any
    val_idx: Tensor
    manifest: Any
    classes: list[str]
    targets: Tensor  # labels of ds[idx]


@dataclass
class _Model:
    """The backbone resolved once: a maker of fresh models and the transforms."""

    make_model: Callable[[], nn.Module]
    name: str
    is_name: bool
    train_tf: Callable[[Tensor], Tensor]
    eval_tf: Callable[[Tensor], Tensor]
    # the backbone's evaluation transform: the size, crop and interpolation images are read at
    geometry: Any
    rank: int
    world: int


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
    batch_size: int = Recipe.batch_size,
    optimizer: str = Recipe.optimizer,
    weight_decay: float = Recipe.weight_decay,
    head_lr_mult: float = Recipe.head_lr_mult,
    warmup: float = Recipe.warmup,
    patience: int | None = Recipe.patience,
    eval_every: int | None = Recipe.eval_every,
    size: int | None = None,
    transform: Any = None,
    source: Any = None,
    seed: int = 0,
    out: PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    val_fraction: float = DataSpec.val_fraction,
    amp: str | None = Recipe.amp,
    channels_last: bool = Recipe.channels_last,
    sync_bn: bool = False,
    data_info: dict[str, Any] | None = None,
    per_class: int | None = None,
    test_fraction: float | None = None,
    on_error: str = "raise",
    manifest: Any = None,
    **options: Any,
) -> TrainResult:
    """Train ``backbone`` on ``train_data`` with ``strategy`` (see :func:`list_strategies`).

    ``backbone``: a name (``load_backbone``) or an ``nn.Module`` (its head is replaced to fit the
    classes). ``train_data`` / ``val_data``: a path (a folder of class subfolders, a CSV/TSV of
    ``path,label``, an ``.npz`` or ``'fashion-mnist'``), a dataset (also any map-style one with
    ``(image, label)`` or Hugging Face style dict items), ``(dataset, indices)`` or an iterable
    of raw ``(x, y)`` batches; without ``val_data`` a stratified ``val_fraction`` of the
    ``per_class`` (None: all) drawn samples is carved out. A path's ``test_fraction`` (default
    0.2; 0 for Fashion-MNIST, whose test split is its own) is held out first, for
    :func:`evaluate`; the draw is recorded by file in ``out/manifest.json``. Images of a
    folder, CSV or dict dataset are read at the backbone's evaluation geometry, so mixed sizes
    batch; ``on_error`` (``raise`` / ``skip``) says what an unreadable file does. ``device``:
    ``'auto'`` (default: CUDA, MPS, CPU) or a device name, checked before anything is written.
    The backbone's own transforms are used (evaluation transform for profiles and probe
    features, augmentation for training) unless ``transform=`` gives one callable or a
    ``(train, eval)`` pair. ``source``: D_pre for the smart strategies (a loader, a folder of
    images or a saved profile; default the BatchNorm statistics). ``out``: the run folder
    (checkpoints every validation, ``resume=True`` continues there). ``options`` go to the
    strategy (see its ``StrategyInfo.options_type``). Under ``torch.distributed`` each rank
    trains on its share of every batch.

    The keywords build a :class:`~smart_transfer.spec.RunSpec` (``config.json`` is its
    ``to_dict()`` plus the facts found); the recipe of every gradient-trained strategy is its
    :class:`~smart_transfer.spec.Recipe`: ``steps`` optimizer steps (default 300) or, instead,
    ``epochs`` passes over the training images; validation every ``eval_every`` steps, the best
    state kept, early stopping after ``patience`` steps without a better validation score; the
    pretrained layers' learning rate chosen on validation from ``lr_grid`` (default 1e-4, 3e-4,
    1e-3; lowest validation loss, ties to the higher accuracy), or fixed with ``lr=``.
    ``amp="bf16"`` autocasts on CUDA and on CPUs (see
    :func:`smart_transfer.training.cpu_bf16_supported`).

    (Longer than 60 lines only for the keyword list and this docstring: the body is the six
    steps, each its own function.)
    """
    from ._device import resolve_device

    started = time.perf_counter()
    dev = resolve_device(device, "device")
    recipe = Recipe.build(
        steps=steps,
        epochs=epochs,
        lr=lr,
        lr_grid=lr_grid,
        batch_size=batch_size,
        optimizer=optimizer,
        weight_decay=weight_decay,
        head_lr_mult=head_lr_mult,
        warmup=warmup,
        patience=patience,
        eval_every=eval_every,
        amp=amp,
        channels_last=channels_last,
    )
    data_spec = (
        DataSpec.from_dict(data_info)
        if data_info
        else DataSpec(
            spec=os.fspath(train_data) if isinstance(train_data, (str, os.PathLike)) else None,
            per_class=per_class,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            on_error=on_error,
            seed=seed,
        )
    )
    spec = _resolve_spec(
        backbone,
        strategy,
        options,
        recipe,
        data_spec,
        size=size,
        device=str(dev),
        seed=seed,
        source=source,
        transform=transform,
        sync_bn=sync_bn,
    )
    out_dir = _check_run_folder(
        spec, out, resume, {"train_data": train_data, "val_data": val_data, "source": source}
    )
    data = _resolve_data(spec, train_data, val_data, out_dir, resume, manifest, progress)
    model = _resolve_model(spec, backbone, transform, data, dev)
    ctx = _context(spec, data, model, out_dir, resume, progress, source, dev)
    config = _config(spec, data, model, data_info)
    if out_dir is not None and model.rank == 0:
        _start_run_folder(out_dir, resume, config, data)
    t0 = time.perf_counter()
    outcome = get_strategy(spec.strategy).run(ctx, **options)
    timings = {"train_s": time.perf_counter() - t0, "total_s": time.perf_counter() - started}
    return _finish(spec, config, outcome, data, out_dir, model.rank, timings)


def _resolve_spec(
    backbone: Any,
    strategy: str,
    options: dict[str, Any],
    recipe: Recipe,
    data: DataSpec,
    *,
    size: int | None,
    device: str,
    seed: int,
    source: Any,
    transform: Any,
    sync_bn: bool,
) -> RunSpec:
    """The run spec of :func:`train`'s arguments; the strategy's options checked (names, types,
    ranges) before any work. ``options`` loses its ``head`` (the context carries it)."""
    get_strategy(strategy).check(options)
    head = str(options.pop("head", CONTEXT_DEFAULTS["head"]))
    if transform is not None and not (
        callable(transform) or (isinstance(transform, (tuple, list)) and len(transform) == 2)
    ):
        raise ConfigError("transform must be a callable or a (train, eval) pair of callables")
    return RunSpec(
        backbone=str(backbone) if isinstance(backbone, (str, Path)) else type(backbone).__name__,
        backbone_is_name=isinstance(backbone, (str, Path)),
        data=data,
        recipe=recipe,
        strategy=strategy,
        options=plain(options),
        head=head,
        size=size,
        device=device,
        seed=seed,
        source="batchnorm"
        if source is None
        else str(source)
        if isinstance(source, (str, Path))
        else type(source).__name__,
        transform="backbone" if transform is None else "custom",
        sync_bn=sync_bn,
    )


def _check_run_folder(
    spec: RunSpec, out: PathLike | None, resume: bool, data: dict[str, Any]
) -> Path | None:
    """The run folder, checked before any data is read: not inside a data folder, not another
    run's (unless resuming), and a resumed run's spec as it was started."""
    out_dir = Path(out) if out is not None else None
    if resume and (out_dir is None or not (out_dir / "config.json").is_file()):
        raise ConfigError(f"nothing to resume: {str(out_dir)!r} holds no run (no config.json)")
    if out_dir is None:
        return None
    _check_out_folder(out_dir, resume, data)
    if resume:
        new = {
            k: v
            for k, v in spec.to_dict().items()
            if k in ("strategy", "options", "seed", "size", "sync_bn", "recipe", "transform")
        }
        new["epochs"] = spec.recipe.epochs
        if spec.backbone_is_name:
            new["backbone"] = spec.backbone
        _check_resume(out_dir, read_config(out_dir), new)
    return out_dir


def _resolve_data(
    spec: RunSpec,
    train_data: Any,
    val_data: Any,
    out_dir: Path | None,
    resume: bool,
    manifest: Any,
    progress: bool,
) -> _Data:
    """The training and validation images (a resumed run's from its manifest), checked to hold
    at least two classes."""
    d = spec.data
    ds, idx, val_ds, val_idx, manifest = _train_data(
        train_data,
        val_data,
        out_dir,
        resume,
        manifest,
        per_class=d.per_class,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        seed=spec.seed,
        on_error=d.on_error,
        progress=progress,
    )
    if len(idx) == 0 or len(val_idx) == 0:
        raise DataError(
            "training and validation sets must both be non-empty; give more samples per class"
        )
    targets = _targets(ds, idx)
    classes = _classes(ds, torch.cat([targets, _targets(val_ds, val_idx)]))
    _check_classes(classes, "the training data")
    return _Data(ds, idx, val_ds, val_idx, manifest, classes, targets)


def _resolve_model(
    spec: RunSpec, backbone: Any, transform: Any, data: _Data, dev: torch.device
) -> _Model:
    """The backbone loaded once, its head sized for the classes, and the transforms; the data
    set to read images at its evaluation geometry."""
    from .data import transforms_for
    from .models import replace_head
    from .training.distributed import world as _world

    torch.manual_seed(
        spec.seed
    )  # a backbone without pretrained weights is initialised from the seed
    make, name, is_name = _resolve_backbone(backbone)
    template = make()
    geo_tf = transforms_for(template, train=False, size=spec.size)
    if transform is None:
        train_tf = transforms_for(template, train=True, size=spec.size)
        eval_tf = transforms_for(template, train=False, size=spec.size)
    elif isinstance(transform, (tuple, list)):
        train_tf, eval_tf = transform
    else:
        train_tf = eval_tf = transform
    del template
    data.ds, data.val_ds = _with_geometry(data.ds, geo_tf), _with_geometry(data.val_ds, geo_tf)
    rank, world = _world()
    if spec.sync_bn and world > 1 and dev.type != "cuda":
        raise ConfigError(
            f"sync_bn needs CUDA (SyncBatchNorm works on GPU modules only), and this run is on "
            f"{dev.type!r}; leave --sync-bn / sync_bn=True off, or train on CUDA devices"
        )
    k, sync = len(data.classes), spec.sync_bn and world > 1

    def make_model() -> nn.Module:
        m = replace_head(make(), k)
        return nn.SyncBatchNorm.convert_sync_batchnorm(m) if sync else m

    return _Model(make_model, name, is_name, train_tf, eval_tf, geo_tf, rank, world)


def _context(
    spec: RunSpec,
    data: _Data,
    model: _Model,
    out_dir: Path | None,
    resume: bool,
    progress: bool,
    source: Any,
    dev: torch.device,
) -> Context:
    """The :class:`Context` a strategy runs in: loaders (sharded under torchrun), transforms,
    recipe and run folder."""
    from .data import loader

    bs, train_tf = spec.recipe.batch_size, model.train_tf
    train_loader: Any = loader(data.ds, data.idx, batch_size=bs, shuffle=True, seed=spec.seed)
    if model.world > 1:
        from .training.distributed import ShardedBatches

        train_loader = ShardedBatches(train_loader, model.rank, model.world, train_tf)
        train_tf = _identity  # the shards are augmented already
    return Context(
        make_model=model.make_model,
        backbone_name=model.name,
        num_classes=len(data.classes),
        train=train_loader,
        val=loader(data.val_ds, data.val_idx, batch_size=max(bs, 128)),
        train_eval=loader(data.ds, data.idx, batch_size=max(bs, 64)),
        train_tf=train_tf,
        eval_tf=model.eval_tf,
        recipe=spec.recipe,
        seed=spec.seed,
        out=out_dir,
        resume=resume,
        progress=progress,
        source=source,
        device=dev,
        samples_per_class=float((len(data.idx) + len(data.val_idx)) / len(data.classes)),
        head=spec.head,
    )


def _config(
    spec: RunSpec, data: _Data, model: _Model, data_info: dict[str, Any] | None
) -> dict[str, Any]:
    """config.json: the spec's ``to_dict()`` plus the facts resolved on the way (classes,
    counts, geometry, versions); ``model`` and ``frozen_fraction`` follow once trained."""
    from .strategies.registry import list_strategies

    k = len(data.classes)
    extra = {
        key: v
        for key, v in (data_info or {}).items()
        if key not in spec.data.to_dict() and key != "cli"
    }
    geo = model.geometry
    return {
        **spec.to_dict(),
        "version": __version__,
        "backbone": model.name,
        "backbone_is_name": model.is_name,
        "num_classes": k,
        "class_names": data.classes,
        "epochs": spec.recipe.epochs,
        "steps": spec.recipe.steps,
        "samples": int(len(data.idx) + len(data.val_idx)),
        "train_samples": len(data.idx),
        "val_samples": len(data.val_idx),
        "per_class_counts": torch.bincount(data.targets, minlength=k).float().tolist(),
        "world_size": model.world,
        "data": {**spec.data.to_dict(), **plain(extra), **_data_record(data.manifest)},
        "geometry": {
            "size": None if geo.size is None else list(geo.size),
            "crop_pct": geo.crop_pct,
            "interpolation": geo.interpolation,
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
        "strategies": list_strategies(),
    }


def _start_run_folder(out_dir: Path, resume: bool, config: dict[str, Any], data: _Data) -> None:
    """Claim the run folder (or check a resumed one holds the same data) and write what is known
    before training: config.json, manifest.json, the report's sample images."""
    if resume:
        _check_resume(
            out_dir, read_config(out_dir), {k: config[k] for k in ("backbone", "samples")}
        )
    else:
        claim_run_folder(out_dir, "out")  # exclusive: of two runs started together, one goes on
    _write_json(out_dir / "config.json", config)
    if data.manifest is not None and not (resume and (out_dir / "manifest.json").is_file()):
        with writing_run(out_dir):  # the run's own manifest.json
            data.manifest.save(out_dir / "manifest.json")
    _save_samples(
        out_dir / "samples.safetensors",
        data.val_ds,
        data.val_idx,
        _targets(data.val_ds, data.val_idx),
        len(data.classes),
    )


def _finish(
    spec: RunSpec,
    config: dict[str, Any],
    outcome: Any,
    data: _Data,
    out_dir: Path | None,
    rank: int,
    timings: dict[str, float],
) -> TrainResult:
    """The :class:`TrainResult` of a strategy's outcome, saved into the run folder by rank 0."""
    config["model"] = outcome.model_kind
    config["frozen_fraction"] = _frozen_fraction(outcome.model, outcome)
    advice = outcome.extra.get("advice")
    result = TrainResult(
        model=outcome.model,
        strategy=spec.strategy,
        plan=outcome.plan,
        val_accuracy=float(outcome.val_accuracy),
        history=outcome.fit.history if outcome.fit is not None else [],
        config=config,
        timings=timings,
        chosen=plain(outcome.chosen),
        tried=plain(outcome.tried),
        advice=Advice.from_dict(advice) if isinstance(advice, dict) else advice,
        manifest=data.manifest,
    )
    if out_dir is None:
        return result
    result.out = out_dir  # claimed by _start_run_folder: save() writes into its own run folder
    if rank != 0:
        return result
    result.save(out_dir)
    if "profile_pre" in outcome.extra:
        outcome.extra["profile_pre"].save(out_dir / "profile_pre.pt")
        outcome.extra["profile_new"].save(out_dir / "profile_new.pt")
    if outcome.log_tag is not None:
        src_log = out_dir / "checkpoints" / outcome.log_tag / "log.jsonl"
        if src_log.is_file():
            shutil.copyfile(src_log, out_dir / "log.jsonl")
    return result


def _frozen_fraction(model: nn.Module, outcome: Outcome) -> float:
    """Frozen parameters over all parameters: the plan's, or everything but the head for
    strategies that train only a classifier."""
    from .models.heads import find_head

    total = sum(p.numel() for p in model.parameters())
    plan: FreezePlan | None = outcome.plan
    if plan is not None:
        return sum(plan.frozen_params(n) for n in plan.masks) / max(total, 1)
    if outcome.extra.get("head_only"):
        head = (
            getattr(model, "head", None)
            if outcome.model_kind["kind"] != "backbone"
            else find_head(model)[1]
        )
        trainable = sum(p.numel() for p in head.parameters()) if head is not None else 0
        return 1 - trainable / max(total, 1)
    return 0.0


def _identity(x: Tensor) -> Tensor:
    return x


def _save_samples(
    path: Path,
    ds: Any,
    idx: Tensor,
    targets: Tensor,
    num_classes: int,
    per_class: int = SAMPLES_PER_CLASS,
) -> None:
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
    result: TrainResult | PathLike,
    test_data: Any = None,
    *,
    batch_size: int = 256,
    overwrite: bool = False,
    progress: bool = False,
    device: str | torch.device | None = None,
    on_error: str = "raise",
) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix of a trained model on its test images.

    ``test_data`` None: the images the run held out, drawn by its ``manifest.json`` (by file,
    never by position), refused when a recorded file changed or vanished. Otherwise a path
    (folder, CSV, ``.npz``; classes matched to the run's **by name**, an unknown class refused),
    a dataset, ``(dataset, indices)`` or raw ``(x, y)`` batches (labels index the run's
    classes); a test image the run trained or validated on is refused. The test set is meant
    to be read once: when the run folder already holds a ``metrics.json`` this refuses unless
    ``overwrite=True``. Writes ``metrics.json`` (with ``test_files``, and a few test images in
    ``test_samples.safetensors`` for the report) into the run folder, when there is one.
    ``progress``: print the summary of the test data first. ``device``: where the model runs
    (None: where it is)."""
    from ._device import resolve_device
    from .data import loader
    from .data.manifest import summary
    from .training import predict

    if not isinstance(result, TrainResult):
        result = TrainResult.load(result)
    out = result.out
    if out is not None and (out / "metrics.json").is_file() and not overwrite:
        raise ConfigError(
            f"{str(out / 'metrics.json')!r} exists: this run was already evaluated on a test set, "
            "which is read once; pass overwrite=True (--overwrite) to evaluate again"
        )
    if device is not None:
        result.model.to(resolve_device(device, "device"))
    ds, idx, what, files = _test_set(result, test_data, on_error)
    if len(idx) == 0:
        raise DataError(
            f"there are no test images ({what}); pass test images with --test-data DIR (test_data=)"
        )
    if progress:
        print(summary(ds, what, {"test": len(idx)}))
    k = int(result.config["num_classes"])
    logits, labels = predict(
        result.model, loader(ds, idx, batch_size=batch_size), result.transform()
    )
    pred = logits.argmax(1).cpu()
    labels = labels.cpu()
    if len(labels) and (int(labels.max()) >= k or int(labels.min()) < 0):
        raise DataError(f"test labels go up to {int(labels.max())} but the model has {k} classes")
    cm = torch.zeros(k, k, dtype=torch.int64)
    cm.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = (cm.diag().double() / cm.sum(1).clamp(min=1).double()).tolist()
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "strategy": result.strategy,
        "accuracy": float((pred == labels).double().mean()),
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
        "test_images": len(labels),
        "class_names": result.config.get("class_names"),
        "test_data": what,
        "test_files": files,
    }
    if out is not None:
        _write_json(out / "metrics.json", metrics)
        # the labels the test pass read, in idx's order: no second pass over the dataset
        _save_samples(out / "test_samples.safetensors", ds, idx, labels, k, per_class=1)
        from .report.gallery import save_misclassified

        save_misclassified(out / "test_samples.safetensors", ds, idx, labels, pred)
    return metrics


def _run_manifest(result: TrainResult) -> Any:
    from .data.manifest import Manifest

    if result.manifest is not None:
        return result.manifest
    if result.out is not None and (result.out / "manifest.json").is_file():
        result.manifest = Manifest.load(result.out / "manifest.json")
    return result.manifest


def _test_set(
    result: TrainResult, test_data: Any, on_error: str
) -> tuple[Any, Tensor, str, list[str] | None]:
    """``(dataset, positions, description, test files)`` of what :func:`evaluate` tests on."""

    from .data.spec import describe, open_data

    manifest = _run_manifest(result)
    classes = [str(c) for c in result.config.get("class_names") or []]
    tf = (
        result.transform()
    )  # the run's evaluation geometry, also for runs older than config["geometry"]
    geometry: dict[str, Any] = {
        "size": getattr(tf, "size", None),
        "crop_pct": getattr(tf, "crop_pct", None),
        "interpolation": getattr(tf, "interpolation", "bilinear"),
    }
    if (
        isinstance(test_data, (str, os.PathLike))
        and manifest is not None
        and manifest.kind == "npz"
        and describe(os.fspath(test_data)) == manifest.root
    ):
        raise DataError(
            f"{os.fspath(test_data)} is the file this run trained and validated on, so the test "
            "would flatter it; drop --test-data to test on the run's held-out split, or pass "
            "other images"
        )
    if test_data is None:
        if manifest is None:
            raise ConfigError(
                "this run has no manifest.json recording its held-out test images; pass the "
                "test images: --test-data DIR (test_data= from Python)"
            )
        if manifest.kind == "fashion-mnist":
            ds = open_data("fashion-mnist", "test")
            return ds, torch.arange(len(ds)), "fashion-mnist (its test split)", None
        manifest.check_unchanged(
            "its held-out test split cannot be reproduced",
            "restore the files, or test on other images with --test-data DIR (or train again)",
        )
        ds, idx = manifest.dataset("test", **geometry)
        files = [e["path"] for e in manifest.files("test")] if manifest.kind != "npz" else None
        return ds, idx, f"{manifest.root} (held-out test split of manifest.json)", files
    if isinstance(test_data, (str, os.PathLike)):
        ds = open_data(os.fspath(test_data), "test", on_error=on_error, check=True, **geometry)
        idx, what = torch.arange(len(ds)), describe(os.fspath(test_data))
    else:
        ds, idx = _dataset_and_indices(test_data, "test_data", classes=classes)
        ds = _with_geometry(ds, tf)
        what = f"{type(ds).__name__} ({len(idx)} images)"
    files = None
    if hasattr(ds, "relative") and hasattr(ds, "samples"):
        _refuse_leak(ds, idx, manifest)
        files = [ds.relative(ds.samples[i][0]) for i in idx.tolist()]
    return _by_name(ds, classes), idx, what, files


def _by_name(ds: Any, classes: list[str]) -> Any:
    """``ds`` with its labels as the run's class indices, matched by class name."""
    from .data.adapt import Relabelled

    names = [str(c) for c in getattr(ds, "classes", None) or []]
    if not classes or names == classes:
        return ds
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DataError(
            f"the test data has class {unknown[0]!r}, which the run was not trained on (its "
            f"classes: {', '.join(classes)}); test on images of those classes, named as in training"
        )
    mapping = {i: classes.index(n) for i, n in enumerate(names)}
    t = torch.as_tensor(ds.targets, dtype=torch.int64)
    new = torch.tensor([mapping[int(v)] for v in t.tolist()], dtype=torch.int64)
    return Relabelled(ds, new, classes, mapping)


def _refuse_leak(ds: Any, idx: Tensor, manifest: Any) -> None:
    if manifest is None or manifest.kind in ("npz", "fashion-mnist"):
        return
    used = manifest.used_paths()
    leaked = [ds.samples[i][0] for i in idx.tolist() if Path(ds.samples[i][0]).resolve() in used]
    if leaked:
        raise DataError(
            f"{len(leaked)} test image(s) were used to train or validate this run (e.g. "
            f"{leaked[0]}), so the test would flatter it; drop --test-data to test on the run's "
            "held-out split, or pass images the run has not seen"
        )


# --------------------------------------------------------------------------- advise


def advise(
    model: Any,
    train_data: Any,
    source: Any = None,
    *,
    size: int | None = None,
    batch_size: int = 64,
    max_images: int = 512,
    small_per_class: float | None = None,
    similar: float | None = None,
    device: str | torch.device | None = None,
    on_error: str = "raise",
) -> Advice:
    """Which strategy fits ``train_data`` (see :mod:`smart_transfer.strategies.advice`).

    ``train_data``: what :func:`train` takes (a path, a dataset, ``(dataset, indices)``, batches);
    ``device``: where the network runs (``'auto'`` / None: CUDA, MPS, CPU)."""
    from ._device import resolve_device
    from .data import loader, transforms_for
    from .stats.config import StatsConfig
    from .strategies.auto import advice_for

    dev = resolve_device(device, "device")
    make, _, _ = _resolve_backbone(model)
    ds, idx = _dataset_and_indices(train_data, "train_data", on_error=on_error)
    targets = _targets(ds, idx)
    classes = _classes(ds, targets)
    _check_classes(classes, "the data")
    eval_tf = transforms_for(make(), train=False, size=size)
    ds = _with_geometry(ds, eval_tf)
    g = torch.Generator().manual_seed(0)
    sub = idx[torch.randperm(len(idx), generator=g)[:max_images]]
    ctx = Context(
        make_model=make,
        backbone_name="",
        num_classes=len(classes),
        train=None,
        val=None,
        train_eval=loader(ds, sub, batch_size=batch_size),
        train_tf=eval_tf,
        eval_tf=eval_tf,
        recipe=Recipe(batch_size=batch_size),
        source=source,
        device=dev,
        samples_per_class=len(idx) / max(len(classes), 1),
        profile_stats=StatsConfig.for_measures(["gaussian_kl"]),  # the advice's one measure
    )
    return advice_for(ctx, small_per_class, similar)  # type: ignore[no-any-return]


def list_strategies(details: bool = False) -> list[Any]:
    """Strategy names, or dicts with what each trains, needs and its options."""
    from .strategies import list_strategies as _list

    return _list(details)


__all__ = [
    "Predictions",
    "TrainResult",
    "advise",
    "build_model",
    "evaluate",
    "list_strategies",
    "predict",
    "train",
]
