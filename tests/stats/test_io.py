"""stats/profile.py: save / load / merge of finished profiles."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st_
from stats_helpers import image_batches, profiles_equal, tiny_vgg

import smart_transfer as st
from smart_transfer.errors import DataError, IncompatibleError
from smart_transfer.stats import SCHEMA_VERSION, ActivationProfile

EXACT = {
    "progress": False,
    "sample_per_batch": None,
    "cov_sample_per_batch": None,
    "hist_sample_per_batch": None,
}


@pytest.fixture(scope="module")
def model():
    return tiny_vgg()


@pytest.fixture(scope="module")
def prof(model):
    return st.profile(model, image_batches(2), progress=False, sample_per_batch=40)


# -- save / load -------------------------------------------------------------------------------


def test_round_trip_keeps_everything(tmp_path, prof):
    path = prof.save(tmp_path / "sub" / "pre.pt")  # missing parent folders are created
    assert path.is_file() and sorted(os.listdir(path.parent)) == ["pre.pt"]  # no temp file left
    back = ActivationProfile.load(path)
    profiles_equal(back, prof, rtol=0)
    assert back.meta == prof.meta
    for name in prof.names():
        a, b = prof[name], back[name]
        assert (a.name, a.kind, a.num_channels, a.params) == (
            b.name,
            b.kind,
            b.num_channels,
            b.params,
        )
        for key in a.available():
            assert torch.equal(getattr(a, key), getattr(b, key)), key


def test_round_trip_of_a_batchnorm_profile(tmp_path, model):
    bn = st.profile_from_batchnorm(model)
    back = ActivationProfile.load(bn.save(tmp_path / "bn.pt"))
    assert back.source == "batchnorm" and back.names() == bn.names()
    for name in bn.names():
        assert bool(torch.isnan(back[name].count).all())
        assert torch.equal(back[name].var, bn[name].var)
        assert back[name].available() == {"count", "mean", "var"}


def test_file_records_schema_version_and_shapes(tmp_path, prof):
    raw = torch.load(prof.save(tmp_path / "p.pt"), weights_only=True)
    assert raw["schema_version"] == SCHEMA_VERSION
    assert raw["shapes"]["features.3"] == {"num_channels": 4, "hist_bins": 128}
    assert [d["name"] for d in raw["layers"]] == prof.names()


def test_interrupted_save_keeps_the_old_file(tmp_path, prof, monkeypatch):
    path = prof.save(tmp_path / "p.pt")
    before = path.read_bytes()

    def failing_save(obj, f, *a, **kw):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        prof.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["p.pt"]


def test_loading_something_else_is_a_clear_error(tmp_path, prof):
    with pytest.raises(DataError, match="no profile file"):
        ActivationProfile.load(tmp_path / "missing.pt")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="not a smart-transfer profile"):
        ActivationProfile.load(text)
    weights = tmp_path / "weights.pt"
    torch.save(tiny_vgg().state_dict(), weights)
    with pytest.raises(DataError, match="not a smart-transfer activation profile"):
        ActivationProfile.load(weights)


def test_other_schema_version_is_refused(tmp_path, prof):
    d = prof.to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    path = tmp_path / "future.pt"
    torch.save(d, path)
    with pytest.raises(IncompatibleError, match="schema version"):
        ActivationProfile.load(path)


def test_damaged_shapes_are_detected(tmp_path, prof):
    d = prof.to_dict()
    d["layers"][1]["var"] = d["layers"][1]["var"][:-1]
    path = tmp_path / "bad.pt"
    torch.save(d, path)
    with pytest.raises(DataError, match="var"):
        ActivationProfile.load(path)
    d = prof.to_dict()
    del d["layers"][0]["mean"]
    torch.save(d, path)
    with pytest.raises(DataError):
        ActivationProfile.load(path)


# -- merge -------------------------------------------------------------------------------------


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sizes=st_.lists(st_.integers(1, 4), min_size=2, max_size=4), data=st_.data())
def test_merge_of_disjoint_halves_equals_the_whole(model, sizes, data):
    split = data.draw(st_.integers(1, len(sizes) - 1))
    gen = torch.Generator().manual_seed(sum(sizes) * 7 + split)
    batches = [torch.randn(n, 3, 12, 12, generator=gen) for n in sizes]
    batches[0][0, :, :4] = 0.0  # exact zeros in the first layer's input region
    whole = st.profile(model, batches, **EXACT)
    first = st.profile(model, batches[:split], **EXACT)
    second = st.profile(model, batches[split:], **EXACT)
    merged = first.merge(second)
    profiles_equal(merged, whole)
    profiles_equal(second.merge(first), whole)  # order does not matter
    assert merged.num_samples == sum(sizes)


def test_merge_does_not_change_its_inputs(model):
    a = st.profile(model, image_batches(1, seed=1), **EXACT)
    b = st.profile(model, image_batches(1, seed=2), **EXACT)
    a_before = {n: a[n].mean.clone() for n in a.names()}
    a.merge(b)
    assert all(torch.equal(a[n].mean, a_before[n]) for n in a.names())
    assert a.num_samples == 5


def test_merge_refuses_incompatible_profiles(model):
    batches = image_batches(1)
    a = st.profile(model, batches, progress=False)
    with pytest.raises(IncompatibleError, match="BatchNorm"):
        a.merge(st.profile_from_batchnorm(model))
    with pytest.raises(IncompatibleError, match="layers"):
        a.merge(st.profile(model, batches, layers="features.*", progress=False))
    with pytest.raises(IncompatibleError, match="hist_bins"):
        a.merge(st.profile(model, batches, hist_bins=64, progress=False))
    with pytest.raises(IncompatibleError, match="point"):
        a.merge(ActivationProfile(layers=a.layers, meta=dict(a.meta, point="norm")))
    with pytest.raises(IncompatibleError):
        a.merge("not a profile")  # type: ignore[arg-type]
