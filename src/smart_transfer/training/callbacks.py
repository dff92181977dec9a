"""What happens around the training steps, one callback each (in the manner of Lightning's).

:func:`~smart_transfer.training.fit` builds the ones its arguments ask for: early stopping
(``patience``), a progress bar (``progress``), the log (``log_path``), checkpoints
(``checkpoint_dir``) and the Ctrl-C handler (always). A caller adds its own with
``fit(..., callbacks=[...])``; they run after the built-in ones, in the order given.

Hooks, in the order a fit calls them: ``on_fit_start`` (after the initial validation or the
resume), then per round ``on_round_start`` (may set ``state.should_stop``), ``on_step_end``
after every optimizer step, ``on_validation_end`` with the round's record; ``on_exception``
when the loop raises (may raise another exception in its place) and ``on_fit_end`` always.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._atomic import disk_errors
from ..errors import SmartTransferError
from . import state as fit_state
from .state import FitState


class TrainingInterrupted(SmartTransferError, KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: the last finished epoch is in the checkpoint folder."""

    def __init__(self, message: str, checkpoint_dir: Path | None, epoch: int) -> None:
        # epoch: the validation round that was running (an epoch when validating once per epoch)
        super().__init__(message)
        self.checkpoint_dir = checkpoint_dir
        self.epoch = epoch


class Callback:
    """Does nothing at every hook; subclasses override the hooks they need."""

    def on_fit_start(self, state: FitState) -> None:
        """After the initial validation (or the resume), before the first round."""

    def on_round_start(self, state: FitState) -> None:
        """Before each round of training steps; set ``state.should_stop`` to end the fit."""

    def on_step_end(self, state: FitState) -> None:
        """After every optimizer step (keep it cheap: it runs once per batch)."""

    def on_validation_end(self, state: FitState, record: dict[str, float]) -> None:
        """After each validation round; ``record`` is its row of the history."""

    def on_exception(self, state: FitState, exc: BaseException) -> None:
        """The loop raised ``exc``; raise another exception here to replace it."""

    def on_fit_end(self, state: FitState) -> None:
        """Always, when the fit ends (finished, stopped early or raised)."""


class EarlyStopping(Callback):
    """Stop when ``patience`` validations in a row did not improve on the best."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_round_start(self, state: FitState) -> None:
        if state.bad >= self.patience:
            state.should_stop = state.stopped_early = True


class ProgressBar(Callback):
    """A tqdm bar counting optimizer steps, with the last round's losses as its postfix."""

    def __init__(self, desc: str = "train") -> None:
        self.desc = desc
        self.bar: Any = None

    def on_fit_start(self, state: FitState) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=state.budget.total, desc=self.desc, leave=False, initial=state.step, unit="step"
        )

    def on_step_end(self, state: FitState) -> None:
        self.bar.update(1)

    def on_validation_end(self, state: FitState, record: dict[str, float]) -> None:
        self.bar.set_postfix(
            step=state.step, loss=f"{record['train_loss']:.3f}", val=f"{record['val_accuracy']:.3f}"
        )

    def on_fit_end(self, state: FitState) -> None:
        if self.bar is not None:
            self.bar.close()


class JsonLog(Callback):
    """One JSON object per validation in ``path`` (``log.jsonl``). At the start the file is
    rewritten with the finished validations (none for a new run), so a resumed run's log
    holds each round once, and a partly written last line is gone."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_fit_start(self, state: FitState) -> None:
        with disk_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(
                "".join(json.dumps(h) + "\n" for h in state.history), encoding="utf-8"
            )

    def on_validation_end(self, state: FitState, record: dict[str, float]) -> None:
        with disk_errors(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


class Checkpoint(Callback):
    """A checkpoint unit in ``folder`` after every validation (see :mod:`.checkpoint`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def on_validation_end(self, state: FitState, record: dict[str, float]) -> None:
        fit_state.save(state, self.folder)


class CtrlC(Callback):
    """Ctrl-C becomes :class:`TrainingInterrupted`, which says how much the checkpoint holds."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def on_exception(self, state: FitState, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, TrainingInterrupted):
            raise TrainingInterrupted(
                f"interrupted at step {state.step} of {state.budget.total}; the checkpoint holds "
                f"{state.rounds} finished validation round(s)",
                self.folder,
                state.rounds + 1,
            ) from None
