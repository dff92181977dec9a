"""--device / device=: 'auto' picks what is there, anything else is checked before any work."""

import pytest
import torch

from smart_transfer._device import available_devices, resolve_device
from smart_transfer.errors import ConfigError


def test_auto_is_the_best_available():
    assert resolve_device(None) == resolve_device("auto") == torch.device(available_devices()[0])
    assert available_devices()[-1] == "cpu"


def test_cpu_always_resolves():
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_names_what_there_is():
    with pytest.raises(ConfigError, match=r"no cuda device on this machine; it has: .*cpu"):
        resolve_device("cuda")


def test_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match="'tpu' is not a device"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="must be a device name"):
        resolve_device(3)
