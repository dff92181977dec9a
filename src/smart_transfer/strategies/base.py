"""What every strategy receives (a :class:`Context`) and returns (a :class:`Outcome`).

A strategy is a function ``run(ctx, **options) -> Outcome``: it turns the pretrained backbone,
the data and the training recipe in ``ctx`` into a trained model, using the engine (profile,
compare, plan, apply) and the loop (:func:`smart_transfer.training.fit`). ``train()`` builds
the context once; strategies that try several candidates (``first-k-frozen``,
``smart-kernel`` with ``select="val"``, ``auto``) train each one with :meth:`Context.fit`,
which seeds it from ``(seed, tag)`` alone, so candidates see the same batches and a resumed run
retrains nothing that had finished.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..spec import LR_GRID, PATIENCE, STEPS, Recipe  # noqa: F401  (the recipe is part of the run spec)
from ..training import FitResult, checkpoint as ckpt, fit
from ..training.distributed import world


@dataclass
class Context:
    """Everything a strategy needs, resolved once by :func:`smart_transfer.train`."""

    make_model: Callable[[], nn.Module]  # a fresh pretrained backbone, head replaced
    backbone_name: str
    num_classes: int
    train: Any  # shuffled raw (x, y) training batches
    val: Any  # raw validation batches
    train_eval: Any  # the training images in a fixed order (for profiles and probe features)
    train_tf: Callable[[torch.Tensor], torch.Tensor]  # augmentation
    eval_tf: Callable[[torch.Tensor], torch.Tensor]  # evaluation transform
    recipe: Recipe
    seed: int = 0
    out: Path | None = None  # the run folder (checkpoints go below it)
    resume: bool = False
    progress: bool = True
    source: Any = None  # D_pre: None (BatchNorm), a loader, a folder or a saved profile
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    samples_per_class: float = 0.0
    cache: dict[Any, Any] = field(default_factory=dict)  # e.g. probe features, profiles
    head: str = "linear"  # the new head of gradient-trained models: "linear" or "mlp" (seed 001's)
    # which statistics the D_pre / D_new profiles compute (a StatsConfig); None: every default
    # statistic, which the run's report draws; advise, which only compares, asks for less
    profile_stats: Any = None

    def seed_everything(self, tag: str) -> None:
        """Seed the global generator and the loader's shuffling from ``(seed, tag)``."""
        s = (int(self.seed) * 1_000_003 + zlib.crc32(tag.encode())) % (2**31)
        torch.manual_seed(s)
        gen = getattr(self.train, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(s)

    def fresh_model(self, tag: str) -> nn.Module:
        self.seed_everything(tag)
        return self.make_model().to(self.device)

    def checkpoint_dir(self, tag: str) -> Path | None:
        return None if self.out is None else self.out / "checkpoints" / tag

    def fit(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        tag: str,
        seed_tag: str | None = None,
        steps: int | None = None,
        **kw: Any,
    ) -> FitResult:
        """Train one candidate; resumable per ``tag`` (a finished one is loaded, not retrained).

        ``seed_tag`` (default ``tag``) seeds the batches and augmentations: the candidates of one
        learning-rate grid share it, so they differ in the rate only. ``steps`` overrides the
        recipe's budget (a phase of ``fine-tune``)."""
        folder = self.checkpoint_dir(tag)
        if folder is not None and self.resume and (folder / "done.json").is_file():
            done = json.loads((folder / "done.json").read_text(encoding="utf-8"))
            getattr(model, "module", model).load_state_dict(ckpt.load_best(folder))
            return FitResult(**done)
        resume = bool(folder is not None and self.resume and ckpt.has_checkpoint(folder))
        self.seed_everything((seed_tag or tag) + "/fit")
        r = self.recipe
        budget: dict[str, Any] = (
            {"steps": steps}
            if steps is not None
            else ({"steps": r.steps} if r.epochs is None else {"epochs": r.epochs})
        )
        fit_model = model
        if world()[1] > 1:
            from torch.nn.parallel import DistributedDataParallel

            fit_model = DistributedDataParallel(model)
        result = fit(
            fit_model,
            optimizer,
            self.train,
            self.val,
            **budget,
            train_transform=self.train_tf,
            val_transform=self.eval_tf,
            eval_every=r.eval_every,
            scheduler="cosine",
            warmup=r.warmup,
            patience=self.patience_rounds(**budget),
            checkpoint_dir=folder,
            log_path=None if folder is None else folder / "log.jsonl",
            resume=resume,
            amp=r.amp,
            channels_last=r.channels_last,
            progress=self.progress,
            desc=tag,
            **kw,
        )
        if folder is not None and world()[0] == 0:
            from .._atomic import atomic_open

            with atomic_open(folder / "done.json", "w", encoding="utf-8") as f:
                json.dump(result.to_dict(), f)
        return result

    def patience_rounds(self, steps: int | None = None, epochs: int | None = None) -> int | None:
        """The recipe's patience (optimizer steps) as a count of validations, at least 1."""
        from ..training.loop import _budget

        if self.recipe.patience is None:
            return None
        every = _budget(self.train, epochs, steps, self.recipe.eval_every).eval_every
        return max(1, math.ceil(self.recipe.patience / every))


@dataclass
class Outcome:
    """What a strategy returns."""

    model: nn.Module
    val_accuracy: float
    fit: FitResult | None = None  # None for closed-form strategies (linear probes)
    plan: Any = None  # the FreezePlan applied, if any
    chosen: dict[str, Any] = field(default_factory=dict)  # hyper-parameters chosen on validation
    tried: list[dict[str, Any]] = field(default_factory=list)  # candidates and their val accuracy
    log_tag: str | None = None  # which candidate's log.jsonl is the run's log
    model_kind: dict[str, Any] = field(default_factory=lambda: {"kind": "backbone"})
    extra: dict[str, Any] = field(default_factory=dict)  # profiles, similarity, advice...


class Transformed:
    """Batches of ``loader`` with ``transform`` applied to the images (for profiling)."""

    def __init__(self, loader: Iterable[Any], transform: Callable[[torch.Tensor], torch.Tensor]):
        self.loader, self.transform = loader, transform

    def __iter__(self) -> Iterator[torch.Tensor]:
        for x, _y in self.loader:
            yield self.transform(x)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def check_options(name: str, options: dict[str, Any], known: Iterable[str] | None = None) -> None:
    """Refuse, before any work, an option ``name`` does not have or a value it cannot take
    (see :meth:`~smart_transfer.strategies.StrategyInfo.check`)."""
    from .registry import get_strategy

    get_strategy(name).check(options, known)
