"""Fit a classifier with validation-based model selection.

The budget is counted in optimizer steps (``steps``) or, as before, in passes over the training
batches (``epochs``, which is ``epochs * len(loader)`` steps). Every ``eval_every`` steps the model
is scored on the validation batches; the best state (highest validation accuracy; at equal
accuracy, which a few dozen validation images make frequent, the lower validation loss) is kept
and restored at the end, and training stops early when ``patience`` validations in a row did not
improve on it. The test set is never seen here: callers evaluate it once, after ``fit`` returns.

:func:`fit` is a short driver: a :class:`~.state.FitState` holds the run, a :class:`Trainer`
takes its steps (``train_step``, ``validation_step``, each overridable in a subclass), and
:mod:`.callbacks` do what happens around them (early stopping, progress bar, log, checkpoint,
Ctrl-C). The training loss and accuracy, and the validation sums, stay on the device and reach
the host once per validation round (on CUDA no step waits for the host; on a CPU every step
also checks the loss for NaN/Inf, which is free there).

With ``checkpoint_dir`` every validation ends with a checkpoint (see :mod:`.checkpoint`) and a
line in ``log_path``; ``resume=True`` loads the state of the last checkpoint and carries on,
replaying the current pass over the loader up to where it was, so that an
interrupted-then-resumed run ends with the same weights as an uninterrupted one (on a CPU; the
random-number generators, the loader's shuffling generator, the optimizer and the scheduler are
all restored). Ctrl-C raises :class:`TrainingInterrupted` after the last finished validation was
saved.

Under ``torch.distributed`` (a model wrapped in DistributedDataParallel, one data shard per
rank) accuracies and losses are summed over ranks, so every rank takes the same decisions,
and only rank 0 writes files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .._atomic import PathLike
from ..data.batches import batch_pair
from ..errors import ConfigError, DataError, TrainingError
from . import state as fit_state
from .callbacks import (
    Callback,
    Checkpoint,
    CtrlC,
    EarlyStopping,
    JsonLog,
    ProgressBar,
    TrainingInterrupted,
)
from .checks import forward, validate_batch
from .distributed import world as _world
from .schedule import cosine_with_warmup
from .state import (
    BatchStream,
    BatchTransform,
    FitState,
    better_on_validation,
    budget as _budget,  # strategies.base reads the budget through it
    raw_model,
)

__all__ = [
    "FitResult",
    "FitState",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "channels_last_batch",
    "evaluate",
    "fit",
    "predict",
    "validation_step",
]


@dataclass(frozen=True)
class FitResult:
    best_epoch: int  # 1-based validation round whose weights were kept (0 = the initial weights)
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per validation
    stopped_early: bool = False
    seconds: float = 0.0
    best_val_loss: float = float("nan")  # mean validation loss of the kept weights
    best_step: int = 0  # optimizer steps behind the kept weights
    steps: int = 0  # optimizer steps taken

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "history": list(self.history),
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "steps": self.steps,
        }


# --------------------------------------------------------------------------- helpers


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _all_sum(values: Tensor) -> list[float]:
    """Sum a 1-D float64 tensor over the ranks of the default process group (one all-reduce)
    and read it on the host: the one host sync of a validation round."""
    if _world()[1] > 1:
        torch.distributed.all_reduce(values)
    return [float(v) for v in values.tolist()]


def channels_last_batch(x: Tensor) -> Tensor:
    """A 4-D image batch in the channels-last memory format: the same values, faster
    convolutions (on the CPU as well). Anything else is returned as it is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _prepare(
    batch: Any,
    device: torch.device,
    transform: BatchTransform | None,
    channels_last: bool,
    where: str,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Check one (x, y) batch (labels against ``num_classes`` when known), move it to ``device``,
    transform the images. The checks read the labels where the loader made them, on the host."""
    x, y = batch_pair(batch, where)
    validate_batch(x, y, num_classes=num_classes, where=where)
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # from the host: safe
    if transform is not None:
        x = transform(x)
    if channels_last:
        x = channels_last_batch(x)
    return x, y


def _autocast(device: torch.device, amp: str | None) -> Any:
    """bf16 autocast on CUDA or the CPU, fp16 on CUDA; anything else runs in fp32."""
    if (
        amp is None
        or device.type not in ("cuda", "cpu")
        or (amp == "fp16" and device.type != "cuda")
    ):
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def validation_step(
    model: nn.Module, x: Tensor, y: Tensor, where: str, labels_checked: bool
) -> Tensor:
    """The logits of one validation batch (eval mode, no gradients: the caller arranges both)."""
    return forward(model, x, y, where, labels_checked=labels_checked)


@torch.no_grad()
def _score(
    model: nn.Module,
    batches: Iterable[Any],
    transform: BatchTransform | None,
    amp: str | None = None,
    channels_last: bool = False,
    step: Callable[[nn.Module, Tensor, Tensor, str, bool], Tensor] = validation_step,
    num_classes: int | None = None,
) -> Tensor:
    """``[correct, summed loss, count]`` over ``batches`` in eval mode (mode restored), as a
    float64 tensor on the model's device: nothing here waits for the device. Labels are checked
    on the host against ``num_classes`` (the model's width, once known)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    try:
        for index, batch in enumerate(batches):
            where = f"validation batch {index}"
            x, y = _prepare(batch, device, transform, channels_last, where, num_classes)
            with _autocast(device, amp):
                logits = step(model, x, y, where, num_classes is not None)
            num_classes = int(logits.shape[1])  # later batches' labels are checked on the host
            correct += (logits.argmax(dim=1) == y).sum()
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
            total += int(y.shape[0])
    finally:
        model.train(was_training)
    return torch.stack((correct.double(), loss_sum, loss_sum.new_full((), float(total))))


def evaluate(
    model: nn.Module,
    batches: Iterable[Any],
    transform: BatchTransform | None = None,
) -> float:
    """Top-1 accuracy of ``model`` over ``(x, y)`` batches (eval mode, then the mode restored)."""
    correct, _, total = _all_sum(_score(model, batches, transform))
    if total == 0:
        raise DataError("evaluation got no batches; pass a non-empty loader")
    return correct / total


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[Any],
    transform: BatchTransform | None = None,
    channels_last: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(logits, labels)`` of every batch, concatenated (labels -1 for unlabelled batches).

    ``channels_last``: image batches in the channels-last memory format (same values, faster
    convolutions). The logits stay on the device until the last batch (one copy to the host)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    outs: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        for index, batch in enumerate(batches):
            x, y = batch_pair(batch, f"batch {index}", labelled=False)
            x = torch.as_tensor(x).to(device, non_blocking=True)
            if transform is not None:
                x = transform(x)
            if channels_last:
                x = channels_last_batch(x)
            outs.append(model(x).float())
            labels.append(
                torch.full((x.shape[0],), -1, dtype=torch.int64)
                if y is None
                else torch.as_tensor(y).cpu()
            )
    finally:
        model.train(was_training)
    if not outs:
        raise DataError("prediction got no batches; pass a non-empty loader")
    return torch.cat(outs).cpu(), torch.cat(labels)


# --------------------------------------------------------------------------- the steps


class Trainer:
    """The steps of :func:`fit` over a :class:`FitState`, each small and overridable (as in
    skorch's ``train_step`` / ``validation_step``); ``callbacks`` run around them."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)
        # only the callbacks that do something per step are called per step
        self._per_step = [
            cb for cb in self.callbacks if type(cb).on_step_end is not Callback.on_step_end
        ]

    def run(
        self, state: FitState, resume_from: Path | None = None, resume: bool = False
    ) -> FitResult:
        """Load the checkpoint (``resume``) or score the initial weights, then train rounds
        until the budget is spent or a callback stops the fit; the best weights are restored."""
        if resume:
            fit_state.load(state, resume_from)
        else:
            self.initial_validation(state)
        for cb in self.callbacks:
            cb.on_fit_start(state)
        started = time.perf_counter()
        try:
            while state.step < state.budget.total and not self.stop_requested(state):
                t0 = time.perf_counter()
                (state.train_mode or nn.Module.train)(state.model)
                self.train_round(state)
                record = self.validation_round(state, time.perf_counter() - t0)
                for cb in self.callbacks:
                    cb.on_validation_end(state, record)
        except BaseException as exc:
            for cb in self.callbacks:
                cb.on_exception(state, exc)
            raise
        finally:
            for cb in self.callbacks:
                cb.on_fit_end(state)
        raw_model(state.model).load_state_dict(state.best_state)
        return FitResult(
            best_epoch=state.best_epoch,
            best_val_accuracy=state.best_acc,
            history=state.history,
            stopped_early=state.stopped_early,
            seconds=time.perf_counter() - started,
            best_val_loss=state.best_loss,
            best_step=state.best_step,
            steps=state.step,
        )

    def stop_requested(self, state: FitState) -> bool:
        """Ask the callbacks before a round; True: stop here."""
        for cb in self.callbacks:
            cb.on_round_start(state)
        return state.should_stop

    def initial_validation(self, state: FitState) -> None:
        """Score the weights fit starts from: the best so far until a round beats them."""
        correct, loss, total = _all_sum(self.score(state))
        if total == 0:
            raise DataError("evaluation got no batches; pass a non-empty validation loader")
        state.keep_best(correct / total, loss / total)

    def score(self, state: FitState) -> Tensor:
        """``[correct, summed loss, count]`` of the validation batches, on the device."""
        return _score(
            state.model,
            state.val_batches,
            state.val_transform,
            state.amp,
            state.channels_last,
            step=self.validation_step,
            num_classes=state.num_classes,
        )

    def validation_step(
        self, model: nn.Module, x: Tensor, y: Tensor, where: str, labels_checked: bool
    ) -> Tensor:
        """The logits of one validation batch."""
        return validation_step(model, x, y, where, labels_checked)

    def train_round(self, state: FitState) -> None:
        """Train up to the next validation; the round's sums stay on the device until then."""
        state.loss_sum = torch.zeros((), dtype=torch.float64, device=state.device)
        state.correct = torch.zeros((), dtype=torch.int64, device=state.device)
        state.seen, state.round_start = 0, state.step + 1
        every = state.budget.eval_every
        end = min(state.budget.total, (state.step // every + 1) * every)
        while state.step < end:
            self.train_step(state, state.stream.next())
            for cb in self._per_step:
                cb.on_step_end(state)

    def train_step(self, state: FitState, batch: Any) -> None:
        """One optimizer step on ``batch``; its loss and correct count are added on the device."""
        where = (
            f"epoch {state.stream.epoch}, batch {state.stream.in_epoch or state.budget.per_epoch}"
        )
        x, y = _prepare(
            batch,
            state.device,
            state.train_transform,
            state.channels_last,
            where,
            state.num_classes,
        )
        state.optimizer.zero_grad(set_to_none=True)
        with _autocast(state.device, state.amp):
            logits = forward(state.model, x, y, where, labels_checked=state.num_classes is not None)
            loss = self.loss(logits.float(), y)
        state.num_classes = int(logits.shape[1])
        if state.device.type != "cuda" and not torch.isfinite(loss.detach()):  # free on a CPU
            self.fail(state, float(loss.detach()), where)
        self.optimize(state, loss)
        state.step += 1
        n = int(y.shape[0])
        state.loss_sum += loss.detach().double() * n
        state.correct += (logits.detach().argmax(1) == y).sum()
        state.seen += n

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """The training loss of one batch (mean cross-entropy)."""
        return nn.functional.cross_entropy(logits, y)

    def optimize(self, state: FitState, loss: Tensor) -> None:
        """Backward pass, optimizer step (through the fp16 scaler when there is one), per-step
        schedule."""
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            loss.backward()
            state.optimizer.step()
        if state.per_step is not None:
            state.per_step.step()

    def validation_round(self, state: FitState, seconds: float) -> dict[str, float]:
        """Score the validation split, read the round's sums on the host (one sync), keep the
        weights if they are the best, count the round; returns its row of the history."""
        train = torch.stack(
            (state.loss_sum, state.correct.double(), state.loss_sum.new_full((), float(state.seen)))
        )
        t_loss, t_correct, t_seen, v_correct, v_loss, v_total = _all_sum(
            torch.cat((train, self.score(state)))
        )
        if not math.isfinite(t_loss):  # on CUDA the steps did not look; on a CPU they did
            self.fail(state, t_loss, f"steps {state.round_start}-{state.step}")
        acc, loss = v_correct / v_total, v_loss / v_total
        state.rounds += 1
        per_epoch = state.budget.per_epoch
        record = {
            "epoch": state.rounds
            if per_epoch is None
            else math.ceil(state.step / max(per_epoch, 1)),
            "step": state.step,
            "train_loss": t_loss / max(t_seen, 1),
            "train_accuracy": t_correct / max(t_seen, 1),
            "val_loss": loss,
            "val_accuracy": acc,
            "lr": float(state.optimizer.param_groups[0]["lr"]),
            "seconds": seconds,
        }
        state.history.append(record)
        if better_on_validation(acc, loss, state.best_acc, state.best_loss):
            state.keep_best(acc, loss)
        else:
            state.bad += 1
        return record

    def fail(self, state: FitState, value: float, where: str) -> None:
        """A NaN/Inf training loss: restore the best weights so far and stop with one error."""
        raw_model(state.model).load_state_dict(state.best_state)
        raise TrainingError(
            f"the training loss is {value} at {where}; the weights of validation round "
            f"{state.best_epoch} (step {state.best_step}, the best so far) were restored. "
            "Lower the learning rate or check the inputs for NaN/Inf"
        )


# --------------------------------------------------------------------------- fit


def _check_options(patience: int | None, amp: str | None) -> None:
    if patience is not None and (
        isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
    ):
        raise ConfigError(f"patience must be a positive integer or None, got {patience!r}")
    if amp not in (None, "bf16", "fp16"):
        raise ConfigError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")


def _new_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_batches: Any,
    val_batches: Any,
    budget: fit_state.Budget,
    scheduler: Any,
    warmup: float,
    **options: Any,
) -> FitState:
    """A fresh :class:`FitState`: the device, the cosine schedule (``scheduler="cosine"``,
    stepped per optimizer step; any other scheduler is stepped per pass), the fp16 scaler."""
    device = _device_of(model)
    if options.get("channels_last") and device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    per_step = None
    if scheduler == "cosine":
        per_step = cosine_with_warmup(optimizer, budget.total, int(warmup * budget.total))
        scheduler = None
    scaler = (
        torch.amp.GradScaler("cuda")
        if options.get("amp") == "fp16" and device.type == "cuda"
        else None
    )
    stream = BatchStream(loader=train_batches, per_epoch=budget.per_epoch, scheduler=scheduler)
    return FitState(
        model=model,
        optimizer=optimizer,
        stream=stream,
        val_batches=val_batches,
        budget=budget,
        device=device,
        per_step=per_step,
        scaler=scaler,
        rank=_world()[0],
        **options,
    )


def _callbacks(
    rank: int,
    progress: bool,
    desc: str,
    patience: int | None,
    folder: Path | None,
    log: Path | None,
) -> list[Callback]:
    """The built-in callbacks the arguments of :func:`fit` ask for (only rank 0 writes)."""
    cbs: list[Callback] = [] if patience is None else [EarlyStopping(patience)]
    if rank == 0:
        cbs += [ProgressBar(desc)] if progress else []
        cbs += [JsonLog(log)] if log is not None else []
        cbs += [Checkpoint(folder)] if folder is not None else []
    return cbs + [CtrlC(folder)]


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_batches: Iterable[Any],
    val_batches: Iterable[Any],
    epochs: int | None = None,
    train_transform: BatchTransform | None = None,
    val_transform: BatchTransform | None = None,
    scheduler: Any | None = None,
    progress: bool = True,
    desc: str = "train",
    *,
    steps: int | None = None,
    eval_every: int | None = None,
    warmup: float = 0.1,
    patience: int | None = None,
    checkpoint_dir: PathLike | None = None,
    log_path: PathLike | None = None,
    resume: bool = False,
    train_mode: Callable[[nn.Module], None] | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    callbacks: Sequence[Callback] = (),
    trainer: type[Trainer] = Trainer,
) -> FitResult:
    """Train for ``epochs`` passes or ``steps`` optimizer steps and restore the weights with the
    best validation score (accuracy; ties: the lower loss).

    Args:
        epochs / steps: the budget, exactly one of them; ``steps`` counts optimizer steps across
            passes over the loader (a few-shot set gives a handful of steps per pass).
        eval_every: validate after this many steps; default once per epoch with ``epochs``,
            with ``steps`` every ``min(batches per epoch, 10)`` steps. Each validation is one
            row of the history, one checkpoint and one line of the log.
        scheduler: None (constant lr), ``"cosine"`` (linear warm-up over the first ``warmup``
            fraction of the steps, then cosine decay, stepped per batch) or any scheduler
            object, stepped after every pass over the training loader.
        patience: stop when this many validations in a row did not improve on the best.
        checkpoint_dir: write a checkpoint after every validation (only rank 0 writes).
        log_path: append one JSON line per validation.
        resume: continue from the checkpoint in ``checkpoint_dir``.
        train_mode: called instead of ``model.train()`` before training (e.g. to keep BatchNorm
            layers in eval mode); again after every validation.
        amp: ``"bf16"`` autocast (CUDA or CPU) or ``"fp16"`` (CUDA only; ignored on a CPU).
        channels_last: feed image batches in the channels-last memory format (faster
            convolutions on the CPU as well); on CUDA the model is converted too.
        callbacks: more :class:`~.callbacks.Callback` objects, run after the built-in ones.
        trainer: a :class:`Trainer` subclass whose steps to run (e.g. another loss).
    """
    _check_options(patience, amp)
    budget = _budget(train_batches, epochs, steps, eval_every)
    state = _new_state(
        model,
        optimizer,
        train_batches,
        val_batches,
        budget,
        scheduler,
        warmup,
        train_transform=train_transform,
        val_transform=val_transform,
        amp=amp,
        channels_last=channels_last,
        train_mode=train_mode,
    )
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    log = Path(log_path) if log_path is not None else None
    cbs = _callbacks(state.rank, progress, desc, patience, folder, log) + list(callbacks)
    return trainer(cbs).run(state, folder, resume=resume)
