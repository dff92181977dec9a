"""auto's probe candidates share one pass of the pretrained network over the training and
validation images (plus the profile's pass over the training images for the advice), and
sharing changes no probe's result."""

from __future__ import annotations

import torch
from torch import nn

import smart_transfer as st

PROBES = ["linear-probe", "multi-layer-probe", "linear-probe-best-layer"]


def _images_seen(net, run):
    """Images through ``net``'s class in eval mode while ``run()`` runs, and its result."""
    seen = {"eval": 0, "train": 0}
    cls = type(net)

    def hook(m, args):
        if type(m) is cls:
            seen["train" if m.training else "eval"] += args[0].shape[0]

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        result = run()
    finally:
        handle.remove()
    return seen, result


def test_auto_reads_the_images_once_for_all_its_probes(tiny_net, tiny_data):
    seen, result = _images_seen(
        tiny_net,
        lambda: st.train(
            tiny_net, tiny_data, strategy="auto", candidates=PROBES, progress=False, seed=0
        ),
    )
    n_train = result.config["train_samples"]
    n_val = result.config["val_samples"]
    assert [t["strategy"] for t in result.tried] == PROBES
    # one profile pass over the training images (the advice), one feature pass over
    # training + validation images (every probe); before sharing: one feature pass per probe
    assert seen == {"eval": n_train + (n_train + n_val), "train": 0}


def test_shared_features_change_no_probe_result(tiny_net, tiny_data):
    shared = st.train(tiny_net, tiny_data, strategy="auto", candidates=PROBES, progress=False)
    for name in PROBES:
        alone = st.train(tiny_net, tiny_data, strategy=name, progress=False)
        entry = next(t for t in shared.tried if t["strategy"] == name)
        assert entry["val_accuracy"] == alone.val_accuracy
        assert {k: v for k, v in entry["chosen"].items() if k != "strategy"} == alone.chosen
    x = torch.stack([tiny_data[i][0] for i in range(8)])
    alone = st.train(tiny_net, tiny_data, strategy=shared.chosen["strategy"], progress=False)
    torch.testing.assert_close(st.predict(shared, x).probs, st.predict(alone, x).probs)
