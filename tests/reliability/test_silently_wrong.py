"""Inputs that used to give a wrong result without a word: each is now right or an error."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from rel_helpers import assert_one_line_error, batches, labelled, run_cli, tiny_model

import smart_transfer as st
from smart_transfer.errors import (
    ConfigError,
    DataError,
    IncompatibleError,
    ProfileError,
    TrainingError,
    UnknownNameError,
)

# ------------------------------------------------------------------ an optimizer of another model


def _half_plan(model):
    masks = {"features.0.weight": torch.tensor([True, False, True, False])}
    return st.FreezePlan.from_masks(model, masks)


def _step(model, opt, n=3):
    for x, y in labelled(n):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.train()(x), y).backward()
        opt.step()


def test_apply_plan_refuses_an_optimizer_that_holds_none_of_the_models_parameters():
    model, other = tiny_model(), tiny_model(seed=1)
    foreign = torch.optim.AdamW(other.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="holds none of the parameters of SmallVGG"):
        st.apply_plan(model, _half_plan(model), optimizer=foreign)
    # the refused call left nothing behind: a plan can be applied again
    handle = st.apply_plan(model, _half_plan(model))
    with pytest.raises(ConfigError, match="holds none of the parameters"):
        handle.attach(foreign)
    handle.remove()


def test_an_optimizer_attached_later_keeps_frozen_rows_bit_identical():
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    w0 = model.features[0].weight.detach().clone()
    handle = st.apply_plan(model, _half_plan(model))
    handle.attach(opt)
    _step(model, opt)
    w = model.features[0].weight.detach()
    assert torch.equal(w[[0, 2]], w0[[0, 2]])  # frozen rows: bit-identical
    assert not torch.equal(w[[1, 3]], w0[[1, 3]])  # trainable rows moved
    handle.remove()


# ------------------------------------------------------------------ image bit depths


def _folder(tmp_path, make):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        make(tmp_path / cls)
    return tmp_path


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, 0)

    def make(d):
        Image.fromarray(values).save(d / "x.png")

    ds = st.data.image_folder(_folder(tmp_path, make), mode="L")
    assert Image.open(tmp_path / "a" / "x.png").mode == "I;16"  # the file really is 16-bit
    img, _ = ds[0]
    assert img.dtype == torch.uint8
    assert img[0, 0].tolist() == [0, 1, 128, 255]  # round(v / 257), not min(v, 255)
    rgb, _ = st.data.image_folder(tmp_path, mode="RGB")[0]
    assert rgb.shape == (3, 4, 4) and rgb[:, 0, 2].tolist() == [128, 128, 128]


def test_float_tiff_in_0_1_is_scaled_and_outside_refused(tmp_path):
    good = np.array([[0.0, 0.5, 1.0]], dtype=np.float32).repeat(3, 0)

    def make(d):
        Image.fromarray(good).save(d / "ok.tif")
        Image.fromarray(good * 1000).save(d / "wide.tiff")
        Image.fromarray(np.full((3, 3), 7, dtype=np.int32)).save(d / "int32.tif")

    root = _folder(tmp_path, make)
    ds = st.data.image_folder(root, mode="L")
    by_name = {p.name: i for i, (p, _) in enumerate(ds.samples)}
    assert ds[by_name["ok.tif"]][0][0, 0].tolist() == [0, 128, 255]
    with pytest.raises(DataError, match=r"wide.tiff has float pixels spanning \[0, 1000\]"):
        ds[by_name["wide.tiff"]]
    with pytest.raises(DataError, match="int32.tif has 32-bit integer pixels"):
        ds[by_name["int32.tif"]]
    with pytest.warns(UserWarning, match="skipped 4 unreadable"):
        skipping = st.data.image_folder(root, mode="L", on_error="skip")
    assert skipping.skipped == 4 and len(skipping) == 2


def test_every_pillow_format_is_read_and_other_files_are_counted(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)
    formats = {
        ".webp": {"lossless": True},
        ".tif": {},
        ".ppm": {},
        ".bmp": {},
        ".gif": None,
        ".png": {},
    }

    def make(d):
        for ext, kw in formats.items():
            if kw is not None:
                Image.fromarray(arr).save(d / f"x{ext}", **kw)
        Image.fromarray(arr[..., 0]).save(d / "g.pgm")
        (d / "notes.txt").write_text("not an image")

    ds = st.data.image_folder(_folder(tmp_path, make))
    assert len(ds) == 2 * 6 and ds.ignored == 2
    for i in range(len(ds)):
        img, _ = ds[i]
        assert img.shape == (3, 6, 5) and img.dtype == torch.uint8
        if ds.samples[i][0].suffix != ".pgm":
            assert np.array_equal(img.permute(1, 2, 0).numpy(), arr)


# ------------------------------------------------------------------ names that match nothing


def test_a_misspelt_layer_or_exclude_name_is_an_error_with_close_matches():
    model = tiny_model()
    for call in (
        lambda: st.profile(model, batches(), layers=["features.0", "feature.3"], progress=False),
        lambda: st.profile(model, batches(), exclude="feature.3", progress=False),
        lambda: st.profile_from_batchnorm(model, layers="feature.3"),
    ):
        with pytest.raises(UnknownNameError, match="did you mean 'features.3'"):
            call()
    with pytest.raises(ConfigError, match="layers= is empty"):
        st.profile(model, batches(), layers=[], progress=False)
    prof = st.profile(model, batches(), progress=False)
    bn = st.profile_from_batchnorm(model)
    with pytest.raises(UnknownNameError, match="did you mean 'features.3'"):
        st.compare(bn, prof, "gaussian_kl", layers=["feature.3"])
    sim = st.compare(bn, prof, "gaussian_kl")
    with pytest.raises(UnknownNameError, match="did you mean 'features.3'"):
        st.plan_freeze(sim, quantile=0.5, layers=["feature.3"])


# ----------------------------------------------------------------- profiles of other models / order


def test_profiles_of_different_models_or_in_the_wrong_order_are_refused():
    a, b = tiny_model(seed=0), tiny_model(seed=1)  # the same network, two random inits
    bn_a, data_a = st.profile_from_batchnorm(a), st.profile(a, batches(), progress=False)
    data_b = st.profile(b, batches(), progress=False)
    assert bn_a.meta["fingerprint"] == data_a.meta["fingerprint"]
    with pytest.raises(IncompatibleError, match="different weights"):
        st.compare(bn_a, data_b, "gaussian_kl")
    with pytest.raises(
        IncompatibleError, match="look swapped.*compare\\(bn_profile, data_profile\\)"
    ):
        st.compare(data_a, bn_a, "gaussian_kl")
    with pytest.raises(IncompatibleError, match="D_new .* BatchNorm"):
        st.compare(bn_a, bn_a, "gaussian_kl")
    other = st.models.small.SmallVGG(num_classes=3, widths=(4, 8), batch_norm=True).eval()
    other_prof = st.profile(other, batches(), layers="features.0", progress=False)
    with pytest.raises(IncompatibleError, match="different networks"):
        st.compare(data_a, other_prof, "gaussian_kl")
    # the same model passes; check_model=False compares anyway
    assert st.compare(bn_a, data_a, "gaussian_kl").scores
    assert st.compare(bn_a, data_b, "gaussian_kl", check_model=False).scores
    # the fingerprint survives save/load
    assert (
        st.ActivationProfile.from_dict(data_a.to_dict()).meta["fingerprint"]
        == data_a.meta["fingerprint"]
    )


def test_fingerprint_sees_one_changed_weight_and_skips_other_hashes():
    from smart_transfer.stats.fingerprint import check_same_model, model_fingerprint

    model = tiny_model(seed=0)
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before  # deterministic (threads hash in any order)
    with torch.no_grad():
        p = next(model.parameters())
        p.view(-1)[-1] += 1e-6
    after = model_fingerprint(model)
    assert after["architecture"] == before["architecture"]
    assert after["weights"] != before["weights"]
    with pytest.raises(IncompatibleError, match="different weights"):
        check_same_model({"fingerprint": before}, {"fingerprint": after})
    # a fingerprint hashed another way (an older version's) is compared by architecture only
    old = {k: v for k, v in before.items() if k != "weights_hash"}
    check_same_model({"fingerprint": old}, {"fingerprint": after})
    other = dict(old, architecture="0" * 16)
    with pytest.raises(IncompatibleError, match="different networks"):
        check_same_model({"fingerprint": other}, {"fingerprint": after})


# ------------------------------------------------------------------ ignored options, bad numbers


def test_compare_quantile_without_plan_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tiny_model()
    st.profile_from_batchnorm(model).save("pre.pt")
    st.profile(model, batches(), progress=False).save("new.pt")
    for opt in ("--quantile", "--threshold", "--budget"):
        rc, _, err = run_cli(
            capsys, "compare", "pre.pt", "new.pt", "--measure", "gaussian_kl", opt, "2"
        )
        assert rc == 2
        assert_one_line_error(err, opt, "--plan")
    rc, _, err = run_cli(
        capsys,
        "compare",
        "pre.pt",
        "new.pt",
        "--measure",
        "gaussian_kl",
        "--quantile",
        "2",
        "--plan",
        "p.json",
    )
    assert rc == 2 and not (tmp_path / "p.json").exists()
    assert_one_line_error(err, "quantile=2.0", "[0, 1]")


def test_negative_variances_are_refused():
    model = tiny_model()
    prof = st.profile(model, batches(), progress=False)
    model.features[1].running_var[2] = -0.5  # BatchNorm after features.0: refused when read
    with pytest.raises(ProfileError, match=r"features.1.running_var holds -0.5 at channel 2"):
        st.profile_from_batchnorm(model)
    bn = st.profile_from_batchnorm(tiny_model())
    bn.layers["features.0"].var[2] = -0.5  # a profile edited after it was made: refused at compare
    with pytest.raises(
        ProfileError,
        match=r"'features.0' of the D_pre profile has a negative variance \(-0.5 in channel 2\)",
    ):
        st.compare(bn, prof, "gaussian_kl")
    edited = st.ActivationProfile.from_dict(prof.to_dict())
    edited.layers["features.3"].var[0] = -1.0
    good = st.profile_from_batchnorm(tiny_model())
    with pytest.raises(
        ProfileError, match="'features.3' of the D_new profile has a negative variance"
    ):
        st.compare(good, edited, "gaussian_kl")


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda p: p.update(frozen=[0, 1.5]), "frozen channel index .* is 1.5, not an integer"),
        (lambda p: p.update(frozen=[True]), "is True, not an integer"),
        (lambda p: p.update(frozen=["1"]), "is '1', not an integer"),
        (lambda p: p.update(frozen=3), "must be a list"),
        (lambda p: p.update(shape=[4.5, 3, 3, 3]), "shape of .* is 4.5, not an integer"),
        (lambda p: p.update(frozen=[4]), "outside 0..3"),
    ],
)
def test_a_hand_edited_plan_is_refused_not_truncated(tmp_path, edit, says):
    model = tiny_model()
    path = _half_plan(model).save(tmp_path / "plan.json")
    d = json.loads(path.read_text())
    edit(d["params"]["features.0.weight"])
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match=says):
        st.FreezePlan.load(path)


class _Diverging(torch.nn.Module):
    """A classifier whose output turns NaN on a chosen training call, as a diverging model's
    does."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.net, self.calls, self.at = st.replace_head(tiny_model(), 3), 0, at

    def forward(self, x):
        self.calls += self.training
        out = self.net(x)
        return out * float("nan") if self.training and self.calls == self.at else out


