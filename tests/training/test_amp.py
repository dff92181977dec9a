"""bfloat16 autocast on the CPU: detected, not assumed; predictions as fp32's within a stated
tolerance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smart_transfer.models.small import small_vgg
from smart_transfer.training import amp, fit
from smart_transfer.training.loop import _autocast

# bfloat16 keeps 8 significant bits (relative rounding 2**-9 per value); through a small
# network's handful of layers the logits move by at most 2 % of their largest magnitude.
REL_TOL = 0.02

needs_bf16 = pytest.mark.skipif(
    not amp.cpu_bf16_supported(), reason="this CPU has no native bfloat16"
)


def test_support_follows_the_cpu_flags_and_torch(monkeypatch):
    monkeypatch.setattr(amp, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert not amp.cpu_bf16_supported()
    monkeypatch.setattr(amp, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert amp.cpu_bf16_supported()
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not amp.cpu_bf16_supported()


def _net():
    torch.manual_seed(0)
    net = small_vgg(widths=(8, 16), num_classes=5)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        net.classifier.weight.mul_(20)  # logits of a trained size, so predictions have margins
    return net.eval()


@needs_bf16
def test_bf16_predictions_equal_fp32_within_tolerance():
    net = _net()
    x = torch.randn(256, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
        with _autocast(torch.device("cpu"), "bf16"):
            low = net(x)
    assert low.dtype == torch.bfloat16  # autocast really ran in bfloat16
    diff = (low.float() - ref).abs()
    assert diff.max() <= REL_TOL * ref.abs().max()
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * diff.max()  # a prediction bf16 rounding cannot flip
    assert clear.float().mean() > 0.8
    assert torch.equal(low.float().argmax(1)[clear], ref.argmax(1)[clear])


@needs_bf16
def test_fit_with_bf16_on_the_cpu_keeps_fp32_weights_and_tracks_the_fp32_losses():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 5, (64,), generator=g)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    runs = {}
    for mode in (None, "bf16"):
        net = _net()
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
        runs[mode] = fit(
            net, opt, batches, batches[:1], steps=4, eval_every=2, amp=mode, progress=False
        )
        assert all(p.dtype == torch.float32 for p in net.parameters())
    for a, b in zip(runs[None].history, runs["bf16"].history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=REL_TOL)
