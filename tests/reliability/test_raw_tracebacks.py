"""Mistakes that used to end in a traceback from torch, numpy or the standard library.

Each one is now a single :class:`SmartTransferError` whose message names the problem and the
fix (and, in the CLI, exit 2 with one line).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from rel_helpers import assert_one_line_error, batches, labelled, run_cli, tiny_model

import smart_transfer as st
from smart_transfer.errors import ConfigError, DataError, SmartTransferError

# ------------------------------------------------------------------ batches that do not fit


@pytest.mark.parametrize(
    ("shape", "says"),
    [
        ((4, 3), "2-d.*reshape the batches to 4-d"),
        ((3, 16, 16), "3-d.*add the batch dimension"),
        ((1, 4, 3, 16, 16), "5-d.*reshape the batches to 4-d"),
        ((4, 1, 16, 16), "to have 3 channels.*another channel count"),
        ((4, 3, 1, 1), "too small for this network"),
    ],
)
def test_profile_batches_that_do_not_fit_the_model(shape, says):
    with pytest.raises(DataError, match=says) as err:
        st.profile(tiny_model(), [torch.randn(*shape)], progress=False)
    assert "batch 0" in str(err.value)
    assert "point='output'" not in str(err.value)  # not the misleading old advice


@pytest.mark.parametrize(
    ("batch", "says"),
    [
        ((torch.randn(4, 3), torch.arange(4) % 3), "2-d"),
        ((torch.randn(1, 4, 3, 16, 16), torch.arange(1)), "5-d"),
        ((torch.randn(4, 1, 16, 16), torch.arange(4) % 3), "channels"),
        ((torch.randn(4, 3, 1, 1), torch.arange(4) % 3), "too small"),
        (
            (torch.zeros(4, 3, 16, 16, dtype=torch.uint16), torch.arange(4) % 3),
            "dtype torch.uint16",
        ),
        ((torch.zeros(4, 3, 16, 16, dtype=torch.int64), torch.arange(4) % 3), "dtype torch.int64"),
        (
            (torch.randn(4, 3, 16, 16), torch.tensor([0.0, 1, 2, 0])),
            "labels have dtype torch.float32",
        ),
        (
            (torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 3, 0])),
            "label 3 is out of range for a model with 3 outputs",
        ),
        ((torch.randn(4, 3, 16, 16), torch.tensor([0, -1, 2, 0])), "label -1 is negative"),
        ((torch.randn(4, 3, 16, 16), torch.arange(3)), "4 images but labels of shape \\(3,\\)"),
        ((torch.randn(4, 3, 16, 16), [0, 1, 2, 0]), "labels are a list"),
        (torch.randn(4, 3, 16, 16), "must be an \\(images, labels\\) pair, got Tensor"),
        (torch.randn(2, 3, 16, 16), "must be an \\(images, labels\\) pair, got Tensor"),  # 2 rows
        ((torch.randn(4, 3, 16, 16),), "must be an \\(images, labels\\) pair, got tuple"),
    ],
)
def test_fit_batches_that_do_not_fit(batch, says):
    model = st.replace_head(tiny_model(), 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError, match=says):
        st.training.fit(model, opt, [batch], labelled(1), 1, progress=False)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_a_bad_validation_loader_is_named():
    model = st.replace_head(tiny_model(), 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(DataError, match="must be an \\(images, labels\\) pair, got Tensor"):
        st.training.fit(model, opt, labelled(1), [torch.randn(4, 3, 16, 16)], 1, progress=False)
    with pytest.raises(DataError, match="validation batch 0: label 5 is out of range"):
        st.training.evaluate(model, [(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 5, 0]))])


def test_uint16_and_other_wide_integer_arrays():
    x = np.full((2, 4, 4), 300, np.uint16)
    with pytest.raises(DataError, match=r"torch.uint16 images span \[300, 300\].*images // 257"):
        st.data.arrays(x, [0, 1])
    for dt in (np.uint16, np.uint32, np.uint64):
        ds = st.data.arrays(np.full((2, 4, 4), 200, dt), [0, 1])
        assert ds[0][0].dtype == torch.uint8 and int(ds[0][0].max()) == 200
    ds = st.data.arrays(np.ones((2, 4, 4), np.int8), [0, 1])  # int8: no overflow in the check
    assert int(ds[0][0].max()) == 1


# ------------------------------------------------------------------ wrong argument types


def test_random_like_with_a_non_integer_seed():
    plan = st.FreezePlan.from_masks(
        tiny_model(), {"features.0.weight": torch.ones(4, dtype=torch.bool)}
    )
    for seed in ("x", 1.5, None, True):
        with pytest.raises(ConfigError, match="seed must be an integer"):
            plan.random_like(seed=seed)  # type: ignore[arg-type]
    assert plan.random_like(seed=np.int64(3)) == plan.random_like(seed=3)


def test_plan_freeze_given_a_profile_instead_of_a_similarity():
    prof = st.profile_from_batchnorm(tiny_model())
    with pytest.raises(
        ConfigError, match="needs a Similarity, got ActivationProfile; compare two profiles first"
    ):
        st.plan_freeze(prof, quantile=0.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a Similarity, got dict"):
        st.plan_freeze({}, quantile=0.5)  # type: ignore[arg-type]


# ------------------------------------------------------------------ misleading messages


def test_few_shot_that_leaves_no_validation_set(capsys):
    y = torch.arange(20) % 10
    with pytest.raises(DataError, match="per_class=1.*per_class >= 2"):
        st.data.few_shot(y, 1, val_fraction=0.2)
    train, val = st.data.few_shot(y, 1, val_fraction=0)
    assert len(train) == 10 and len(val) == 0


def test_a_mistyped_dataset_name_suggests_the_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("fashionmnist", "Fashion_MNIST", "fashion-minst"):
        rc, _, err = run_cli(
            capsys, "profile", "--backbone", "small_vgg", "--data", name, "--out", "p.pt"
        )
        assert rc == 2
        assert_one_line_error(err, name, "did you mean the dataset 'fashion-mnist'")
    rc, _, err = run_cli(
        capsys, "profile", "--backbone", "small_vgg", "--data", "photos", "--out", "p.pt"
    )
    assert rc == 2 and "did you mean" not in err and "check the path" in err


def test_a_truncated_jpeg_is_skipped_under_skip_and_named_under_raise(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.jpg", quality=95
            )
    whole = (tmp_path / "a" / "0.jpg").read_bytes()
    (tmp_path / "a" / "0.jpg").write_bytes(whole[: len(whole) // 2])
    with Image.open(tmp_path / "a" / "0.jpg") as img:
        img.verify()  # what the reader used to check: it does not notice the missing data
    with pytest.raises(DataError, match="0.jpg could not be decoded.*on_error='skip'"):
        st.data.image_folder(tmp_path)[0]
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = st.data.image_folder(tmp_path, on_error="skip")
    assert ds.skipped == 1 and ds.skipped_files[0].name == "0.jpg" and len(ds) == 3
    for i in range(len(ds)):
        assert ds[i][0].shape == (3, 32, 32)


def test_every_error_is_a_smart_transfer_error_and_its_builtin_kind():
    """Callers may catch SmartTransferError, or the builtin kind (ValueError, KeyError...)."""
    with pytest.raises(SmartTransferError):
        st.profile(tiny_model(), [torch.randn(4, 3)], progress=False)
    with pytest.raises(ValueError):
        st.profile(tiny_model(), batches(), layers=[], progress=False)
    with pytest.raises(KeyError):
        st.profile(tiny_model(), batches(), layers="nope", progress=False)


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        (lambda m: st.profile(m, None, progress=False), DataError, "loader is a NoneType"),
        (
            lambda m: st.profile(m, torch.randn(4, 3, 16, 16), progress=False),
            DataError,
            "loader is a single tensor",
        ),
        (lambda m: st.apply_plan(None, None), ConfigError, "model must be a torch.nn.Module"),
        (lambda m: st.list_layers(None), ConfigError, "model must be a torch.nn.Module"),
        (lambda m: st.data.image_folder(None), ConfigError, "root must be the path of a folder"),
        (lambda m: st.data.loader(None), ConfigError, "map-style dataset"),
        (lambda m: st.FreezePlan.from_masks(m, {}).save(3), ConfigError, "must be a path"),
    ],
)
def test_arguments_of_the_wrong_kind(call, error, says):
    with pytest.raises(error, match=says):
        call(tiny_model())


@pytest.mark.parametrize("bad", [None, "", 3])
def test_profile_save_and_load_without_a_path_are_one_clear_error(bad):
    import smart_transfer as st
    from smart_transfer.models.small import small_vgg

    prof = st.profile_from_batchnorm(small_vgg())
    with pytest.raises(st.ConfigError, match="file path"):
        prof.save(bad)
    with pytest.raises(st.ConfigError, match="file path"):
        st.ActivationProfile.load(bad)
