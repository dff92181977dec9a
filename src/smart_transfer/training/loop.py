"""Fit a classifier with validation-based model selection.

One epoch is one pass over the training batches; after each epoch the model is scored on the
validation batches, the best state (by validation accuracy, ties broken by the earlier epoch)
is kept and restored at the end, and training stops early when validation accuracy has not
improved for ``patience`` epochs. The test set is never seen here: callers evaluate it once,
after ``fit`` returns.

With ``checkpoint_dir`` every epoch ends with a checkpoint (see :mod:`.checkpoint`) and a
line in ``log_path``; ``resume=True`` continues from the last checkpoint so that an
interrupted-then-resumed run ends with the same weights as an uninterrupted one (on a CPU;
the random-number generators, the loader's shuffling generator, the optimizer and the
scheduler are all restored). Ctrl-C raises :class:`TrainingInterrupted` after the last
finished epoch was saved.

Under ``torch.distributed`` (a model wrapped in DistributedDataParallel, one data shard per
rank) accuracies and losses are summed over ranks, so every rank takes the same decisions,
and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import json
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


class TrainingInterrupted(SmartTransferError, KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: the last finished epoch is in the checkpoint folder."""

    def __init__(self, message: str, checkpoint_dir: Path | None, epoch: int) -> None:
        super().__init__(message)
        self.checkpoint_dir = checkpoint_dir
        self.epoch = epoch


@dataclass(frozen=True)
class FitResult:
    best_epoch: int  # 1-based epoch whose weights were kept (0 = the initial weights)
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    stopped_early: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "history": list(self.history),
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
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
    batch: Any, device: torch.device, transform: BatchTransform | None, channels_last: bool, where: str
) -> tuple[Tensor, Tensor]:
    """Check one (x, y) batch, move it to ``device``, transform the images."""
    x, y = _split(batch)
    validate_batch(x, y, where=where)
    x, y = x.to(device), y.to(device)
    if transform is not None:
        x = transform(x)
    if channels_last:
        x = channels_last_batch(x)
    return x, y


