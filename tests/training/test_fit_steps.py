"""fit as a driver over a FitState: dict batches, callbacks, overridable steps, one host read per
validation round, and no host sync in a CUDA training step."""

from __future__ import annotations

import pytest
import torch
from test_resume import _Flat, _setup, _Wrapped
from torch import nn

import smart_transfer as st
from smart_transfer.errors import DataError
from smart_transfer.training import Callback, Trainer, fit, loop, predict


class _DictBatches(_Wrapped):
    """The same batches as ``loader``, as ``{"inputs": x, "labels": y}`` dicts."""

    def __init__(self, loader, keys=("inputs", "labels")):
        super().__init__(loader)
        self.keys = keys

    def __iter__(self):
        for x, y in self.loader:
            yield dict(zip(self.keys, (x, y)))


def _weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_dict_batches_train_exactly_like_pairs():
    model, opt, train, val = _setup()
    m = _Flat(model)
    ref = fit(m, opt, train, val, steps=12, eval_every=4, progress=False)
    expected = _weights(m)

    model, opt, train, val = _setup()
    m = _Flat(model)
    got = fit(
        m,
        opt,
        _DictBatches(train),
        [{"inputs": x, "labels": y} for x, y in val],
        steps=12,
        eval_every=4,
        progress=False,
    )
    drop = [{k: v for k, v in h.items() if k != "seconds"} for h in ref.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in got.history] == drop
    for k, v in m.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_a_dict_batch_without_labels_names_its_keys():
    model, opt, train, val = _setup()
    with pytest.raises(DataError, match=r"keys \['inputs', 'extra'\] but none of label"):
        fit(
            _Flat(model),
            opt,
            _DictBatches(train, ("inputs", "extra")),
            val,
            steps=2,
            progress=False,
        )


def test_predict_reads_dict_batches_with_and_without_labels():
    model, _, _, val = _setup()
    m = _Flat(model)
    x, y = val[0]
    logits, labels = predict(
        m, [{"pixel_values": x, "labels": y}, {"pixel_values": x}], channels_last=False
    )
    m.eval()
    with torch.no_grad():
        direct = m(x)
    assert torch.equal(logits, torch.cat([direct, direct]))
    assert labels.tolist() == y.tolist() + [-1] * len(y)


class _Recorder(Callback):
    def __init__(self):
        self.calls: list[str] = []
        self.records: list[dict] = []

    def on_fit_start(self, state):
        self.calls.append("start")

    def on_round_start(self, state):
        self.calls.append("round")

    def on_step_end(self, state):
        self.calls.append(f"step{state.step}")

    def on_validation_end(self, state, record):
        self.records.append(record)
        self.calls.append("val")

    def on_fit_end(self, state):
        self.calls.append("end")


def test_callbacks_see_every_step_and_validation_in_order():
    model, opt, train, val = _setup()
    rec = _Recorder()
    r = fit(_Flat(model), opt, train, val, steps=5, eval_every=2, progress=False, callbacks=[rec])
    assert rec.calls == [
        "start",
        "round",
        "step1",
        "step2",
        "val",
        "round",
        "step3",
        "step4",
        "val",
        "round",
        "step5",
        "val",
        "end",
    ]
    assert rec.records == r.history


def test_the_host_reads_the_sums_once_per_validation_round(monkeypatch):
    model, opt, train, val = _setup()
    real, reads = loop._all_sum, []

    def counted(values):
        reads.append(values.numel())
        return real(values)

    monkeypatch.setattr(loop, "_all_sum", counted)
    r = fit(_Flat(model), opt, train, val, steps=20, eval_every=6, progress=False)
    # the initial validation (3 sums), then one read of train + validation sums per round
    assert reads == [3] + [6] * len(r.history) and len(r.history) == 4


class _NoLoss(Trainer):
    """A subclass that overrides one step: a zero loss leaves SGD's weights where they were."""

    def loss(self, logits, y):
        return (logits * 0.0).sum()


def test_a_trainer_subclass_replaces_one_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    before = _weights(model)
    _, _, train, val = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    r = fit(model, opt, train, val, steps=6, progress=False, trainer=_NoLoss)
    assert all(h["train_loss"] == 0.0 for h in r.history)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class _SyncCounter(Trainer):
    """Counts the host syncs CUDA reports in every training step after the first (the first
    checks the labels against the model's width on the device) and in every validation round."""

    steps_synced: list[int]
    rounds_synced: list[int]

    def _count(self, fn, *args):
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return out, sum("synchroniz" in str(w.message) for w in caught)

    def train_step(self, state, batch):
        if state.num_classes is None:
            return super().train_step(state, batch)
        _, n = self._count(super().train_step, state, batch)
        _SyncCounter.steps_synced.append(n)

    def validation_round(self, state, seconds):
        record, n = self._count(super().validation_round, state, seconds)
        _SyncCounter.rounds_synced.append(n)
        return record


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a CUDA matter")
def test_a_cuda_training_step_never_waits_for_the_host():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 3)
    ).cuda()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 3, (64,), generator=g)
    train = st.data.loader(
        st.data.TensorImageDataset(x, y, ["a", "b", "c"]), batch_size=8, shuffle=True, seed=3
    )
    val = [(x[:16], y[:16]), (x[16:32], y[16:32])]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _SyncCounter.steps_synced, _SyncCounter.rounds_synced = [], []
    r = fit(
        model,
        opt,
        train,
        val,
        steps=12,
        eval_every=4,
        scheduler="cosine",
        progress=False,
        train_transform=lambda t: t.float(),
        val_transform=lambda t: t.float(),
        trainer=_SyncCounter,
    )
    assert len(r.history) == 3
    assert _SyncCounter.steps_synced == [0] * 11
    assert _SyncCounter.rounds_synced == [1, 1, 1]  # the one read of the round's sums
