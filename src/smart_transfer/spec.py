"""The run spec: what a training run is, as frozen dataclasses written once.

:class:`RunSpec` holds everything that decides what a run computes: the backbone, the data
(:class:`DataSpec`), the training recipe (:class:`Recipe`), the strategy and its options.
:func:`smart_transfer.train` builds one from its keyword arguments, ``config.json`` is its
:meth:`RunSpec.to_dict` plus the facts found on the way (class names, counts, versions), and
``--resume`` reads it back with :meth:`RunSpec.from_json`. The CLI's recipe flags, their
``--help`` lines and their defaults are generated from the :class:`Recipe` fields' metadata
(``help``, ``flag``, ``shown``, ``cli``), so each default is written here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from ._json import plain
from .errors import ConfigError, DataError

SCHEMA_VERSION = (
    2  # 2: config.json is RunSpec.to_dict() plus facts; 1: the free-form dict before it
)
STEPS = 300  # default budget in optimizer steps (see Recipe)
LR_GRID = (1e-4, 3e-4, 1e-3)  # default learning rates tried on validation
PATIENCE = 100  # default early-stopping patience, in optimizer steps


def _opt(
    default: Any, help: str, flag: str | None = None, shown: str | None = None, **cli: Any
) -> Any:
    """A field with its default and the metadata the CLI is generated from: ``help`` (one line,
    without the default), ``flag`` (None: Python only), ``shown`` (the default as --help says
    it, when the field's own value is not what a user reads) and ``cli`` (argparse settings:
    ``type`` names a checker of :mod:`smart_transfer.cli`, ``choices``, ``nargs``, ``group``)."""
    return field(default=default, metadata={"help": help, "flag": flag, "shown": shown, "cli": cli})


@dataclass(frozen=True)
class Recipe:
    """The training recipe shared by every gradient-trained strategy.

    The budget is counted in optimizer steps, whatever the dataset size: 300 by default, as
    BiT's HyperRule (500 steps below 20k images) and VTAB-1k's protocol do, cut to what two CPU
    cores train in a few minutes for EfficientNet-Lite0 at 96 px; 300 steps are 60 passes over
    160 training images at batch 32, four times the earlier 15 epochs (75 steps), after which
    full fine-tuning in the issue's pilot had not converged. The pretrained layers' learning rate
    is chosen on validation from ``lr_grid`` (the same grid and budget for every strategy):
    the lowest validation loss of the kept weights wins, ties go to the higher validation
    accuracy (see :func:`smart_transfer.strategies.finetune.choose_rate`)."""

    steps: int | None = _opt(
        STEPS,
        "optimizer steps at most, whatever the dataset size",
        "--steps",
        type="positive_int",
        group="budget",
    )  # None: epochs instead
    epochs: int | None = _opt(
        None,
        "instead of --steps: passes over the training images",
        "--epochs",
        "off",
        type="positive_int",
        group="budget",
    )
    lr: float = _opt(
        3e-4,
        "one fixed learning rate for the pretrained layers",
        "--lr",
        "chosen from --lr-grid",
        type="positive_float",
        group="rate",
    )  # used when lr_grid is None
    lr_grid: tuple[float, ...] | None = _opt(
        LR_GRID,
        "learning rates tried on validation, the lowest validation loss kept",
        "--lr-grid",
        "1e-4 3e-4 1e-3",
        type="positive_float",
        nargs="+",
        metavar="LR",
        group="rate",
    )  # None: lr alone
    head_lr_mult: float = _opt(
        10.0,
        "the new head learns this many times faster than the pretrained layers",
        "--head-lr-mult",
        type="positive_float",
    )
    weight_decay: float = _opt(
        1e-4,
        "on conv/linear weights; never on biases and norm layers",
        "--weight-decay",
        type="nonneg_float",
    )
    optimizer: str = _opt(
        "adamw", "adamw, or sgd (momentum 0.9, nesterov)", "--optimizer", choices=("adamw", "sgd")
    )
    batch_size: int = _opt(32, "images per optimizer step", "--batch-size", type="positive_int")
    warmup: float = _opt(
        0.1,
        "fraction of the steps with a linear warm-up, then cosine decay",
        "--warmup",
        type="unit_fraction",
    )
    patience: int | None = _opt(
        PATIENCE,
        "early stopping: optimizer steps without a better validation score",
        "--patience",
        type="positive_int",
    )  # None: no early stopping
    eval_every: int | None = _opt(
        None,
        "validate every this many optimizer steps",
        "--eval-every",
        "every pass over the images, at most 10 steps",
        type="positive_int",
    )
    amp: str | None = _opt(
        None,
        "mixed precision: bf16 on CUDA or the CPU, fp16 on CUDA",
        "--amp",
        "off",
        choices=("bf16", "fp16"),
    )
    channels_last: bool = _opt(
        True,
        "image batches in channels-last memory format, faster convolutions (on CUDA the model too)",
        "--channels-last",
        "on",
        type="bool",
    )

    def rates(self) -> list[float]:
        """The learning rates to try: the grid, or the one fixed rate."""
        return [float(r) for r in self.lr_grid] if self.lr_grid else [float(self.lr)]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """The recipe of a config.json (keys it does not know, from other versions, ignored)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if isinstance(kw.get("lr_grid"), list):
            kw["lr_grid"] = tuple(float(x) for x in kw["lr_grid"])
        return cls(**kw)

    @classmethod
    def build(
        cls,
        *,
        steps: Any = None,
        epochs: Any = None,
        lr: Any = None,
        lr_grid: Any = None,
        **rest: Any,
    ) -> Recipe:
        """The recipe of :func:`~smart_transfer.train`'s keywords, every value checked before any
        work: the step budget (default 300) unless ``epochs`` are given; the grid searched on
        validation (default 1e-4, 3e-4, 1e-3) unless ``lr`` fixes one rate."""
        for name, value in (("steps", steps), ("epochs", epochs)):
            if value is not None and not _integer(value, 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if steps is not None and epochs is not None:
            raise ConfigError("give the budget as steps= (optimizer steps) or epochs=, not both")
        if lr is not None and lr_grid is not None:
            raise ConfigError(
                "give lr= (one fixed rate) or lr_grid= (rates chosen on validation), not both"
            )
        grid = (
            None
            if lr is not None
            else (
                LR_GRID
                if lr_grid is None
                else tuple([lr_grid] if isinstance(lr_grid, (int, float)) else lr_grid)
            )
        )
        for value in [lr] if lr is not None else list(grid or ()):
            if not (_number(value) and value > 0):
                raise ConfigError(
                    f"a learning rate must be a positive number, got {value!r} "
                    "(lr= / lr_grid=, --lr / --lr-grid)"
                )
        if grid is not None and not grid:
            raise ConfigError(
                "lr_grid is empty; give at least one learning rate (or lr= for a fixed one)"
            )
        fixed = lr if lr is not None else grid[0] if grid and len(grid) == 1 else cls.lr
        recipe = cls(
            steps=STEPS if steps is None and epochs is None else steps,
            epochs=epochs,
            lr=float(fixed),
            lr_grid=tuple(float(g) for g in grid) if grid else None,
            **rest,
        )
        recipe.check()
        return recipe

    def check(self) -> None:
        """Refuse, before any work, a setting that would fail or train nothing."""
        checks = (
            ("lr", _number(self.lr) and self.lr > 0, "a positive finite number, e.g. 1e-3"),
            (
                "weight_decay",
                _number(self.weight_decay) and self.weight_decay >= 0,
                "a finite number >= 0, e.g. 1e-4",
            ),
            ("batch_size", _integer(self.batch_size, 1), "a positive integer, e.g. 32"),
            (
                "head_lr_mult",
                _number(self.head_lr_mult) and self.head_lr_mult > 0,
                "a positive number, e.g. 10",
            ),
            ("warmup", _number(self.warmup) and 0 <= self.warmup < 1, "a fraction in [0, 1)"),
            (
                "patience",
                self.patience is None or _integer(self.patience, 1),
                "None or a positive integer",
            ),
            (
                "eval_every",
                self.eval_every is None or _integer(self.eval_every, 1),
                "None or a positive integer (optimizer steps)",
            ),
            ("optimizer", self.optimizer in ("adamw", "sgd"), "'adamw' or 'sgd'"),
            ("amp", self.amp in (None, "bf16", "fp16"), "None, 'bf16' or 'fp16'"),
        )
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} ({option_name(name)}) must be {what}"
                )

    def keywords(self) -> dict[str, Any]:
        """The :func:`~smart_transfer.train` keywords that build this recipe again (a fixed ``lr``
        and a grid are exclusive there; ``steps`` and ``epochs`` too)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw["lr"] = None if self.lr_grid else self.lr
        kw["steps"] = self.steps if self.epochs is None else None
        return kw


def option_name(name: str) -> str:
    """How both front ends spell a recipe field: ``lr (--lr)``, ``warmup (--warmup)``."""
    flag = next((f.metadata.get("flag") for f in fields(Recipe) if f.name == name), None)
    return f"{name} ({flag})" if flag else name


def default_text(f: Any) -> str:
    """A field's default as ``--help`` shows it."""
    shown = f.metadata.get("shown")
    if shown is not None:
        return str(shown)
    value = f.default if f.default is not MISSING else None
    if isinstance(value, bool):
        return "on" if value else "off"
    return (
        "none"
        if value is None
        else " ".join(map(str, value))
        if isinstance(value, tuple)
        else str(value)
    )


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


