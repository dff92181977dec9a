"""Checkpoints, resume and Ctrl-C: an interrupted-then-resumed run ends bit-identical."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import smart_transfer as st
from smart_transfer.training import TrainingError, TrainingInterrupted, cosine_with_warmup, fit


def _setup(seed=0):
    g = torch.Generator().manual_seed(0)  # the same data whatever the model's seed
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    train = st.data.loader(
        st.data.TensorImageDataset(x.view(64, 1, 1, 6), y, ["a", "b", "c"]),
        batch_size=8,
        shuffle=True,
        seed=3,
    )
    val = [(x[:16].view(16, 1, 1, 6), y[:16])]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    return model, opt, train, val


class _Flat(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.flatten(1))


def _noisy(x):  # a random training transform: resume must restore the global generator too
    return x + 0.1 * torch.randn_like(x)


class _Wrapped:
    """A loader standing in for ``loader``: the same length and shuffling generator."""

    def __init__(self, loader):
        self.loader = loader

    @property
    def generator(self):
        return self.loader.generator

    def __len__(self):
        return len(self.loader)


class _InterruptAt(_Wrapped):
    """A loader that raises KeyboardInterrupt at the given (epoch, batch), like Ctrl-C."""

    def __init__(self, loader, epoch, batch):
        super().__init__(loader)
        self.epoch, self.batch, self.seen = epoch, batch, 0

    def __iter__(self):
        self.seen += 1
        for i, b in enumerate(self.loader, start=1):
            if self.seen == self.epoch and i == self.batch:
                raise KeyboardInterrupt
            yield b


def test_resume_after_ctrl_c_is_bit_identical(tmp_path):
    model, opt, train, val = _setup()
    m = _Flat(model)
    full = fit(
        m,
        opt,
        train,
        val,
        5,
        train_transform=_noisy,
        scheduler="cosine",
        progress=False,
        checkpoint_dir=tmp_path / "a",
        log_path=tmp_path / "a" / "log.jsonl",
    )
    ref = {k: v.clone() for k, v in m.state_dict().items()}

    model, opt, train, val = _setup()
    m = _Flat(model)
    with pytest.raises(TrainingInterrupted) as info:
        fit(
            m,
            opt,
            _InterruptAt(train, 3, 4),
            val,
            5,
            train_transform=_noisy,
            scheduler="cosine",
            progress=False,
            checkpoint_dir=tmp_path / "b",
            log_path=tmp_path / "b" / "log.jsonl",
        )
    assert info.value.epoch == 3
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 2
    model, opt, train, val = _setup(
        seed=99
    )  # a different start: everything comes from the checkpoint
    m = _Flat(model)
    resumed = fit(
        m,
        opt,
        train,
        val,
        5,
        train_transform=_noisy,
        scheduler="cosine",
        progress=False,
        checkpoint_dir=tmp_path / "b",
        log_path=tmp_path / "b" / "log.jsonl",
        resume=True,
    )
    for k, v in m.state_dict().items():
        assert torch.equal(v, ref[k]), k

    def drop_time(h):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in h]

    assert drop_time(resumed.history) == drop_time(full.history)
    lines = [json.loads(s) for s in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5]
    from smart_transfer.training.checkpoint import latest

    state = torch.load(
        latest(tmp_path / "b") / "state.pt", weights_only=True
    )  # loads without pickle
    assert state["epoch"] == 5


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_best_state():
    model, opt, train, val = _setup()
    m = _Flat(model)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    calls = {"n": 0}

    def poison(x):
        calls["n"] += 1
        return x * float("nan") if calls["n"] == 3 else x

    with pytest.raises(TrainingError, match=r"epoch 1, batch 3"):
        fit(m, opt, train, val, 2, train_transform=poison, progress=False)
    for k, v in m.state_dict().items():  # the initial (best so far) weights are back
        assert torch.equal(v, before[k]), k


def test_early_stopping_stops_after_patience_epochs():
    model, opt, train, val = _setup()
    for g in opt.param_groups:
        g["lr"] = 0.0  # nothing improves
    r = fit(_Flat(model), opt, train, val, 10, patience=2, progress=False)
    assert len(r.history) == 2 and r.stopped_early and r.best_epoch == 0


def test_cosine_with_warmup_follows_the_formula():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = cosine_with_warmup(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1 / 3, 2 / 3] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 10)]
    assert lrs == pytest.approx(expected)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    model, opt, train, val = _setup()
    with pytest.raises(st.DataError, match="nothing to resume"):
        fit(_Flat(model), opt, train, val, 2, progress=False, checkpoint_dir=tmp_path, resume=True)
