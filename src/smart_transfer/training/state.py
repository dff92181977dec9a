"""The state of one :func:`~smart_transfer.training.fit` run, and its checkpoint.

:class:`FitState` holds everything a run changes as it goes: the step counters, where the
stream of training batches is inside the current pass, the best validation score and the
weights behind it, the history, and the current round's training sums (on the device). A
checkpoint is this state written down (:func:`save`); a resume is the same state read back
(:func:`load`) and the loop carried on from there, so an interrupted-then-resumed run replays
the same batches in the same order and ends with the same weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from . import checkpoint as ckpt

BatchTransform = Callable[[Tensor], Tensor]
EVAL_EVERY = 10  # with a step budget: validate at least this often (and at least once per pass)


@dataclass
class Budget:
    """How long to train and how often to look at the validation split (all in optimizer steps)."""

    total: int  # optimizer steps in all
    eval_every: int  # validation after this many steps (and after the last one)
    per_epoch: int | None  # batches per pass over the training loader (None: unknown length)


def budget(
    train_batches: Any, epochs: int | None, steps: int | None, eval_every: int | None
) -> Budget:
    """Resolve ``epochs`` / ``steps`` / ``eval_every`` (exactly one of epochs and steps)."""
    for name, value, low in (
        ("epochs", epochs, 0),
        ("steps", steps, 0),
        ("eval_every", eval_every, 1),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < low
        ):
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if (epochs is None) == (steps is None):
        raise ConfigError(
            "give the budget as epochs= or as steps= (optimizer steps), exactly one of them"
        )
    try:
        per_epoch: int | None = len(train_batches)
    except TypeError:
        per_epoch = None
    if epochs is not None:
        if per_epoch is None:
            raise ConfigError("epochs= needs a training loader with a length; pass steps= instead")
        total = epochs * per_epoch
        every = eval_every or max(per_epoch, 1)  # once per epoch, as epochs promise
    else:
        total = int(steps)  # type: ignore[arg-type]
        every = eval_every or min(per_epoch or EVAL_EVERY, EVAL_EVERY)
    return Budget(total=total, eval_every=every, per_epoch=per_epoch)


def better_on_validation(acc: float, loss: float, best_acc: float, best_loss: float) -> bool:
    """Whether a score beats the best so far: higher validation accuracy wins; at equal accuracy
    (frequent on a few dozen images) the lower validation loss (a NaN loss never wins a tie).
    The rule of :func:`fit` and of :class:`smart_transfer.strategies.selection.KeepBest`."""
    return acc > best_acc or (acc == best_acc and loss < best_loss)


def raw_model(model: nn.Module) -> nn.Module:
    """The model itself: DistributedDataParallel keeps it in ``.module``."""
    return getattr(model, "module", model)


def loader_generator(batches: Any) -> torch.Generator | None:
    """The generator that shuffles ``batches`` (a loader's ``.generator``), if it has one."""
    gen = getattr(batches, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


@dataclass
class BatchStream:
    """Training batches as one stream across passes over the loader; the per-pass scheduler is
    stepped where a pass ends. Knows where it is, so a checkpoint can replay the open pass."""

    loader: Any
    per_epoch: int | None  # the loader's length, when it has one
    scheduler: Any = None  # stepped after every pass
    epoch: int = 0  # passes begun
    in_epoch: int = 0  # batches of the current pass consumed
    epoch_rng: Any = None  # the loader generator's state when the current pass began
    it: Any = None  # the open pass (None between passes)

    def next(self) -> Any:
        """The next training batch, starting a new pass over the loader when one ends."""
        for _ in range(2):
            if self.it is None:
                gen = loader_generator(self.loader)
                self.epoch_rng = gen.get_state() if gen is not None else None
                self.it, self.in_epoch = iter(self.loader), 0
                self.epoch += 1
            try:
                batch = next(self.it)
            except StopIteration:
                self.end_pass()
                continue
            self.in_epoch += 1
            if self.per_epoch is not None and self.in_epoch >= self.per_epoch:
                self.end_pass()  # a known length: the pass ends with its last batch
            return batch
        raise DataError("the training loader yielded no batches; pass a non-empty loader")

    def end_pass(self) -> None:
        if self.it is not None and self.scheduler is not None:
            self.scheduler.step()
        self.it = None

    def position(self) -> dict[str, Any]:
        """Where the stream is, as checkpoint entries."""
        pos: dict[str, Any] = {
            "in_epoch": self.in_epoch if self.it is not None else 0,
            "passes": self.epoch,
        }
        if self.it is not None and self.epoch_rng is not None:
            pos["epoch_rng"] = self.epoch_rng
        pos["open_pass"] = self.it is not None
        return pos

    def seek(self, state: dict[str, Any], rounds: int) -> None:
        """Go back to a checkpoint's position: replay its open pass up to where it stopped
        (the same order, the same batches)."""
        self.epoch = int(state.get("passes", rounds))
        if not state.get("open_pass"):
            return
        gen = loader_generator(self.loader)
        if gen is not None and "epoch_rng" in state:
            gen.set_state(state["epoch_rng"])
        self.epoch_rng = state.get("epoch_rng")
        self.it = iter(self.loader)
        for _ in range(int(state["in_epoch"])):
            next(self.it)
        self.in_epoch = int(state["in_epoch"])


@dataclass
class FitState:
    """Everything one fit changes as it runs; the steps and callbacks read and update it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    stream: BatchStream
    val_batches: Any
    budget: Budget
    device: torch.device
    train_transform: BatchTransform | None = None
    val_transform: BatchTransform | None = None
    per_step: Any = None  # scheduler stepped after every optimizer step (the cosine schedule)
    scaler: Any = None  # fp16 gradient scaler (CUDA)
    amp: str | None = None
    channels_last: bool = False
    train_mode: Callable[[nn.Module], None] | None = None
    rank: int = 0
    step: int = 0  # optimizer steps taken
    rounds: int = 0  # validations done (the initial one not counted)
    bad: int = 0  # validations in a row without improvement
    best_acc: float = 0.0
    best_loss: float = float("inf")
    best_epoch: int = 0  # validation round whose weights are kept (0: the initial weights)
    best_step: int = 0
    best_state: dict[str, Tensor] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    num_classes: int | None = None  # the model's output width, once a step has shown it
    should_stop: bool = False  # set by a callback (early stopping) before a round
    stopped_early: bool = False
    # this round's summed training loss and correct predictions, on the device (set per round)
    loss_sum: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    correct: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.int64))
    seen: int = 0  # this round's training images
    round_start: int = 0  # the first step of this round

    def keep_best(self, accuracy: float, loss: float) -> None:
        """Remember the current weights as the best ones, scored ``accuracy`` / ``loss``."""
        self.best_acc, self.best_loss, self.bad = accuracy, loss, 0
        self.best_epoch, self.best_step = self.rounds, self.step
        self.best_state = copy.deepcopy(raw_model(self.model).state_dict())


# --------------------------------------------------------------------------- checkpoint


def rng_state(batches: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    gen = loader_generator(batches)
    if gen is not None:
        state["loader"] = gen.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(batches: Any, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    gen = loader_generator(batches)
    if "loader" in state and gen is not None:
        gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_state(s: FitState) -> dict[str, Any]:
    """The ``state.pt`` of a checkpoint: counters, best score, history, optimizer, schedulers,
    generators and the stream's position (tensors, numbers, strings, lists and dicts only)."""
    state: dict[str, Any] = {
        "step": s.step,
        **s.stream.position(),
        "best_loss": s.best_loss,
        "best_step": s.best_step,
        "epoch": s.rounds,
        "best_acc": s.best_acc,
        "best_epoch": s.best_epoch,
        "bad_epochs": s.bad,
        "history": s.history,
        "optimizer": s.optimizer.state_dict(),
        "rng": rng_state(s.stream.loader),
    }
    if s.per_step is not None:
        state["per_step"] = s.per_step.state_dict()
    if s.stream.scheduler is not None:
        state["scheduler"] = s.stream.scheduler.state_dict()
    return state


def save(s: FitState, folder: Path) -> None:
    """Write ``s`` as one checkpoint unit: weights, best weights and state, all or none."""
    ckpt.save_checkpoint(folder, raw_model(s.model).state_dict(), s.best_state, checkpoint_state(s))


def load(s: FitState, folder: Path | None) -> None:
    """Put the newest checkpoint of ``folder`` back into ``s`` (weights, optimizer, schedulers,
    counters, generators, the stream's position): a resumed fit carries on from there."""
    if folder is None or not ckpt.has_checkpoint(folder):
        raise DataError(
            f"nothing to resume in {str(folder)!r}: no checkpoint there; start a new run"
        )
    state, s.best_state = _restore(folder, s)
    s.best_acc, s.best_epoch = float(state["best_acc"]), int(state["best_epoch"])
    s.best_loss = float(state.get("best_loss", float("inf")))
    s.best_step = int(state.get("best_step", 0))
    s.history = list(state["history"])
    s.rounds, s.bad = int(state["epoch"]), int(state["bad_epochs"])
    s.step = int(state.get("step", s.rounds * (s.budget.per_epoch or 0)))
    s.stream.seek(state, s.rounds)
    set_rng_state(s.stream.loader, state["rng"])


_FIX = (
    "resume with the model and settings the run was started with, or start a new run in another "
    "folder"
)


def _restore(folder: Path, s: FitState) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Load the newest checkpoint of ``folder`` into the model, optimizer, schedulers and
    generators; return ``(state, best weights)``. A checkpoint that does not fit (another
    backbone or width, another optimizer) is one :class:`DataError` naming it."""
    weights, best_state, state = ckpt.load_checkpoint(folder)
    where = str(ckpt.latest(folder))
    try:
        raw_model(s.model).load_state_dict(weights)
    except RuntimeError as exc:
        raise DataError(
            f"the checkpoint {where!r} does not fit this model (another backbone or width?): "
            f"{_mismatch(exc)}; {_FIX}"
        ) from None
    try:
        s.optimizer.load_state_dict(state["optimizer"])
        if s.per_step is not None and "per_step" in state:
            s.per_step.load_state_dict(state["per_step"])
        if s.stream.scheduler is not None and "scheduler" in state:
            s.stream.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(s.stream.loader, state["rng"])
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise DataError(
            f"the optimizer or generator state in {where + '/' + ckpt.STATE!r} does not fit this "
            f"run ({' '.join(str(exc).split())[:160]}); {_FIX}"
        ) from None
    return state, best_state


def _mismatch(exc: BaseException) -> str:
    """The first missing, unexpected or resized key of a load_state_dict error."""
    lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
    first = lines[0] if lines else str(exc).splitlines()[0]
    return " ".join(first.split())[:200]
