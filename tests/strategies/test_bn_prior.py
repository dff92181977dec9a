"""AdaBN with a prior: the source statistics count as ``bn_prior`` images in the re-estimate."""

import copy

import pytest
import torch

import smart_transfer as st
from smart_transfer.errors import ConfigError
from smart_transfer.strategies.base import Context, Recipe
from smart_transfer.strategies.finetune import adapt_batchnorm


def _ctx(net, data):
    tf = st.data.transforms_for(net, train=False)
    return Context(
        make_model=lambda: net,
        backbone_name="",
        num_classes=3,
        train=None,
        val=None,
        train_eval=st.data.loader(data, batch_size=128),
        train_tf=tf,
        eval_tf=tf,
        recipe=Recipe(),
    )


def test_prior_mixes_source_and_new_statistics_by_image_count(tiny_net, tiny_data):
    source_net, plain_net = copy.deepcopy(tiny_net), copy.deepcopy(tiny_net)
    bn_src = source_net.features[1]
    adapt_batchnorm(plain_net, _ctx(plain_net, tiny_data))  # prior 0: plain AdaBN
    prior, n = 30.0, len(tiny_data)
    adapt_batchnorm(tiny_net, _ctx(tiny_net, tiny_data), prior=prior)
    w = prior / (prior + n)
    bn, bn_new = tiny_net.features[1], plain_net.features[1]
    torch.testing.assert_close(
        bn.running_mean, w * bn_src.running_mean + (1 - w) * bn_new.running_mean
    )
    torch.testing.assert_close(
        bn.running_var, w * bn_src.running_var + (1 - w) * bn_new.running_var
    )
    assert not torch.allclose(
        bn.running_mean, bn_new.running_mean
    )  # the prior did change something


def test_negative_prior_is_refused(tiny_net, tiny_data):
    with pytest.raises(ConfigError, match="bn_prior must be >= 0"):
        adapt_batchnorm(tiny_net, _ctx(tiny_net, tiny_data), prior=-1)