def _autocast(device: torch.device, amp: str | None) -> Any:
    if amp is None or device.type != "cuda":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast("cuda", dtype=dtype)


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
    correct = loss_sum = 0.0
    total = 0
    try:
        for index, batch in enumerate(batches):
            x, y = _prepare(batch, device, transform, channels_last, f"validation batch {index}")
            with _autocast(device, amp):
                logits = forward(model, x, y, f"validation batch {index}")
            correct += float((logits.argmax(dim=1) == y).sum())
            loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
            total += int(y.numel())
    finally:
        model.train(was_training)
    correct, loss_sum, t = _all_sum([correct, loss_sum, float(total)], device)
    return correct, loss_sum, int(t)


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


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_batches: Iterable[Any],
    val_batches: Iterable[Any],
    epochs: int,
    train_transform: BatchTransform | None = None,
    val_transform: BatchTransform | None = None,
    scheduler: Any | None = None,
    progress: bool = True,
    desc: str = "train",
    *,
    warmup: float = 0.1,
    patience: int | None = None,
    checkpoint_dir: PathLike | None = None,
    log_path: PathLike | None = None,
    resume: bool = False,
    train_mode: Callable[[nn.Module], None] | None = None,
    amp: str | None = None,
    channels_last: bool = False,
) -> FitResult:
    """Train for at most ``epochs`` and restore the weights with the best validation accuracy.

    Args:
        scheduler: None (constant lr), ``"cosine"`` (linear warm-up over the first ``warmup``
            fraction of the steps, then cosine decay, stepped per batch; needs a loader with a
            length) or any scheduler object, stepped once per epoch.
        patience: stop when validation accuracy has not improved for this many epochs.
        checkpoint_dir: write a checkpoint after every epoch (only rank 0 writes).
        log_path: append one JSON line per epoch.
        resume: continue from the checkpoint in ``checkpoint_dir``.
        train_mode: called instead of ``model.train()`` at the start of every epoch (e.g. to
            keep BatchNorm layers in eval mode).
        amp: ``"bf16"`` or ``"fp16"`` autocast on CUDA (ignored on a CPU).
        channels_last: feed image batches in the channels-last memory format (faster
            convolutions on the CPU as well); on CUDA the model is converted too.
    """
    from tqdm.auto import tqdm

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be an integer >= 0, got {epochs!r}")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ConfigError(f"patience must be a positive integer or None, got {patience!r}")
    if amp not in (None, "bf16", "fp16"):
        raise ConfigError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    device = _device_of(model)
    if channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    rank, _ = _world()
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    log = Path(log_path) if log_path is not None else None
    per_step = None
    if scheduler == "cosine":
        try:
            steps = len(train_batches)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError(
                "scheduler='cosine' needs a training loader with a length; pass "
                "smart_transfer.data.loader(...) or scheduler=None"
            ) from None
        per_step = cosine_with_warmup(optimizer, steps * epochs, int(warmup * steps * epochs))
        scheduler = None
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None
    loss_fn = nn.CrossEntropyLoss()

    start_epoch, bad_epochs = 1, 0
    history: list[dict[str, float]] = []
    if resume:
        if folder is None or not ckpt.has_checkpoint(folder):
            raise DataError(
                f"nothing to resume in {str(folder)!r}: no checkpoint there; start a new run"
            )
        state, best_state = _restore(folder, model, optimizer, per_step, scheduler, train_batches)
        best_acc, best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        history = list(state["history"])
        start_epoch, bad_epochs = int(state["epoch"]) + 1, int(state["bad_epochs"])
        if log is not None and rank == 0:  # the log holds exactly the finished epochs
            with disk_errors(log):
                log.write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")
    else:
        correct, _, total = _score(model, val_batches, val_transform, amp, channels_last)
        if total == 0:
            raise DataError("evaluation got no batches; pass a non-empty validation loader")
        best_acc, best_epoch = correct / total, 0
        best_state = copy.deepcopy(_raw(model).state_dict())
        if log is not None and rank == 0:
            with disk_errors(log):
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text("", encoding="utf-8")

    try:
        steps_per_epoch = len(train_batches)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    total_steps = steps_per_epoch * epochs if steps_per_epoch is not None else None
    bar = tqdm(
        total=total_steps, desc=desc, disable=not progress or rank != 0, leave=False,
        initial=(start_epoch - 1) * (steps_per_epoch or 0), unit="batch",
    )
    started = time.perf_counter()
    stopped_early = False
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, epochs + 1):
            if patience is not None and bad_epochs >= patience:
                stopped_early = True
                break
            t0 = time.perf_counter()
            if train_mode is not None:
                train_mode(model)
            else:
                model.train()
            loss_sum = correct = 0.0
            seen = 0
            for step, batch in enumerate(train_batches, start=1):
                x, y = _prepare(batch, device, train_transform, channels_last, f"epoch {epoch}, batch {step}")
                optimizer.zero_grad(set_to_none=True)
                with _autocast(device, amp):
                    logits = forward(model, x, y, f"epoch {epoch}, batch {step}")
                    loss = loss_fn(logits.float(), y)
                if not torch.isfinite(loss.detach()):
                    _raw(model).load_state_dict(best_state)
                    raise TrainingError(
                        f"the training loss is {float(loss.detach())} at epoch {epoch}, batch {step}; "
                        f"the weights of epoch {best_epoch} (the best so far) were restored. "
                        "Lower the learning rate or check the inputs for NaN/Inf"
                    )
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                if per_step is not None:
                    per_step.step()
                n = int(y.numel())
                loss_sum += float(loss.detach()) * n
                correct += float((logits.detach().argmax(1) == y).sum())
                seen += n
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            if scheduler is not None:
                scheduler.step()
            loss_sum, correct, seen_all = _all_sum([loss_sum, correct, float(seen)], device)
            if seen_all == 0:
                raise DataError("the training loader yielded no batches; pass a non-empty loader")
            v_correct, v_loss, v_total = _score(model, val_batches, val_transform, amp, channels_last)
            val_acc = v_correct / v_total
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / seen_all,
                "train_accuracy": correct / seen_all,
                "val_loss": v_loss / v_total,
                "val_accuracy": val_acc,
                "lr": float(optimizer.param_groups[0]["lr"]),
                "seconds": time.perf_counter() - t0,
            }
            history.append(record)
            bar.set_postfix(epoch=epoch, loss=f"{record['train_loss']:.3f}", val=f"{val_acc:.3f}")
            if val_acc > best_acc:
                best_acc, best_epoch, bad_epochs = val_acc, epoch, 0
                best_state = copy.deepcopy(_raw(model).state_dict())
            else:
                bad_epochs += 1
            if rank == 0:
                if log is not None:
                    _append_line(log, record)
                if folder is not None:
                    _save_checkpoint(
                        folder, model, optimizer, per_step, scheduler, train_batches,
                        best_state, best_acc, best_epoch, bad_epochs, epoch, history,
                    )
    except KeyboardInterrupt:
        bar.close()
        raise TrainingInterrupted(
            f"interrupted during epoch {epoch}; the checkpoint holds "
            f"{epoch - 1 if epoch >= start_epoch else start_epoch - 1} finished epoch(s)",
            folder,
            epoch,
        ) from None
    finally:
        bar.close()
    _raw(model).load_state_dict(best_state)
    return FitResult(
        best_epoch=best_epoch,
        best_val_accuracy=best_acc,
        history=history,
        stopped_early=stopped_early,
        seconds=time.perf_counter() - started,
    )


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
) -> None:
    state: dict[str, Any] = {
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
