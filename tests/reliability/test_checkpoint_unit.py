"""Checkpoints are one unit: an interrupt between two of its writes never mixes epochs, and a
damaged or foreign checkpoint is one clear error naming the file."""

from __future__ import annotations

import errno
import os
import pickle

import pytest
import torch
from rel_helpers import temp_files
from torch import nn

import smart_transfer as st
from smart_transfer.errors import DataError, StorageError
from smart_transfer.training import TrainingInterrupted, checkpoint as ckpt, fit


def _setup(seed: int = 0, width: int = 16, groups: int = 1):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 6, generator=g), torch.randint(0, 3, (48,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(6, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 3)
    )
    train = st.data.loader(
        st.data.TensorImageDataset(x.view(48, 1, 1, 6), y, ["a", "b", "c"]),
        batch_size=8,
        shuffle=True,
        seed=3,
    )
    val = [(x[:16].view(16, 1, 1, 6), y[:16])]
    params = list(model.parameters())
    if groups == 1:
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2)
    else:
        opt = torch.optim.AdamW([{"params": params[:2]}, {"params": params[2:]}], lr=1e-2)
    return model, opt, train, val


def _fit(folder, epochs=3, resume=False, **kw):
    model, opt, train, val = _setup(**kw)
    fit(
        model,
        opt,
        train,
        val,
        epochs,
        scheduler="cosine",
        progress=False,
        checkpoint_dir=folder,
        resume=resume,
    )
    return model


def test_sigint_between_weights_and_state_resumes_bit_identical(tmp_path, monkeypatch):
    ref = _fit(tmp_path / "full").state_dict()
    real = ckpt.save_state
    calls = {"n": 0}

    def interrupted(path, state):  # Ctrl-C while state.pt of epoch 2 is written
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(path, state)

    monkeypatch.setattr(ckpt, "save_state", interrupted)
    with pytest.raises(TrainingInterrupted):
        _fit(tmp_path / "cut")
    monkeypatch.setattr(ckpt, "save_state", real)
    unit = ckpt.latest(tmp_path / "cut")
    assert unit is not None and unit.name == "epoch-000001"  # epoch 2's weights never landed
    assert not temp_files(tmp_path / "cut") and sorted(os.listdir(tmp_path / "cut")) == [
        "epoch-000001"
    ]
    resumed = _fit(tmp_path / "cut", resume=True, seed=7).state_dict()
    for k, v in ref.items():  # the weights kept (best on validation)
        assert torch.equal(resumed[k], v), k
    last = [ckpt.load_weights(ckpt.latest(tmp_path / d) / ckpt.WEIGHTS) for d in ("full", "cut")]
    assert int(last[1]["2.num_batches_tracked"]) == int(last[0]["2.num_batches_tracked"]) == 18
    for k, v in last[0].items():  # the weights after the last epoch
        assert torch.equal(last[1][k], v), k


def test_a_unit_whose_files_disagree_on_the_epoch_is_refused(tmp_path):
    _fit(tmp_path, epochs=2)
    unit = ckpt.latest(tmp_path)
    weights = ckpt.load_weights(unit / ckpt.WEIGHTS)
    ckpt.save_weights(unit / ckpt.WEIGHTS, weights, metadata={"epoch": "1"})  # epoch 1's weights
    with pytest.raises(
        DataError, match=r"mixes epochs: model.safetensors is from epoch 1, state.pt from epoch 2"
    ):
        _fit(tmp_path, epochs=3, resume=True)


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    _fit(tmp_path, epochs=1)
    before = ckpt.latest(tmp_path)
    real = ckpt.save_state

    def full(path, state):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_state", full)
    model, opt, train, val = _setup()
    with pytest.raises(StorageError, match=r"disk full while writing .*epoch-000002"):
        fit(model, opt, train, val, 2, progress=False, checkpoint_dir=tmp_path, resume=True)
    monkeypatch.setattr(ckpt, "save_state", real)
    assert ckpt.latest(tmp_path) == before and not temp_files(tmp_path)


def _state_path(folder):
    return ckpt.latest(folder) / ckpt.STATE


def test_state_without_rng_names_the_file(tmp_path):
    _fit(tmp_path, epochs=1)
    state = torch.load(_state_path(tmp_path), weights_only=True)
    del state["rng"]
    torch.save(state, _state_path(tmp_path))
    with pytest.raises(
        DataError, match=r"state.pt' is damaged: it lacks 'rng'; start the run again"
    ):
        _fit(tmp_path, epochs=2, resume=True)


def test_checkpoint_of_another_width_is_one_line(tmp_path):
    _fit(tmp_path, epochs=1, width=16)
    with pytest.raises(DataError) as info:
        _fit(tmp_path, epochs=2, resume=True, width=8)
    text = str(info.value)
    assert "does not fit this model" in text and "epoch-000001" in text and "\n" not in text
    assert len(text) < 500


def test_an_extra_optimizer_group_is_refused(tmp_path):
    _fit(tmp_path, epochs=1, groups=2)
    with pytest.raises(
        DataError, match=r"optimizer or generator state in .*state.pt.* does not fit"
    ):
        _fit(tmp_path, epochs=2, resume=True, groups=1)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_hostile_state_file_is_refused_without_suggesting_weights_only_false(tmp_path):
    _fit(tmp_path, epochs=1)
    with open(_state_path(tmp_path), "wb") as f:
        pickle.dump({"epoch": _Evil()}, f)
    with pytest.raises(DataError) as info:
        _fit(tmp_path, epochs=2, resume=True)
    text = str(info.value)
    assert "state.pt" in text and "never loaded" in text
    assert "weights_only" not in text and "trust" not in text.lower()


def test_garbage_state_file_is_refused(tmp_path):
    _fit(tmp_path, epochs=1)
    _state_path(tmp_path).write_bytes(b"not a torch file")
    with pytest.raises(DataError, match=r"cannot read checkpoint .*state.pt"):
        _fit(tmp_path, epochs=2, resume=True)
