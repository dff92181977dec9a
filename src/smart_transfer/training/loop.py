"""Fit a classifier with validation-based model selection.

The loop is deliberately small: one epoch = one pass over the training batches; after each
epoch the model is scored on the validation batches and the best state (by validation
accuracy, ties broken by the earlier epoch) is kept in memory and restored at the end. The
test set is never seen here: callers evaluate it once, after ``fit`` returns.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import DataError
from .checks import check_loss, checked_batches, forward

BatchTransform = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class FitResult:
    best_epoch: int  # 1-based epoch whose weights were kept (0 = the initial weights)
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, val acc, seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "history": list(self.history),
        }


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    transform: BatchTransform | None = None,
) -> float:
    """Top-1 accuracy of ``model`` over ``(x, y)`` batches (model put in eval mode, then restored)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    correct = total = 0
    try:
        for x, y in checked_batches(batches, "val_batches"):
            x, y = x.to(device), y.to(device)
            if transform is not None:
                x = transform(x)
            correct += int((forward(model, x, y, "a validation batch").argmax(dim=1) == y).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise DataError("evaluation got no batches; pass a non-empty loader")
    return correct / total


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_batches: Iterable[tuple[Tensor, Tensor]],
    val_batches: Iterable[tuple[Tensor, Tensor]],
    epochs: int,
    train_transform: BatchTransform | None = None,
    val_transform: BatchTransform | None = None,
    scheduler: Any | None = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Train for ``epochs`` and restore the weights with the best validation accuracy."""
    from tqdm.auto import tqdm

    device = _device_of(model)
    loss_fn = nn.CrossEntropyLoss()
    best_acc = evaluate(model, val_batches, val_transform)
    best_state = copy.deepcopy(model.state_dict())
    best_epoch = 0
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        total_loss, seen = 0.0, 0
        for index, (x, y) in enumerate(checked_batches(train_batches, "train_batches")):
            x, y = x.to(device), y.to(device)
            if train_transform is not None:
                x = train_transform(x)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(model, x, y, f"epoch {epoch}, batch {index}"), y)
            check_loss(loss, epoch, index)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * int(y.numel())
            seen += int(y.numel())
        if scheduler is not None:
            scheduler.step()
        if seen == 0:
            raise DataError("the training loader yielded no batches; pass a non-empty loader")
        val_acc = evaluate(model, val_batches, val_transform)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total_loss / seen,
                "val_accuracy": val_acc,
                "seconds": time.perf_counter() - start,
            }
        )
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", val=f"{val_acc:.3f}")
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return FitResult(best_epoch=best_epoch, best_val_accuracy=best_acc, history=history)
