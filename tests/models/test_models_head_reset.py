"""replace_head on timm models: timm's reset_classifier, every head, device/dtype, config."""

from __future__ import annotations

import pytest
import torch

import smart_transfer as st

timm = pytest.importorskip("timm")


def test_distilled_deit_gets_both_heads_replaced_and_runs_in_eval():
    model = st.load_backbone("timm:deit_tiny_distilled_patch16_224", pretrained=False, img_size=32)
    st.replace_head(model, 7)
    assert model.head.out_features == 7 and model.head_dist.out_features == 7
    assert model.pretrained_cfg["num_classes"] == 7 and model.num_classes == 7
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)  # eval averages both heads: fails if one kept 1000 outputs


def test_new_head_takes_the_old_heads_dtype():
    model = st.load_backbone("timm:resnet18", pretrained=False).to(torch.float64).eval()
    st.replace_head(model, 3)
    assert model.fc.weight.dtype == torch.float64 and model.fc.out_features == 3
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 3)
    assert model.pretrained_cfg["num_classes"] == 3
