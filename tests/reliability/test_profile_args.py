"""Profiling options of the wrong type are a ConfigError naming the option; damaged BatchNorm
statistics are refused naming the buffer."""

from __future__ import annotations

import pytest
from rel_helpers import batches, tiny_model
from torch import nn

import smart_transfer as st
from smart_transfer.errors import ConfigError, ProfileError


@pytest.mark.parametrize(
    "kw, named",
    [
        ({"layers": 123}, "layers="),
        ({"exclude": 5}, "exclude="),
        ({"types": 7}, "types="),
        ({"types": ["Conv2d"]}, "types="),
        ({"types": "Conv2d"}, "types="),
    ],
)
@pytest.mark.parametrize("fn", ["profile", "profile_from_batchnorm"])
def test_options_of_the_wrong_type_are_config_errors(fn, kw, named):
    model = tiny_model()
    call = (
        (lambda: st.profile(model, batches(), progress=False, **kw))
        if fn == "profile"
        else (lambda: st.profile_from_batchnorm(model, **kw))
    )
    with pytest.raises(ConfigError, match=named):
        call()


def test_one_module_class_for_types_is_accepted():
    model = tiny_model()
    one = st.profile_from_batchnorm(model, types=nn.Conv2d)
    listed = st.profile_from_batchnorm(model, types=[nn.Conv2d])
    assert list(one.layers) == list(listed.layers) and len(one.layers) > 0


@pytest.mark.parametrize(
    "buffer, value",
    [("running_var", float("nan")), ("running_var", -1.0), ("running_mean", float("inf"))],
)
def test_damaged_batchnorm_statistics_are_refused_naming_the_buffer(buffer, value):
    model = tiny_model()
    name, bn = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    getattr(bn, buffer)[1] = value
    with pytest.raises(ProfileError, match=rf"{name}\.{buffer} holds .* at channel 1"):
        st.profile_from_batchnorm(model)
