"""Loading weights files: state dicts, full checkpoints, safetensors, and every mistake."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import smart_transfer as st


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def trained_vgg() -> nn.Module:
    torch.manual_seed(1)
    model = st.load_backbone("small_vgg", num_classes=4)
    with torch.no_grad():  # make BatchNorm buffers differ from a fresh model's
        model.train()(torch.randn(8, 3, 16, 16))
    return model


def test_state_dict_file_with_arch(tmp_path, trained_vgg):
    path = tmp_path / "vgg.pt"
    torch.save(trained_vgg.state_dict(), path)
    loaded = st.load_backbone(str(path), arch="small_vgg")
    assert _same_state(loaded, trained_vgg)
    assert loaded.pretrained_cfg["num_classes"] == 4  # taken from the file's head
    assert str(path) in loaded.pretrained_cfg["source"]
    # the weights= spelling and a pathlib.Path do the same
    assert _same_state(st.load_backbone("small_vgg", weights=path), trained_vgg)


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_full_checkpoint_and_wrapper_prefix(tmp_path, trained_vgg, key):
    state = {f"module.{k}": v for k, v in trained_vgg.state_dict().items()}  # DataParallel names
    path = tmp_path / "ckpt.pth"
    torch.save({key: state, "epoch": 3, "arch": "small_vgg"}, path)
    loaded = st.load_backbone(path)  # arch read from the checkpoint
    assert _same_state(loaded, trained_vgg)


@pytest.mark.skipif(
    importlib.util.find_spec("safetensors") is None, reason="safetensors not installed"
)
def test_safetensors_file(tmp_path, trained_vgg):
    from safetensors.torch import save_file

    path = tmp_path / "vgg.safetensors"
    save_file({k: v.contiguous() for k, v in trained_vgg.state_dict().items()}, str(path))
    assert _same_state(st.load_backbone(path, arch="small_vgg"), trained_vgg)


def test_torchvision_checkpoint_with_other_class_count(tmp_path):
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = st.load_backbone("torchvision:resnet18", pretrained=False, num_classes=3)
    path = tmp_path / "r18.pt"
    torch.save(model.state_dict(), path)
    loaded = st.load_backbone(path, arch="torchvision:resnet18")
    assert _same_state(loaded, model) and loaded.fc.out_features == 3
    assert loaded.pretrained_cfg["mean"] == model.pretrained_cfg["mean"]
    again = st.load_backbone(path, arch="torchvision:resnet18", num_classes=6)
    assert again.fc.out_features == 6 and torch.equal(again.conv1.weight, model.conv1.weight)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(st.DataError, match="nowhere"):
        st.load_backbone(path, arch="small_vgg")


def test_key_mismatch_lists_keys(tmp_path, trained_vgg):
    state = trained_vgg.state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["features.0.weight"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(st.IncompatibleError) as info:
        st.load_backbone(path, arch="small_vgg")
    msg = str(info.value)
    assert "features.0.weight" in msg and "extra.weight" in msg and "arch=" in msg


def test_wrong_arch_is_incompatible(tmp_path, trained_vgg):
    path = tmp_path / "vgg.pt"
    torch.save(trained_vgg.state_dict(), path)
    with pytest.raises(st.IncompatibleError, match="efficientnet_lite0"):
        st.load_backbone(path, arch="efficientnet_lite0")


def test_unknown_arch_suggests_names(tmp_path, trained_vgg):
    path = tmp_path / "vgg.pt"
    torch.save(trained_vgg.state_dict(), path)
    with pytest.raises(st.UnknownNameError, match="'small_vgg'"):
        st.load_backbone(path, arch="smal_vgg")


def test_file_without_arch_asks_for_it(tmp_path, trained_vgg):
    path = tmp_path / "vgg.pt"
    torch.save(trained_vgg.state_dict(), path)
    with pytest.raises(st.ConfigError, match="arch="):
        st.load_backbone(path)


def test_pickled_whole_model_is_refused_with_the_fix(tmp_path, trained_vgg):
    path = tmp_path / "whole.pt"
    torch.save(trained_vgg, path)
    with pytest.raises(st.DataError, match=r"torch.save\(model.state_dict\(\), path\)"):
        st.load_backbone(path, arch="small_vgg")


def test_not_a_weights_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(st.DataError, match="notes.pt"):
        st.load_backbone(path, arch="small_vgg")
    torch.save({"lr": 0.1}, path)
    with pytest.raises(st.DataError, match="state dict"):
        st.load_backbone(path, arch="small_vgg")


def test_old_checkpoint_without_batchnorm_counters_loads(tmp_path, trained_vgg):
    state = {
        k: v for k, v in trained_vgg.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "old.pt"
    torch.save(state, path)
    loaded = st.load_backbone(path, arch="small_vgg")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_arch_and_weights_together_is_ambiguous(tmp_path):
    with pytest.raises(st.ConfigError, match="not both"):
        st.load_backbone(tmp_path / "a.pt", arch="small_vgg", weights=tmp_path / "b.pt")
