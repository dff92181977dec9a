"""replace_head, feature_extractor and list_layers on SmallVGG and friends."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import smart_transfer as st
from smart_transfer.layers import select_layers
from smart_transfer.models import SmallVGG
from smart_transfer.models.heads import pool_features


@pytest.fixture
def vgg() -> SmallVGG:
    torch.manual_seed(0)
    return SmallVGG(num_classes=10, widths=(8, 16)).eval()


def test_replace_head_keeps_everything_else(vgg):
    x = torch.randn(3, 3, 16, 16)
    before = {k: v.clone() for k, v in vgg.state_dict().items()}
    with torch.no_grad():
        feats_before = vgg.flatten(vgg.pool(vgg.features(x)))
    old = vgg.classifier
    st.replace_head(vgg, 4)
    assert vgg.classifier is not old and vgg.classifier.out_features == 4
    after = vgg.state_dict()
    for k, v in before.items():
        if not k.startswith("classifier."):
            assert torch.equal(after[k], v), k
    with torch.no_grad():
        assert vgg(x).shape == (3, 4)
        assert torch.equal(vgg.flatten(vgg.pool(vgg.features(x))), feats_before)
    assert all(p.requires_grad for p in vgg.classifier.parameters())


def test_replace_head_updates_and_keeps_the_cfg():
    model = st.load_backbone("small_vgg", num_classes=10)
    cfg = dict(model.pretrained_cfg)
    st.replace_head(model, 3)
    assert model.pretrained_cfg == {**cfg, "num_classes": 3}


def test_replace_head_on_lite_and_with_explicit_name():
    model = st.load_backbone("efficientnet_lite0", pretrained=False)
    st.replace_head(model, 2)
    assert model._fc.out_features == 2 and model._fc.in_features == 1280
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
    with pytest.raises(st.ConfigError, match="head="):
        st.replace_head(seq, 2)  # no conventional head name
    st.replace_head(seq, 2, head="3")
    assert seq(torch.randn(1, 3, 8, 8)).shape == (1, 2)
    with pytest.raises(st.UnknownNameError, match="'3'"):
        st.replace_head(seq, 2, head="4")


def test_replace_head_conv_classifier():
    tv = pytest.importorskip("torchvision")
    model = st.load_backbone("torchvision:squeezenet1_1", pretrained=False).eval()
    name, head = st.models.find_head(model)
    assert name == "classifier.1" and isinstance(head, nn.Conv2d)
    st.replace_head(model, 7)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    assert isinstance(model, tv.models.SqueezeNet)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_replace_head_rejects_bad_class_counts(vgg, bad):
    with pytest.raises(st.ConfigError, match="num_classes"):
        st.replace_head(vgg, bad)


def test_feature_extractor_matches_direct_computation(vgg):
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        conv_out = vgg.features[:4](x)  # features.3 is the second conv
        expected_conv = conv_out.mean(dim=(2, 3))
        expected_pen = vgg.flatten(vgg.pool(vgg.features(x)))
        fx = st.feature_extractor(vgg, "features.3")
        got_conv = fx(x)
        got_pen = st.feature_extractor(vgg)(x)
    torch.testing.assert_close(got_conv, expected_conv)
    torch.testing.assert_close(got_pen, expected_pen)
    assert fx.num_features == got_conv.shape[1] == vgg.features[3].out_channels
    assert st.feature_extractor(vgg).num_features == vgg.classifier.in_features


def test_feature_extractor_stops_early_and_removes_its_hook(vgg):
    seen = []
    vgg.classifier.register_forward_hook(lambda *_: seen.append("classifier"))
    vgg.features[-1].register_forward_hook(lambda *_: seen.append("last pool"))
    fx = st.feature_extractor(vgg, "features.3")
    fx(torch.randn(2, 3, 16, 16))
    assert seen == []  # nothing after features.3 ran
    assert len(vgg.features[3]._forward_hooks) == 0
    vgg(torch.randn(2, 3, 16, 16))
    assert seen == ["last pool", "classifier"]
    # gradients flow through the features when the caller wants them
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    fx(x).sum().backward()
    assert x.grad is not None and vgg.features[0].weight.grad is not None


def test_feature_extractor_unknown_or_unused_layer(vgg):
    with pytest.raises(st.UnknownNameError, match="features.3"):
        st.feature_extractor(vgg, "feature.3")
    vgg.unused = nn.Linear(2, 2)
    with pytest.raises(st.ConfigError, match="did not run"):
        st.feature_extractor(vgg, "unused")(torch.randn(1, 3, 16, 16))


def test_pooling_rules():
    x4 = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(pool_features(x4, nn.Conv2d(1, 5, 1)), x4.mean(dim=(2, 3)))
    tokens = torch.randn(2, 7, 6)  # (B, T, C)
    torch.testing.assert_close(pool_features(tokens, nn.Identity()), tokens.mean(1))
    nhwc = torch.randn(2, 3, 4, 6)  # a Linear applied to channels-last maps
    torch.testing.assert_close(pool_features(nhwc, nn.Linear(9, 6)), nhwc.mean(dim=(1, 2)))
    seq = torch.randn(2, 5, 9)
    torch.testing.assert_close(pool_features(seq, nn.Conv1d(1, 5, 1)), seq.mean(2))
    flat = torch.randn(2, 6)
    assert pool_features(flat) is flat


def test_feature_extractor_on_token_outputs():
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.blocks[0](vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))
        got = st.feature_extractor(vit, "blocks.0")(x)
    torch.testing.assert_close(got, tokens.mean(1))


def test_list_layers_in_forward_order(vgg):
    names = st.list_layers(vgg)
    assert names == select_layers(vgg)
    assert names == [n for n, m in vgg.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert names[-1] == "classifier"
    called = []
    hooks = [
        vgg.get_submodule(n).register_forward_hook(lambda *_, n=n: called.append(n)) for n in names
    ]
    vgg(torch.randn(1, 3, 16, 16))
    for h in hooks:
        h.remove()
    assert called == names
    assert st.list_layers(vgg, types=[nn.BatchNorm2d]) == [
        n for n, m in vgg.named_modules() if isinstance(m, nn.BatchNorm2d)
    ]
    assert st.list_layers(vgg, layers="features.*") == names[:-1]