@dataclass(frozen=True)
class DataSpec:
    """Which images a run trains on and how they are split (the draw itself is in manifest.json)."""

    # what --data named: 'fashion-mnist', a folder, a CSV/TSV, an .npz; None: a dataset object
    spec: str | None = None
    per_class: int | None = None  # labelled images drawn per class for train+val; None: all
    val_fraction: float = 0.2  # stratified share of the drawn images kept for validation
    test_fraction: float | None = (
        None  # held out first; None: 0.2, or 0 with test_data / for Fashion-MNIST
    )
    test_data: str | None = None  # a separate test set (absolute), instead of a held-out share
    on_error: str = "raise"  # an unreadable image: 'raise' names it, 'skip' leaves it out
    seed: int = 0  # seed of the draw (the run's seed)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        known = {f.name for f in fields(cls)}
        cli: dict[str, Any] = (
            d["cli"] if isinstance(d.get("cli"), dict) else {}
        )  # schema 1 runs of the CLI
        kw = {
            k: v for k, v in {**{k: cli[k] for k in known if k in cli}, **d}.items() if k in known
        }
        if "spec" not in kw and isinstance(cli.get("data"), str):
            kw["spec"] = cli["data"]
        return cls(**kw)


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides what a run computes; ``config.json`` is its :meth:`to_dict`."""

    # a name (list_backbones()), a weights file, or an nn.Module's class name
    backbone: str = "efficientnet_lite0"
    backbone_is_name: bool = True  # False: trained from a model object, which loading needs again
    data: DataSpec = field(default_factory=DataSpec)  # the images and their split
    recipe: Recipe = field(default_factory=Recipe)  # steps, learning rates, batch size, ...
    strategy: str = "auto"  # a name of list_strategies()
    options: dict[str, Any] = field(
        default_factory=dict
    )  # the strategy's own options (its StrategyInfo.options_type)
    head: str = "linear"  # the new head of gradient-trained models: 'linear' or 'mlp'
    size: int | None = None  # network input size in pixels; None: the backbone's
    device: str = "auto"  # where it trained ('auto' resolved: cpu, cuda, mps)
    seed: int = 0  # seeds the draw, the initialisation and the batches
    source: str = (
        "batchnorm"  # D_pre: 'batchnorm', a saved profile, a folder, or the type of a loader
    )
    transform: str = "backbone"  # 'backbone': its own transforms; 'custom': transform= was given
    sync_bn: bool = False  # SyncBatchNorm under torchrun

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: plain(getattr(self, f.name)) for f in fields(self)}
        return {"schema_version": SCHEMA_VERSION, **d}

    def typed_options(self) -> Any:
        """The options as the strategy's own frozen dataclass (``StrategyInfo.options_type``),
        every option not given at its default; checked as :func:`~smart_transfer.train` checks
        them."""
        from .strategies import get_strategy

        info = get_strategy(self.strategy)
        options = dict(self.options)
        if "head" in info.options:
            options["head"] = self.head
        return info.check(options)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> RunSpec:
        """The spec of a config.json of schema 1 (before the spec) or 2; a newer or unknown
        version is one :class:`DataError` saying which it is."""
        version = d.get("schema_version") if isinstance(d, dict) else None
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or not 1 <= version <= SCHEMA_VERSION
        ):
            raise DataError(
                f"{where} has schema_version {version!r}, which this smart-transfer cannot read "
                f"(it reads 1 to {SCHEMA_VERSION}); use the smart-transfer version that wrote it "
                f"({d.get('version', 'unknown') if isinstance(d, dict) else 'unknown'}) or train "
                "again"
            )
        recipe = dict(d.get("recipe") or {})
        if version == 1 and not recipe:  # the first runs recorded the budget at the top level
            recipe = {k: d[k] for k in ("epochs", "steps") if k in d}
        data: dict[str, Any] = d["data"] if isinstance(d.get("data"), dict) else {}
        kw = {
            f.name: d[f.name]
            for f in fields(cls)
            if f.name in d and f.name not in ("data", "recipe")
        }
        try:
            return cls(**kw, data=DataSpec.from_dict(data), recipe=Recipe.from_dict(recipe))
        except TypeError as exc:
            raise DataError(
                f"{where} does not hold a run spec of schema_version {version} ({exc}); "
                "the run folder is damaged: restore the file or train the run again"
            ) from None

    @classmethod
    def from_json(cls, path: str | Path) -> RunSpec:
        """The spec recorded in a run's ``config.json`` (a damaged file: one DataError naming
        it)."""
        from .api import read_config

        path = Path(path)
        folder = path.parent if path.name == "config.json" else path
        return cls.from_dict(read_config(folder), str(folder / "config.json"))


__all__ = [
    "LR_GRID",
    "PATIENCE",
    "SCHEMA_VERSION",
    "STEPS",
    "DataSpec",
    "Recipe",
    "RunSpec",
    "option_name",
]
