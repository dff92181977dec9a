"""torchvision: / timm: backbones with random weights, their heads, and offline failures."""

from __future__ import annotations

import fnmatch
import urllib.error

import pytest
import torch
from torch import nn

import smart_transfer as st

pytest.importorskip("torchvision")
pytest.importorskip("timm")

CFG_KEYS = {"arch", "input_size", "mean", "std", "num_classes", "source", "classifier"}

# name, constructor kwargs, input size, expected head module
FAMILIES = [
    ("torchvision:resnet18", {}, 32, "fc"),
    ("torchvision:mobilenet_v3_small", {}, 32, "classifier.3"),
    ("torchvision:efficientnet_b0", {}, 32, "classifier.1"),
    ("torchvision:convnext_tiny", {}, 32, "classifier.2"),
    ("timm:resnet18", {}, 32, "fc"),
    ("timm:efficientnet_b0", {}, 32, "classifier"),
    ("timm:mobilenetv3_small_050", {}, 32, "classifier"),
    ("timm:convnext_atto", {}, 32, "head.fc"),
    ("timm:vit_tiny_patch16_224", {"img_size": 32}, 32, "head"),
]


@pytest.mark.parametrize(("name", "kwargs", "size", "head"), FAMILIES)
def test_random_backbone_head_replacement_and_features(name, kwargs, size, head):
    torch.manual_seed(0)
    model = st.load_backbone(name, pretrained=False, **kwargs).eval()
    cfg = model.pretrained_cfg
    assert CFG_KEYS <= set(cfg)
    assert cfg["arch"] == name and cfg["source"] == "random init" and cfg["classifier"] == head
    assert len(cfg["input_size"]) == 3 and len(cfg["mean"]) == len(cfg["std"]) == 3
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, cfg["num_classes"])

    old_head = model.get_submodule(head)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(head + ".")}
    assert st.replace_head(model, 5) is model
    new_head = model.get_submodule(head)
    assert new_head is not old_head and new_head.out_features == 5
    assert new_head.in_features == old_head.in_features
    after = model.state_dict()
    assert set(after) - {k for k in after if k.startswith(head + ".")} == set(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model.pretrained_cfg["num_classes"] == 5
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        feats = st.feature_extractor(model, "penultimate")(x)
    assert feats.shape == (2, old_head.in_features)


def test_torchvision_cfg_comes_from_the_weights_metadata():
    tv = pytest.importorskip("torchvision")
    model = st.load_backbone("torchvision:efficientnet_b1", pretrained=False)
    weights = tv.models.get_model_weights("efficientnet_b1").DEFAULT
    tf = weights.transforms()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, tf.crop_size[0], tf.crop_size[0])
    assert cfg["mean"] == tuple(tf.mean) and cfg["std"] == tuple(tf.std)
    assert cfg["num_classes"] == len(weights.meta["categories"])


def test_timm_cfg_keeps_timm_values():
    model = st.load_backbone("timm:tf_efficientnet_lite0", pretrained=False)
    assert model.pretrained_cfg["mean"] == tuple(model.default_cfg["mean"])
    assert model.pretrained_cfg["input_size"] == tuple(model.default_cfg["input_size"])
    assert model.pretrained_cfg["classifier"] == "classifier"


def test_torchvision_vit_head_found_without_a_cfg():
    tv = pytest.importorskip("torchvision")
    vit = tv.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=4,
    )
    assert not hasattr(vit, "pretrained_cfg")
    name, head = st.models.find_head(vit)
    assert name == "heads.head" and head.out_features == 4
    st.replace_head(vit, 9)
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 9)


def test_torchvision_pretrained_offline_raises_one_clear_error(monkeypatch, tmp_path):
    import torch.hub

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(st.DataError) as info:
        st.load_backbone("torchvision:resnet18", pretrained=True)
    msg = str(info.value)
    assert "load_backbone(path, arch='torchvision:resnet18')" in msg
    assert "weights=path" in msg and "resnet18-" in msg  # the file to fetch elsewhere


def test_timm_pretrained_offline_raises_one_clear_error(monkeypatch, tmp_path):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(st.DataError, match=r"load_backbone\(path, arch='timm:resnet18'\)"):
        st.load_backbone("timm:resnet18", pretrained=True)


def test_torchvision_weights_tag_is_checked():
    with pytest.raises(st.UnknownNameError, match="IMAGENET1K_V1"):
        st.load_backbone("torchvision:resnet18", weights="IMAGENET9K_V7")


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("torchvision:resnet181", "torchvision:resnet18"),
        ("timm:convnext_tinyy", "timm:convnext_tiny"),
        ("resnet18", "torchvision:resnet18"),
        ("efficientnet_lite", "efficientnet_lite0"),
    ],
)
def test_unknown_names_suggest_close_ones(name, suggestion):
    with pytest.raises(st.UnknownNameError) as info:
        st.load_backbone(name, pretrained=False)
    assert repr(suggestion) in str(info.value)


def test_unknown_prefix_is_a_config_error():
    with pytest.raises(st.ConfigError, match="torchvision:NAME"):
        st.load_backbone("keras:resnet50")


def test_list_backbones():
    builtin = st.list_backbones()
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "small_vgg"} <= set(
        builtin
    )
    for name in builtin:  # every listed built-in really builds
        assert st.list_backbones(pattern=name) == [name]
    tv = st.list_backbones("torchvision")
    assert "torchvision:resnet18" in tv and all(n.startswith("torchvision:") for n in tv)
    assert "torchvision:fasterrcnn_resnet50_fpn" not in tv  # classification models only
    timm_names = st.list_backbones("timm", "resnet1*")
    assert "timm:resnet18" in timm_names
    assert all(fnmatch.fnmatchcase(n.split(":", 1)[1], "resnet1*") for n in timm_names)
    with pytest.raises(st.UnknownNameError, match="list_backbones"):
        st.list_backbones("keras")


def test_small_vgg_has_no_pretrained_weights():
    model = st.load_backbone("small_vgg")
    assert isinstance(model, st.models.SmallVGG) and model.pretrained_cfg["source"] == "random init"
    with pytest.raises(st.ConfigError, match="pretrained=False"):
        st.load_backbone("small_vgg", pretrained=True)


def test_returned_models_are_in_train_mode():
    for name in ("small_vgg", "torchvision:resnet18", "timm:resnet18"):
        model = st.load_backbone(name, pretrained=False)
        assert isinstance(model, nn.Module) and model.training