def test_a_nan_loss_stops_fit_naming_epoch_and_batch_and_keeps_the_best_state():
    model = _Diverging(at=5)  # epoch 2, batch 2 (three batches per epoch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    val = labelled(1)
    with pytest.raises(TrainingError, match="loss is nan at epoch 2, batch 2"):
        st.training.fit(model, opt, labelled(3), val, 3, progress=False)
    # the weights and BatchNorm statistics are the best state so far, not the diverged ones
    assert all(bool(torch.isfinite(v.float()).all()) for v in model.state_dict().values())
    # the check helper names epoch and batch as well
    from smart_transfer.training.checks import check_loss

    with pytest.raises(TrainingError, match="loss is inf at epoch 3, batch 7"):
        check_loss(torch.tensor(float("inf")), 3, 7)


def test_a_failing_batch_leaves_batchnorm_statistics_unchanged():
    model = st.replace_head(tiny_model(), 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = [(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 7, 0]))]  # label 7 of 3 classes
    with pytest.raises(DataError, match="label 7 is out of range"):
        st.training.fit(model, opt, bad, labelled(1), 1, progress=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_huge_integer_labels_are_remapped_in_constant_memory():
    x = np.zeros((3, 4, 4), np.uint8)
    with pytest.warns(UserWarning, match="mapped to 0..2"):
        ds = st.data.arrays(x, [7, 10**12, 7 + 10**5])
    assert ds.classes == ["7", "100007", "1000000000000"]
    assert ds.targets.tolist() == [0, 2, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # labels 0..K-1 stay as they are, without a warning
        assert st.data.arrays(x, [2, 0, 1]).targets.tolist() == [2, 0, 1]
    with pytest.raises(DataError, match="too large for a class index"):
        st.data.arrays(x, np.array([0, 1, 2**63 + 1], dtype=np.uint64))
