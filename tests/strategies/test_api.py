"""st.train / st.evaluate / TrainResult: numbers against direct computations and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix
from tiny_images import make_images

import smart_transfer as st
from smart_transfer.errors import ConfigError


@pytest.fixture()
def net():
    from smart_transfer.models.small import small_vgg

    torch.manual_seed(0)
    m = small_vgg(widths=(8, 16))
    m.pretrained_cfg["input_size"] = (3, 16, 16)
    return m


@pytest.fixture(scope="module")
def data():
    x, y = make_images(90)
    return st.data.arrays(x, y)


def test_evaluate_matches_sklearn_and_reads_the_test_set_once(net, data, tmp_path):
    r = st.train(
        net, data, strategy="full-finetune", epochs=2, lr=0.01, out=tmp_path / "run", progress=False
    )
    x, y = make_images(60, seed=1)
    test = st.data.arrays(x, y)
    m = st.evaluate(r, test)
    tf = r.transform()
    r.model.eval()
    with torch.no_grad():
        pred = r.model(tf(test.images)).argmax(1).numpy()
    assert m["accuracy"] == pytest.approx((pred == y.numpy()).mean())
    np.testing.assert_array_equal(
        np.array(m["confusion_matrix"]), confusion_matrix(y.numpy(), pred, labels=[0, 1, 2])
    )
    cm = np.array(m["confusion_matrix"])
    assert m["per_class_accuracy"] == pytest.approx((cm.diagonal() / cm.sum(1)).tolist())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    with pytest.raises(ConfigError, match="read once"):
        st.evaluate(r, test)
    assert st.evaluate(r, test, overwrite=True)["accuracy"] == m["accuracy"]


@pytest.mark.parametrize("strategy", ["smart-kernel", "linear-probe-best-layer"])
def test_saved_run_loads_back_to_the_same_predictions(net, data, tmp_path, strategy):
    r = st.train(
        net,
        data,
        strategy=strategy,
        epochs=1,
        out=tmp_path / "run",
        progress=False,
        **({"layers": ["features.0", "features.3"]} if strategy.startswith("linear") else {}),
    )
    loaded = st.TrainResult.load(tmp_path / "run", model=net)
    x = torch.rand(4, 1, 16, 16)
    r.model.eval()
    loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(r.model(r.transform()(x)), loaded.model(loaded.transform()(x)))
    assert loaded.val_accuracy == r.val_accuracy and loaded.chosen == json.loads(
        json.dumps(r.chosen)
    )
    assert (loaded.plan is None) == (r.plan is None)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["strategy"] == strategy and cfg["num_classes"] == 3 and cfg["world_size"] == 1
    for name in (
        "config.json",
        "result.json",
        "model.safetensors",
        "samples.safetensors",
        "log.jsonl",
    ):
        assert (tmp_path / "run" / name).is_file(), name


def test_a_run_from_a_model_object_needs_the_model_to_load(net, data, tmp_path):
    st.train(net, data, strategy="linear-probe", out=tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="model="):
        st.TrainResult.load(tmp_path / "run")


def test_train_by_name_loads_back_without_the_model(data, tmp_path):
    r = st.train(
        "small_vgg",
        data,
        strategy="head-only",
        epochs=1,
        size=16,
        out=tmp_path / "run",
        progress=False,
    )
    loaded = st.TrainResult.load(tmp_path / "run")
    for (n, a), (_, b) in zip(r.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_advise_quadrants_follow_the_stated_cutoffs():
    from smart_transfer.strategies.advice import decide

    curve = {"a": 0.9, "b": 0.8, "c": 0.2, "d": 0.1}
    adv = decide(20, curve, similar=0.6)
    assert adv.quadrant == "small-different" and adv.strategy == "multi-layer-probe"
    assert adv.candidates[:2] == ["multi-layer-probe", "linear-probe-best-layer"]
    assert adv.similarity == pytest.approx(0.5) and adv.layer == "b"  # the curve falls at c
    small_similar = decide(20, curve, similar=0.4)
    assert small_similar.quadrant == "small-similar"
    # under the step recipe fine-tuning led the probes on P2 (small and similar)
    assert small_similar.strategy == "full-finetune"
    assert small_similar.candidates == ["full-finetune", "lp-ft", "fine-tune", "linear-probe"]
    assert decide(500, curve, similar=0.4).strategy == "lp-ft"
    assert decide(500, curve, similar=0.6).strategy == "full-finetune"
    assert decide(99, curve, small_per_class=100).quadrant.startswith("small")
    assert decide(100, curve, small_per_class=100).quadrant.startswith("large")


def test_advise_end_to_end_gives_a_curve_for_every_batchnorm_layer(net, data):
    adv = st.advise(net, data)
    assert [p["layer"] for p in adv.curve] == [n for n in st.list_layers(net) if n != "classifier"]
    assert 0 <= adv.similarity <= 1 and adv.strategy in st.list_strategies()
    assert adv.samples_per_class == pytest.approx(30)
    assert any("per class" in r for r in adv.reasons)


def test_advise_profiles_only_the_moments_its_measure_reads_and_advises_alike(
    net, data, monkeypatch
):
    from smart_transfer.stats.config import StatsConfig
    from smart_transfer.strategies import smart

    seen = []
    real = smart.profile

    def spy(*args, **kw):
        seen.append(real(*args, **kw))
        return seen[-1]

    monkeypatch.setattr(smart, "profile", spy)
    light = st.advise(net, data)
    lp = next(iter(seen[-1].layers.values()))
    assert lp.hist is None and lp.mean is not None  # gaussian_kl reads mean and variance only
    # the full default set of statistics gives the same advice, to rounding
    monkeypatch.setattr(StatsConfig, "for_measures", classmethod(lambda cls, m: None))
    full = st.advise(net, data)
    assert next(iter(seen[-1].layers.values())).hist is not None
    assert (full.strategy, full.layer) == (light.strategy, light.layer)
    assert full.similarity == pytest.approx(light.similarity, rel=1e-9)
    for a, b in zip(full.curve, light.curve, strict=True):
        assert a["score"] == pytest.approx(b["score"], rel=1e-9)
