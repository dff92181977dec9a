"""summary(): per-layer parameter counts checked against direct sums."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import smart_transfer as st
from smart_transfer.layers import channel_params, following_norms
from smart_transfer.models import SmallVGG


@pytest.fixture
def vgg() -> SmallVGG:
    torch.manual_seed(0)
    return SmallVGG(num_classes=5, widths=(8, 16))


def _numel(model: nn.Module, names) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def test_rows_match_direct_sums(vgg):
    s = st.summary(vgg)
    norms = following_norms(vgg)
    layers = st.list_layers(vgg)
    assert [r["layer"] for r in s.rows] == layers  # no (other) row: every parameter is in a layer
    for row in s.rows:
        owned = channel_params(vgg, row["layer"], norms)
        assert row["params"] == _numel(vgg, owned)
        assert row["trainable"] == row["params"] and row["frozen"] == 0
        assert row["norm"] == norms.get(row["layer"])
    total = sum(p.numel() for p in vgg.parameters())
    assert s.total["params"] == total == s.total["trainable"]
    text = str(s)
    assert all(name in text for name in layers) and f"{total:,}" in text


def test_requires_grad_counts_as_frozen_without_a_plan(vgg):
    for p in vgg.features[0].parameters():
        p.requires_grad_(False)
    for p in vgg.features[1].parameters():  # its BatchNorm
        p.requires_grad_(False)
    s = st.summary(vgg)
    first = s.rows[0]
    assert first["layer"] == "features.0"
    expected = sum(p.numel() for p in vgg.features[0].parameters()) + sum(
        p.numel() for p in vgg.features[1].parameters()
    )
    assert first["frozen_whole"] == first["frozen"] == expected and first["trainable"] == 0
    assert first["frozen_channels"] == vgg.features[0].out_channels
    assert s.total["trainable"] == sum(p.numel() for p in vgg.parameters() if p.requires_grad)
    assert s.source == "requires_grad"


def test_plan_splits_whole_and_per_channel(vgg):
    conv = vgg.features[3]  # second conv, 8 -> 8 channels, followed by features.4 (BatchNorm)
    c = conv.out_channels
    partial = torch.zeros(c, dtype=torch.bool)
    partial[: c // 2] = True
    masks = {
        "features.0.weight": torch.ones(vgg.features[0].out_channels, dtype=torch.bool),
        "features.3.weight": partial,
        "features.4.weight": partial,
        "features.4.bias": partial.tolist(),  # plain lists are accepted too
    }
    plan = SimpleNamespace(masks=masks)
    s = st.summary(vgg, plan)
    assert s.source == "plan"
    rows = {r["layer"]: r for r in s.rows}
    assert rows["features.0"]["frozen_whole"] == vgg.features[0].weight.numel()
    assert rows["features.0"]["frozen_channelwise"] == 0
    assert rows["features.0"]["frozen_channels"] == vgg.features[0].out_channels
    k = int(partial.sum())
    per_channel = k * conv.weight[0].numel() + 2 * k  # weight rows + BN weight and bias entries
    assert rows["features.3"]["frozen_channelwise"] == per_channel
    assert rows["features.3"]["frozen_whole"] == 0 and rows["features.3"]["frozen_channels"] == k
    assert s.total["frozen"] == vgg.features[0].weight.numel() + per_channel
    assert st.summary(vgg, masks).rows == s.rows  # a bare {param: mask} dict works the same


def test_parameters_outside_layers_go_to_other():
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
    s = st.summary(vit)
    assert s.rows[-1]["layer"] == "(other)"
    layer_params = sum(r["params"] for r in s.rows[:-1])
    assert s.rows[-1]["params"] == sum(p.numel() for p in vit.parameters()) - layer_params > 0
    assert s.total["params"] == sum(p.numel() for p in vit.parameters())


def test_plan_for_another_model_is_rejected(vgg):
    with pytest.raises(st.IncompatibleError, match="another model"):
        st.summary(vgg, {"backbone.conv.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(st.IncompatibleError, match="features.0.weight"):
        st.summary(vgg, {"features.0.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(st.IncompatibleError, match="FreezePlan"):
        st.summary(vgg, plan=42)


def test_to_dict_round_trips_numbers(vgg):
    s = st.summary(vgg)
    d = s.to_dict()
    assert d["rows"] == s.rows and d["total"]["params"] == s.total["params"]


def test_summary_output_shapes_and_mult_adds_match_a_direct_count():
    from smart_transfer.models.small import SmallVGG

    model = SmallVGG(widths=(4, 8), batch_norm=True)
    s = st.summary(model, input_size=(3, 16, 16))
    rows = {r["layer"]: r for r in s.rows}
    # conv 3x3, 3 -> 4 channels, 16x16 output: 16*16*4*3*9 multiply-adds
    assert rows["features.0"]["output_shape"] == (1, 4, 16, 16)
    assert rows["features.0"]["macs"] == 16 * 16 * 4 * 3 * 9
    # second stage after 2x2 pooling: 8x8 maps, 4 -> 8 then 8 -> 8
    assert rows["features.7"]["macs"] == 8 * 8 * 8 * 4 * 9
    assert rows["classifier"]["output_shape"] == (1, 10) and rows["classifier"]["macs"] == 8 * 10
    assert s.total["macs"] == sum(r["macs"] for r in s.rows if r["layer"] != "(other)")
    text = str(s)
    assert "mult-adds" in text and "1x4x16x16" in text
    assert "macs" not in st.summary(model, input_size=None).rows[0]
