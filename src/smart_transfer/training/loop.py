"""Fit a classifier with validation-based model selection.

The budget is counted in optimizer steps (``steps``) or, as before, in passes over the training
batches (``epochs``, which is ``epochs * len(loader)`` steps). Every ``eval_every`` steps the model
is scored on the validation batches; the best state (highest validation accuracy; at equal
accuracy, which a few dozen validation images make frequent, the lower validation loss) is kept
and restored at the end, and training stops early when ``patience`` validations in a row did not
improve on it. The test set is never seen here: callers evaluate it once, after ``fit`` returns.

Between two validations the training loss and accuracy are summed on the device, so a step does
not wait for the host (on CUDA; on a CPU every step also checks the loss for NaN/Inf, which is free
there); the host reads them once per validation.

With ``checkpoint_dir`` every validation ends with a checkpoint (see :mod:`.checkpoint`) and a
line in ``log_path``; ``resume=True`` continues from the last checkpoint, replaying the current
pass over the loader up to where it was, so that an interrupted-then-resumed run ends with the
same weights as an uninterrupted one (on a CPU; the random-number generators, the loader's
shuffling generator, the optimizer and the scheduler are all restored). Ctrl-C raises
:class:`TrainingInterrupted` after the last finished validation was saved.

Under ``torch.distributed`` (a model wrapped in DistributedDataParallel, one data shard per
rank) accuracies and losses are summed over ranks, so every rank takes the same decisions,
and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .._atomic import PathLike, disk_errors
from ..errors import ConfigError, DataError, SmartTransferError, TrainingError
from . import checkpoint as ckpt
from .checks import forward, validate_batch
from .distributed import world as _world
from .schedule import cosine_with_warmup

BatchTransform = Callable[[Tensor], Tensor]
EVAL_EVERY = 10  # with a step budget: validate at least this often (and at least once per pass)


class TrainingInterrupted(SmartTransferError, KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: the last finished epoch is in the checkpoint folder."""

    def __init__(self, message: str, checkpoint_dir: Path | None, epoch: int) -> None:
        # epoch: the validation round that was running (an epoch when validating once per epoch)
        super().__init__(message)
        self.checkpoint_dir = checkpoint_dir
        self.epoch = epoch


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


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over the ranks of the default process group (identity without one)."""
    if _world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _split(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and ("label" in batch or "labels" in batch):
        y = batch["label"] if "label" in batch else batch["labels"]
        x = next(batch[k] for k in ("image", "images", "pixel_values", "x", "input") if k in batch)
        return x, y
    raise DataError(
        f"a training or validation batch must be an (images, labels) pair, got "
        f"{type(batch).__name__}; wrap the images with their labels, e.g. "
        "smart_transfer.data.loader(dataset, indices)"
    )


def channels_last_batch(x: Tensor) -> Tensor:
    """A 4-D image batch in the channels-last memory format: the same values, faster
    convolutions (on the CPU as well). Anything else is returned as it is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _prepare(
    batch: Any, device: torch.device, transform: BatchTransform | None, channels_last: bool, where: str,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Check one (x, y) batch (labels against ``num_classes`` when known), move it to ``device``,
    transform the images. The checks read the labels where the loader made them, on the host."""
    x, y = _split(batch)
    validate_batch(x, y, num_classes=num_classes, where=where)
    x, y = x.to(device), y.to(device)
    if transform is not None:
        x = transform(x)
    if channels_last:
        x = channels_last_batch(x)
    return x, y


def _autocast(device: torch.device, amp: str | None) -> Any:
    """bf16 autocast on CUDA or the CPU, fp16 on CUDA; anything else runs in fp32."""
    if amp is None or device.type not in ("cuda", "cpu") or (amp == "fp16" and device.type != "cuda"):
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def _score(
    model: nn.Module,
    batches: Iterable[Any],
    transform: BatchTransform | None,
    amp: str | None = None,
    channels_last: bool = False,
) -> tuple[float, float, int]:
    """(correct, summed loss, count) over ``batches`` in eval mode (mode restored)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    try:
        for index, batch in enumerate(batches):
            x, y = _prepare(batch, device, transform, channels_last, f"validation batch {index}")
            with _autocast(device, amp):
                logits = forward(model, x, y, f"validation batch {index}")
            correct += (logits.argmax(dim=1) == y).sum()
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
            total += int(y.shape[0])
    finally:
        model.train(was_training)
    c, loss_f, t = _all_sum([float(correct), float(loss_sum), float(total)], device)  # one host read
    return c, loss_f, int(t)


def evaluate(
    model: nn.Module,
    batches: Iterable[Any],
    transform: BatchTransform | None = None,
) -> float:
    """Top-1 accuracy of ``model`` over ``(x, y)`` batches (model put in eval mode, then restored)."""
    correct, _, total = _score(model, batches, transform)
    if total == 0:
        raise DataError("evaluation got no batches; pass a non-empty loader")
    return correct / total


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[Any], transform: BatchTransform | None = None,
    channels_last: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(logits, labels)`` of every batch, concatenated (labels -1 for unlabelled batches).

    ``channels_last``: image batches in the channels-last memory format (same values, faster
    convolutions)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    outs: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        for batch in batches:
            if isinstance(batch, Tensor):
                x, y = batch, torch.full((batch.shape[0],), -1, dtype=torch.int64)
            else:
                x, y = _split(batch)
            x = x.to(device)
            if transform is not None:
                x = transform(x)
            if channels_last:
                x = channels_last_batch(x)
            outs.append(model(x).float().cpu())
            labels.append(torch.as_tensor(y).cpu())
    finally:
        model.train(was_training)
    if not outs:
        raise DataError("prediction got no batches; pass a non-empty loader")
    return torch.cat(outs), torch.cat(labels)


def _rng_state(train_batches: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    gen = getattr(train_batches, "generator", None)
    if isinstance(gen, torch.Generator):
        state["loader"] = gen.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(train_batches: Any, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    gen = getattr(train_batches, "generator", None)
    if "loader" in state and isinstance(gen, torch.Generator):
        gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _append_line(path: Path, record: dict[str, Any]) -> None:
    # one JSON object per line; a partly written last line is dropped on resume
    with disk_errors(path), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _raw(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


# --------------------------------------------------------------------------- fit


@dataclass
class _Budget:
    """How long to train and how often to look at the validation split (all in optimizer steps)."""

    total: int  # optimizer steps in all
    eval_every: int  # validation after this many steps (and after the last one)
    per_epoch: int | None  # batches per pass over the training loader (None: unknown length)


def _budget(train_batches: Any, epochs: int | None, steps: int | None, eval_every: int | None) -> _Budget:
    """Resolve ``epochs`` / ``steps`` / ``eval_every`` (exactly one of epochs and steps)."""
    for name, value, low in (("epochs", epochs, 0), ("steps", steps, 0), ("eval_every", eval_every, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if (epochs is None) == (steps is None):
        raise ConfigError("give the budget as epochs= or as steps= (optimizer steps), exactly one of them")
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
    return _Budget(total=total, eval_every=every, per_epoch=per_epoch)


def _better(acc: float, loss: float, best_acc: float, best_loss: float) -> bool:
    """Higher validation accuracy wins; at equal accuracy (frequent on a few dozen images) the
    lower validation loss."""
    return acc > best_acc or (acc == best_acc and loss < best_loss)


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
    """
    from tqdm.auto import tqdm

    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ConfigError(f"patience must be a positive integer or None, got {patience!r}")
    if amp not in (None, "bf16", "fp16"):
        raise ConfigError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    budget = _budget(train_batches, epochs, steps, eval_every)
    device = _device_of(model)
    if channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    rank, _ = _world()
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    log = Path(log_path) if log_path is not None else None
    per_step = None
    if scheduler == "cosine":
        per_step = cosine_with_warmup(optimizer, budget.total, int(warmup * budget.total))
        scheduler = None
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None
    run = _Run(model=model, optimizer=optimizer, per_step=per_step, scheduler=scheduler, scaler=scaler,
               train_batches=train_batches, device=device, transform=train_transform, amp=amp,
               channels_last=channels_last, budget=budget)
    if resume:
        run.restore(folder)
        if log is not None and rank == 0:  # the log holds exactly the finished validations
            with disk_errors(log):
                log.write_text("".join(json.dumps(h) + "\n" for h in run.history), encoding="utf-8")
    else:
        correct, loss0, total = _score(model, val_batches, val_transform, amp, channels_last)
        if total == 0:
            raise DataError("evaluation got no batches; pass a non-empty validation loader")
        run.best_acc, run.best_loss = correct / total, loss0 / total
        run.best_state = copy.deepcopy(_raw(model).state_dict())
        if log is not None and rank == 0:
            with disk_errors(log):
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text("", encoding="utf-8")
    bar = tqdm(total=budget.total, desc=desc, disable=not progress or rank != 0, leave=False,
               initial=run.step, unit="step")
    started = time.perf_counter()
    stopped_early = False
    try:
        while run.step < budget.total:
            if patience is not None and run.bad >= patience:
                stopped_early = True
                break
            t0 = time.perf_counter()
            (train_mode or nn.Module.train)(model)
            done = run.train_round(bar)
            record = run.validate(val_batches, val_transform, done, time.perf_counter() - t0)
            bar.set_postfix(step=run.step, loss=f"{record['train_loss']:.3f}", val=f"{record['val_accuracy']:.3f}")
            if rank == 0:
                if log is not None:
                    _append_line(log, record)
                if folder is not None:
                    _save_checkpoint(
                        folder, model, optimizer, per_step, run.scheduler, train_batches,
                        run.best_state, run.best_acc, run.best_epoch, run.bad, run.rounds, run.history,
                        extra=run.position(),
                    )
    except KeyboardInterrupt:
        bar.close()
        raise TrainingInterrupted(
            f"interrupted at step {run.step} of {budget.total}; the checkpoint holds "
            f"{run.rounds} finished validation round(s)",
            folder,
            run.rounds + 1,
        ) from None
    finally:
        bar.close()
    _raw(model).load_state_dict(run.best_state)
    return FitResult(
        best_epoch=run.best_epoch,
        best_val_accuracy=run.best_acc,
        history=run.history,
        stopped_early=stopped_early,
        seconds=time.perf_counter() - started,
        best_val_loss=run.best_loss,
        best_step=run.best_step,
        steps=run.step,
    )


@dataclass
class _Run:
    """The state of one :func:`fit`: where the stream of batches is, the best state so far."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    per_step: Any
    scheduler: Any
    scaler: Any
    train_batches: Any
    device: torch.device
    transform: BatchTransform | None
    amp: str | None
    channels_last: bool
    budget: _Budget
    step: int = 0  # optimizer steps taken
    rounds: int = 0  # validations done (the initial one not counted)
    epoch: int = 0  # passes over the loader begun
    in_epoch: int = 0  # batches of the current pass consumed
    epoch_rng: Any = None  # the loader generator's state when the current pass began
    bad: int = 0  # validations in a row without improvement
    best_acc: float = 0.0
    best_loss: float = float("inf")
    best_epoch: int = 0  # validation round whose weights are kept (0: the initial weights)
    best_step: int = 0
    best_state: dict[str, Tensor] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    num_classes: int | None = None  # the model's output width, once a step has shown it
    _it: Any = None

    def _generator(self) -> torch.Generator | None:
        gen = getattr(self.train_batches, "generator", None)
        return gen if isinstance(gen, torch.Generator) else None

    def _next(self) -> Any:
        """The next training batch, starting a new pass over the loader when one ends."""
        for _ in range(2):
            if self._it is None:
                gen = self._generator()
                self.epoch_rng = gen.get_state() if gen is not None else None
                self._it, self.in_epoch = iter(self.train_batches), 0
                self.epoch += 1
            try:
                batch = next(self._it)
            except StopIteration:
                self._end_pass()
                continue
            self.in_epoch += 1
            if self.budget.per_epoch is not None and self.in_epoch >= self.budget.per_epoch:
                self._end_pass()  # a known length: the pass ends with its last batch
            return batch
        raise DataError("the training loader yielded no batches; pass a non-empty loader")

    def _end_pass(self) -> None:
        if self._it is not None and self.scheduler is not None:
            self.scheduler.step()
        self._it = None

    def train_round(self, bar: Any) -> tuple[Tensor, Tensor, int, int]:
        """Train up to the next validation; (summed loss, correct, images) stay on the device
        until then, so a step never waits for the host."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen, first = 0, self.step + 1
        check_each = self.device.type != "cuda"  # a host check costs nothing on the CPU
        loss_fn = nn.CrossEntropyLoss()
        end = min(self.budget.total, (self.step // self.budget.eval_every + 1) * self.budget.eval_every)
        while self.step < end:
            batch = self._next()
            where = f"epoch {self.epoch}, batch {self.in_epoch or self.budget.per_epoch}"
            x, y = _prepare(batch, self.device, self.transform, self.channels_last, where, self.num_classes)
            self.optimizer.zero_grad(set_to_none=True)
            with _autocast(self.device, self.amp):
                logits = forward(self.model, x, y, where, labels_checked=self.num_classes is not None)
                loss = loss_fn(logits.float(), y)
            self.num_classes = int(logits.shape[1])
            if check_each and not torch.isfinite(loss.detach()):
                self._fail(float(loss.detach()), where)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            if self.per_step is not None:
                self.per_step.step()
            self.step += 1
            n = int(y.shape[0])
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(1) == y).sum()
            seen += n
            bar.update(1)
        if not check_each and not bool(torch.isfinite(loss_sum)):
            self._fail(float("nan"), f"steps {first}-{self.step}")
        return loss_sum, correct, seen, first

    def _fail(self, value: float, where: str) -> None:
        _raw(self.model).load_state_dict(self.best_state)
        raise TrainingError(
            f"the training loss is {value} at {where}; the weights of validation round "
            f"{self.best_epoch} (step {self.best_step}, the best so far) were restored. "
            "Lower the learning rate or check the inputs for NaN/Inf"
        )

    def validate(self, val_batches: Any, transform: BatchTransform | None, done: tuple[Tensor, Tensor, int, int],
                 seconds: float) -> dict[str, float]:
        """Score the validation split, keep the state if it is the best, count the round."""
        loss_sum, correct, seen, _ = done
        loss_all, correct_all, seen_all = _all_sum([float(loss_sum), float(correct), float(seen)], self.device)
        v_correct, v_loss, v_total = _score(self.model, val_batches, transform, self.amp, self.channels_last)
        acc, loss = v_correct / v_total, v_loss / v_total
        self.rounds += 1
        record = {
            "epoch": self.rounds if self.budget.per_epoch is None else
            math.ceil(self.step / max(self.budget.per_epoch, 1)),
            "step": self.step,
            "train_loss": loss_all / max(seen_all, 1),
            "train_accuracy": correct_all / max(seen_all, 1),
            "val_loss": loss,
            "val_accuracy": acc,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "seconds": seconds,
        }
        self.history.append(record)
        if _better(acc, loss, self.best_acc, self.best_loss):
            self.best_acc, self.best_loss, self.bad = acc, loss, 0
            self.best_epoch, self.best_step = self.rounds, self.step
            self.best_state = copy.deepcopy(_raw(self.model).state_dict())
        else:
            self.bad += 1
        return record

    def position(self) -> dict[str, Any]:
        """What a resumed run needs beyond the usual checkpoint: where in the stream it was."""
        pos: dict[str, Any] = {"step": self.step, "in_epoch": self.in_epoch if self._it is not None else 0,
                               "passes": self.epoch,
                               "best_loss": self.best_loss, "best_step": self.best_step}
        if self._it is not None and self.epoch_rng is not None:
            pos["epoch_rng"] = self.epoch_rng
        pos["open_pass"] = self._it is not None
        return pos

    def restore(self, folder: Path | None) -> None:
        """Continue from the checkpoint in ``folder``: weights, optimizer, schedulers, counters,
        generators, and the position inside the current pass over the loader."""
        if folder is None or not ckpt.has_checkpoint(folder):
            raise DataError(f"nothing to resume in {str(folder)!r}: no checkpoint there; start a new run")
        state, self.best_state = _restore(folder, self.model, self.optimizer, self.per_step, self.scheduler,
                                          self.train_batches)
        self.best_acc, self.best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        self.best_loss = float(state.get("best_loss", float("inf")))
        self.best_step = int(state.get("best_step", 0))
        self.history = list(state["history"])
        self.rounds, self.bad = int(state["epoch"]), int(state["bad_epochs"])
        self.step = int(state.get("step", self.rounds * (self.budget.per_epoch or 0)))
        self.epoch = int(state.get("passes", self.rounds))
        if state.get("open_pass"):  # replay the pass up to where it stopped (same order, same batches)
            gen = self._generator()
            if gen is not None and "epoch_rng" in state:
                gen.set_state(state["epoch_rng"])
            self.epoch_rng = state.get("epoch_rng")
            self._it = iter(self.train_batches)
            for _ in range(int(state["in_epoch"])):
                next(self._it)
            self.in_epoch = int(state["in_epoch"])
        _set_rng_state(self.train_batches, state["rng"])


def _save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    per_step: Any,
    scheduler: Any,
    train_batches: Any,
    best_state: dict[str, Tensor],
    best_acc: float,
    best_epoch: int,
    bad_epochs: int,
    epoch: int,
    history: list[dict[str, float]],
    extra: dict[str, Any] | None = None,
) -> None:
    state: dict[str, Any] = {
        **(extra or {}),
        "epoch": epoch,
        "best_acc": best_acc,
        "best_epoch": best_epoch,
        "bad_epochs": bad_epochs,
        "history": history,
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(train_batches),
    }
    if per_step is not None:
        state["per_step"] = per_step.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    # one unit: weights, best weights and state appear together or not at all
    ckpt.save_checkpoint(folder, _raw(model).state_dict(), best_state, state)


def _restore(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, per_step: Any, scheduler: Any,
    train_batches: Any,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Load the newest checkpoint of ``folder`` into the model, optimizer, schedulers and
    generators; return ``(state, best weights)``. A checkpoint that does not fit (another
    backbone or width, another optimizer) is one :class:`DataError` naming it."""
    weights, best_state, state = ckpt.load_checkpoint(folder)
    where = str(ckpt.latest(folder))
    fix = "resume with the model and settings the run was started with, or start a new run in another folder"
    try:
        _raw(model).load_state_dict(weights)
    except RuntimeError as exc:
        raise DataError(
            f"the checkpoint {where!r} does not fit this model (another backbone or width?): "
            f"{_mismatch(exc)}; {fix}"
        ) from None
    try:
        optimizer.load_state_dict(state["optimizer"])
        if per_step is not None and "per_step" in state:
            per_step.load_state_dict(state["per_step"])
        if scheduler is not None and "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(train_batches, state["rng"])
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise DataError(
            f"the optimizer or generator state in {where + '/' + ckpt.STATE!r} does not fit this "
            f"run ({' '.join(str(exc).split())[:160]}); {fix}"
        ) from None
    return state, best_state


def _mismatch(exc: BaseException) -> str:
    """The first missing, unexpected or resized key of a load_state_dict error."""
    lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
    first = lines[0] if lines else str(exc).splitlines()[0]
    return " ".join(first.split())[:200]
