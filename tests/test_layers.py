"""layers.py: which modules are layers and which parameters each owns per channel."""

import pytest
import torch
from torch import nn

from smart_transfer.errors import ConfigError, SmartTransferError, UnknownNameError
from smart_transfer.layers import channel_params, following_norms, layer_param_map, select_layers
from smart_transfer.models.small import SmallVGG


class Block(nn.Module):
    """conv -> bn -> relu, a conv without a norm, and a linear head; plus a mis-sized BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.bn_other = nn.BatchNorm2d(8)  # follows conv2 in registration order but has 8 features
        self.fc = nn.Linear(4, 2)


def test_select_layers_defaults_and_patterns():
    m = Block()
    assert select_layers(m) == ["conv1", "conv2", "fc"]
    assert select_layers(m, layers="conv*") == ["conv1", "conv2"]
    assert select_layers(m, types=[nn.Linear]) == ["fc"]
    assert select_layers(m, exclude=["fc"]) == ["conv1", "conv2"]


def test_select_layers_no_match_is_a_clear_error():
    with pytest.raises(
        UnknownNameError, match="no layer or module of Block matches layers='nothing\\*'"
    ):
        select_layers(Block(), layers="nothing*")
    with pytest.raises(UnknownNameError, match="did you mean 'conv1'"):
        select_layers(Block(), layers=["conv1", "conv_1"])
    with pytest.raises(UnknownNameError, match="matches exclude='fcc'; did you mean 'fc'"):
        select_layers(Block(), exclude="fcc")
    with pytest.raises(ConfigError, match="layers= is empty"):
        select_layers(Block(), layers=[])
    with pytest.raises(ConfigError, match="no layer of Block matches") as e:
        select_layers(Block(), layers="conv*", types=[nn.BatchNorm2d])
    assert "conv1" in str(e.value)
    assert isinstance(e.value, SmartTransferError)


def test_following_norm_requires_matching_width():
    assert following_norms(Block()) == {"conv1": "bn1"}


def test_channel_params_cover_conv_and_its_norm():
    m = Block()
    got = channel_params(m, "conv1")
    assert got == {
        "conv1.weight": (8, 3, 3, 3),
        "conv1.bias": (8,),
        "bn1.weight": (8,),
        "bn1.bias": (8,),
    }
    named = dict(m.named_parameters())
    for name, shape in layer_param_map(m, select_layers(m)).items():
        for pname, pshape in shape.items():
            assert tuple(named[pname].shape) == pshape
            assert pshape[0] == dict(m.named_modules())[name].weight.shape[0]


def test_small_vgg_pairs_every_conv_with_its_bn():
    m = SmallVGG(widths=(4, 8))
    pairs = following_norms(m)
    convs = [n for n in select_layers(m) if isinstance(dict(m.named_modules())[n], nn.Conv2d)]
    assert sorted(pairs) == sorted(convs)
    mods = dict(m.named_modules())
    for c, b in pairs.items():
        assert isinstance(mods[b], nn.BatchNorm2d) and mods[b].num_features == mods[c].out_channels
    assert SmallVGG(widths=(4,), batch_norm=False)(torch.zeros(1, 3, 8, 8)).shape == (1, 10)
    assert following_norms(SmallVGG(widths=(4,), batch_norm=False)) == {}
