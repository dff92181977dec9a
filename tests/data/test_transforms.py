"""Batch transforms: shapes, dtypes, devices, normalisation against torchvision, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

import smart_transfer as st
from smart_transfer.errors import ConfigError, DataError
from smart_transfer.models.small import SmallVGG

CFG = {"input_size": (3, 32, 40), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}


class WithCfg(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pretrained_cfg = cfg


def _batch(b: int = 4, c: int = 1, h: int = 28, w: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)


def test_eval_matches_torchvision_resize_and_normalize():
    x = _batch(c=3, h=50, w=60)
    tf = st.data.transforms_for(CFG, train=False)
    out = tf(x)
    ref = TF.normalize(
        TF.resize(x.float() / 255, [32, 40], antialias=True), list(CFG["mean"]), list(CFG["std"])
    )
    assert out.shape == (4, 3, 32, 40) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_normalisation_of_a_constant_image():
    x = torch.full((2, 3, 8, 8), 51, dtype=torch.uint8)
    out = st.data.transforms_for(CFG, train=False, size=8)(x)
    for c in range(3):
        expected = (51 / 255 - CFG["mean"][c]) / CFG["std"][c]
        torch.testing.assert_close(out[:, c], torch.full((2, 8, 8), expected), atol=1e-6, rtol=0)


def test_gray_is_repeated_to_rgb_and_hw_batches_work():
    x = _batch(c=1)
    tf = st.data.transforms_for(CFG, train=False)
    out = tf(x[:, 0])  # (B, H, W) is taken as gray
    assert out.shape == (4, 3, 32, 40)
    mean, std = (
        torch.tensor(CFG["mean"]).view(1, 3, 1, 1),
        torch.tensor(CFG["std"]).view(1, 3, 1, 1),
    )
    pixels = out * std + mean
    torch.testing.assert_close(pixels[:, 0], pixels[:, 1])
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])
    torch.testing.assert_close(out, tf(x))


def test_rgb_to_one_channel_uses_luma_as_pil_does():
    x = _batch(c=3, h=8, w=8)
    tf = st.data.transforms_for(
        {"input_size": (1, 8, 8), "mean": (0.0,), "std": (1.0,)}, train=False
    )
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()).convert("L") for img in x]
    ref = torch.stack([torch.from_numpy(np.array(p)) for p in pil]).unsqueeze(1).float() / 255
    # PIL rounds to whole grey levels
    torch.testing.assert_close(tf(x), ref, atol=0.5 / 255 + 1e-6, rtol=0)


def test_model_with_pretrained_cfg_and_size_override():
    tf = st.data.transforms_for(WithCfg(CFG), train=False)
    assert tf(_batch()).shape == (4, 3, 32, 40)
    assert st.data.transforms_for(WithCfg(CFG), train=False, size=16)(_batch()).shape == (
        4,
        3,
        16,
        16,
    )


def test_model_without_cfg_uses_its_channels_and_imagenet_statistics():
    tf = st.data.transforms_for(SmallVGG(in_channels=1), train=False)
    out = tf(_batch(h=20, w=20))
    assert out.shape == (4, 1, 20, 20)  # one input channel, no size known: kept as is
    rgb = st.data.transforms_for(SmallVGG(in_channels=3), train=False)
    assert torch.allclose(rgb.mean.flatten(), torch.tensor(st.data.IMAGENET_MEAN))
    assert torch.allclose(rgb.std.flatten(), torch.tensor(st.data.IMAGENET_STD))


def test_float_input_keeps_its_dtype():
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    out = st.data.transforms_for(CFG, train=False, size=10)(x)
    assert out.dtype == torch.float64
    expected = (x - torch.tensor(CFG["mean"], dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        CFG["std"], dtype=torch.float64
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)


def test_eval_is_deterministic():
    tf = st.data.transforms_for(CFG, train=False)
    x = _batch(c=3)
    assert torch.equal(tf(x), tf(x))


def test_train_is_random_per_sample_and_keeps_shape():
    tf = st.data.transforms_for(CFG, train=True)
    x = _batch(c=3, b=1).expand(8, -1, -1, -1)  # eight copies of one image
    a, b = tf(x), tf(x)
    assert a.shape == b.shape == (8, 3, 32, 40)
    assert torch.isfinite(a).all()
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # each sample gets its own crop / flip
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(tf(x, generator=g1), tf(x, generator=g2))


def test_train_without_crop_is_eval_and_flip_mirrors():
    x = _batch(c=3, h=12, w=16)
    eval_out = st.data.transforms_for(CFG, train=False)(x)
    same = st.data.transforms_for(CFG, train=True, scale=(1, 1), ratio=(1, 1), flip=0.0)
    flipped = st.data.transforms_for(CFG, train=True, scale=(1, 1), ratio=(1, 1), flip=1.0)
    torch.testing.assert_close(same(x), eval_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(flipped(x), eval_out.flip(-1), atol=1e-5, rtol=0)


def test_crop_zooms_by_the_square_root_of_the_area_fraction():
    # a horizontal ramp: after a crop of width fraction w its slope is w times the original
    w_pixels = 64
    ramp = torch.linspace(0, 1, w_pixels).expand(6, 1, 64, w_pixels)
    tf = st.data.BatchTransform(
        channels=1, mean=(0.0,), std=(1.0,), train=True, scale=(0.25, 0.25), ratio=(1, 1), flip=0
    )
    out = tf(ramp)
    slope = (out[:, 0, :, 40] - out[:, 0, :, 20]) / (20 / (w_pixels - 1))
    torch.testing.assert_close(slope, torch.full_like(slope, 0.5), atol=1e-3, rtol=0)
    assert out.min() >= 0 and out.max() <= 1  # the crop stays inside the image


def test_eval_and_train_switch():
    tf = st.data.transforms_for(CFG, train=True)
    x = _batch(c=3)
    tf.eval()
    assert torch.equal(tf(x), tf(x))
    assert "train=False" in repr(tf)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(2, 3, 4, 4, 4, dtype=torch.uint8), "shape"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.int32), "dtype"),
        (torch.zeros(2, 2, 4, 4, dtype=torch.uint8), "2 channels"),
    ],
)
def test_bad_batches(x, match):
    with pytest.raises(DataError, match=match):
        st.data.transforms_for(CFG, train=False)(x)


def test_bad_configs():
    with pytest.raises(ConfigError, match="mean has 2 values"):
        st.data.transforms_for({"input_size": (3, 8, 8), "mean": (0.1, 0.2), "std": (1, 1, 1)})
    with pytest.raises(ConfigError, match="std must be positive"):
        st.data.transforms_for({"input_size": (3, 8, 8), "mean": (0, 0, 0), "std": (1, 0, 1)})
    with pytest.raises(ConfigError, match="input_size"):
        st.data.transforms_for({"input_size": (8, 8)})
    with pytest.raises(ConfigError, match="model or a config dict"):
        st.data.transforms_for("resnet18")
    with pytest.raises(ConfigError, match="scale"):
        st.data.transforms_for(CFG, scale=(0.5, 1.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_batch_device():
    x = _batch(c=1).cuda()
    for train in (False, True):
        out = st.data.transforms_for(CFG, train=train)(x)
        assert out.device == x.device and out.shape == (4, 3, 32, 40)
    cpu = st.data.transforms_for(CFG, train=False)(x.cpu())
    torch.testing.assert_close(
        st.data.transforms_for(CFG, train=False)(x).cpu(), cpu, atol=1e-4, rtol=0
    )


# -- the evaluation transform against timm's own ----------------------------------------------


@pytest.mark.parametrize(
    "name, hw",
    [
        ("convnext_tiny", (60, 80)),
        ("efficientnet_b0", (90, 50)),
        ("deit_tiny_patch16_224", (64, 64)),
    ],
)
def test_eval_transform_equals_timms_create_transform(name, hw):
    """resize to floor(size / crop_pct) (shorter side, bicubic), centre crop, normalise.

    Compared on float tensor images, which timm's transform (torchvision Resize/CenterCrop on
    tensors) takes as they are. On PIL images timm resizes in 8-bit and rounds the result to
    whole pixel values, so there the two differ by up to half a grey level before
    normalisation; that is the only difference.
    """
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(name, pretrained=False)
    cfg = resolve_data_config({}, model=model)
    ref_tf = create_transform(**cfg)
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    ref = torch.stack([ref_tf(img) for img in x])
    tf = st.data.transforms_for(model, train=False)
    assert tf.crop_pct == cfg["crop_pct"] and tf.interpolation == cfg["interpolation"]
    out = tf(x)
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) <= 1e-4


def test_eval_transform_crops_the_centre_of_the_resized_image():
    """A direct computation: crop_pct 0.5 on a 4x8 image -> resize to 4 (short side), crop 2x2."""
    x = torch.arange(32, dtype=torch.float32).view(1, 1, 4, 8) / 32
    tf = st.data.transforms_for(
        {
            "input_size": (1, 2, 2),
            "mean": (0.0,),
            "std": (1.0,),
            "crop_pct": 0.5,
            "interpolation": "nearest",
        },
        train=False,
    )
    out = tf(x)
    # floor(2 / 0.5) = 4: the 4x8 image keeps its size; the centre 2x2 block is rows 1-2, cols 3-4
    torch.testing.assert_close(out, x[..., 1:3, 3:5])
    train = st.data.transforms_for({"input_size": (1, 2, 2), "crop_pct": 0.5}, train=True)
    assert train.training and train(x).shape == (1, 1, 2, 2)  # training: random crops instead
