"""The engine on the model families people use, with random weights and small inputs.

For each backbone: ``profile`` agrees with statistics computed directly from a captured
layer output, ``profile_from_batchnorm`` reads the BatchNorm buffers (or says why it cannot),
a ``plan_freeze`` plan applied with ``apply_plan`` keeps its frozen rows bit-identical over an
optimizer step, and ``feature_extractor`` gives the head's input.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import smart_transfer as st

pytest.importorskip("torchvision")
pytest.importorskip("timm")

FAMILIES = [
    pytest.param("torchvision:resnet18", {}, 32, id="resnet18"),
    pytest.param("torchvision:mobilenet_v3_small", {}, 32, id="mobilenet_v3"),
    pytest.param("torchvision:vgg11_bn", {}, 32, id="vgg11_bn", marks=pytest.mark.slow),
    pytest.param("timm:convnext_tiny", {}, 32, id="convnext_tiny", marks=pytest.mark.slow),
    pytest.param("timm:efficientnet_b0", {}, 32, id="efficientnet_b0"),
    pytest.param("timm:vit_tiny_patch16_224", {"img_size": 32}, 32, id="vit_tiny"),
]
EXACT = {
    "progress": False,
    "sample_per_batch": None,
    "cov_sample_per_batch": None,
    "hist_sample_per_batch": None,
}


def _model(name: str, kwargs: dict) -> nn.Module:
    torch.manual_seed(0)
    model = st.load_backbone(name, pretrained=False, **kwargs)
    # Non-trivial BatchNorm buffers, so that reading them is a real check.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


def _captured(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's output as (values, channels) float64 rows, by a plain hook."""
    mod = model.get_submodule(layer)
    got = []
    h = mod.register_forward_hook(lambda _m, _i, o: got.append(o.detach().double().clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    out = got[0]
    if isinstance(mod, nn.Linear):
        return out.reshape(-1, out.shape[-1])
    return out.movedim(1, -1).reshape(-1, out.shape[1])


@pytest.mark.parametrize("name, kwargs, size", FAMILIES)
def test_engine_on_model_family(name, kwargs, size):
    model = _model(name, kwargs)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, 3, size, size, generator=gen) for _ in range(2)]
    layers = st.list_layers(model)
    kinds = {type(model.get_submodule(n)) for n in layers}
    prof = st.profile(model, batches, **EXACT)
    assert set(prof.names()) == set(layers)

    # profile: the statistics of two layers, against numpy-style direct computation
    for layer in (layers[0], layers[-2]):
        rows = torch.cat([_captured(model, layer, x) for x in batches])
        lp = prof[layer]
        torch.testing.assert_close(lp.mean, rows.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(lp.var, rows.var(0, unbiased=False), rtol=1e-3, atol=1e-9)
        torch.testing.assert_close(lp.max, rows.max(0).values, rtol=1e-6, atol=1e-6)
        cov = torch.cov(rows.T, correction=0)
        torch.testing.assert_close(
            lp.cov, cov, rtol=1e-3, atol=1e-4 * float(cov.abs().max()) + 1e-10
        )

    # profile_from_batchnorm: the buffers themselves, or a clear error without BatchNorm
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if norms:
        bn = st.profile_from_batchnorm(model)
        assert bn.source == "batchnorm" and len(bn) > 0
        first = next(iter(bn.layers.values()))
        norm = model.get_submodule(bn.meta["norms"][first.name])
        torch.testing.assert_close(first.mean, norm.running_mean.double())
        torch.testing.assert_close(first.var, norm.running_var.double())
    else:
        with pytest.raises(st.ConfigError, match="BatchNorm"):
            st.profile_from_batchnorm(model)

    if "vit" in name:
        assert nn.Linear in kinds
        norms_ln = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
        ln = st.profile(model, batches[:1], types=[nn.LayerNorm], **EXACT)
        assert set(ln.names()) == set(norms_ln)

    # plan_freeze + apply_plan: frozen rows stay bit-identical over an AdamW step
    other = st.profile(model, [b * 1.5 + 0.3 for b in batches], **EXACT)
    plan = st.plan_freeze(st.compare(prof, other, measure="gaussian_kl"), quantile=0.5)
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    handle = st.apply_plan(model, plan, opt)
    before = {p: params[p].detach().clone() for p in plan.masks}
    model.train()
    num_classes = model.pretrained_cfg["num_classes"]
    loss = nn.functional.cross_entropy(model(batches[0]), torch.tensor([0, num_classes - 1]))
    loss.backward()
    opt.step()
    moved = 0
    for p, mask in plan.masks.items():
        now = params[p].detach()
        assert torch.equal(now[mask], before[p][mask]), p
        moved += int((now[~mask] != before[p][~mask]).any())
    assert moved > 0  # the rest did train
    handle.remove()
    model.eval()

    # feature_extractor: the head's input, pooled
    _head_name, head = st.models.find_head(model)
    fx = st.feature_extractor(model)
    got = []
    h = head.register_forward_pre_hook(lambda _m, args: got.append(args[0].detach()))
    with torch.no_grad():
        model(batches[0])
        feats = fx(batches[0])
    h.remove()
    expected = got[0] if got[0].ndim == 2 else got[0].flatten(2).mean(2)
    assert feats.shape == (2, head.in_features)
    torch.testing.assert_close(feats, expected)
