"""Linear probes: the folded nn.Linear is exactly scikit-learn's fitted pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import smart_transfer as st
from smart_transfer.strategies.probe import cv_accuracy, cv_design, fit_logistic, layer_features


def test_folded_linear_reproduces_sklearn_decision_function():
    rng = np.random.default_rng(0)
    xtr, ytr = rng.normal(size=(60, 7)) * [1, 2, 3, 4, 5, 6, 7] + 3, rng.integers(0, 3, 60)
    xva, yva = rng.normal(size=(30, 7)) + 3, rng.integers(0, 3, 30)
    linear, c, acc, tried = fit_logistic(xtr, ytr, xva, yva, c_grid=(0.1, 1.0), num_classes=3)
    scaler = StandardScaler().fit(xtr)
    ref = LogisticRegression(C=c, max_iter=3000, tol=1e-6).fit(scaler.transform(xtr), ytr)
    expected = ref.decision_function(scaler.transform(xva))
    got = linear(torch.from_numpy(xva).float()).detach().double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert acc == pytest.approx((ref.predict(scaler.transform(xva)) == yva).mean())
    assert [t["C"] for t in tried] == [0.1, 1.0] and c == max(
        tried, key=lambda t: t["val_accuracy"]
    )["C"]


def test_refit_fits_the_chosen_C_again_on_training_and_validation_samples():
    rng = np.random.default_rng(2)
    xtr, ytr = rng.normal(size=(45, 6)) * 3 + 1, rng.integers(0, 3, 45)
    xva, yva = rng.normal(size=(15, 6)) * 3 + 1, rng.integers(0, 3, 15)
    plain, c0, acc0, _ = fit_logistic(xtr, ytr, xva, yva, c_grid=(0.01, 1.0), num_classes=3)
    linear, c, acc, _ = fit_logistic(
        xtr, ytr, xva, yva, c_grid=(0.01, 1.0), num_classes=3, refit=True
    )
    assert (c, acc) == (c0, acc0)  # the choice and its score come from the training samples alone
    xall, yall = np.vstack([xtr, xva]), np.concatenate([ytr, yva])
    scaler = StandardScaler().fit(xall)
    ref = LogisticRegression(C=c, max_iter=3000, tol=1e-6).fit(scaler.transform(xall), yall)
    got = linear(torch.from_numpy(xall).float()).detach().double().numpy()
    np.testing.assert_allclose(
        got, ref.decision_function(scaler.transform(xall)), rtol=1e-4, atol=1e-4
    )
    assert not torch.allclose(linear.weight, plain.weight)


def test_cv_accuracy_is_stratified_k_fold_by_hand():
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 12)
    x = rng.normal(size=(36, 5)) + y[:, None] * [0.8, 0, 0.4, 0, 0]
    design = cv_design(x[:30], y[:30], x[30:], y[30:], 0.1)
    acc, folds = cv_accuracy(design, 5, seed=7)
    xs, ys = design["x"], design["y"]
    correct = 0
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=7).split(xs, ys):
        scaler = StandardScaler().fit(xs[tr])
        clf = LogisticRegression(C=0.1, max_iter=3000, tol=1e-6).fit(
            scaler.transform(xs[tr]), ys[tr]
        )
        correct += int((clf.predict(scaler.transform(xs[te])) == ys[te]).sum())
    assert folds == 5 and acc == pytest.approx(correct / 36)
    # folds are capped by the smallest class; under two there is nothing to cross-validate
    few = {"x": x[:7], "y": np.array([0, 0, 0, 1, 1, 2, 2]), "C": 1.0}
    assert cv_accuracy(few, 5, 0)[1] == 2
    assert cv_accuracy({**few, "y": np.array([0, 0, 0, 1, 1, 1, 2])}, 5, 0)[1] == 0


def test_binary_and_missing_classes_fold_correctly():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int) * 2  # labels 0 and 2 only; class 1 never seen
    linear, _, acc, _ = fit_logistic(x, y, x, y, c_grid=(10.0,), num_classes=3)
    pred = linear(torch.from_numpy(x).float()).argmax(1).numpy()
    assert acc > 0.9 and set(pred) <= {0, 2}
    assert (pred == y).mean() == pytest.approx(acc)


def test_layer_features_are_pooled_layer_outputs(tiny_net):
    x = torch.rand(5, 3, 16, 16)
    feats, labels = layer_features(
        tiny_net, ["features.0", "penultimate"], [(x, torch.arange(5))], lambda t: t
    )
    tiny_net.eval()
    with torch.no_grad():
        direct = tiny_net.features[0](x).mean((2, 3))
        pen = tiny_net.flatten(tiny_net.pool(tiny_net.features(x)))
    np.testing.assert_allclose(feats["features.0"], direct.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats["penultimate"], pen.double().numpy(), rtol=1e-5, atol=1e-6)
    assert labels.tolist() == list(range(5))


def test_linear_probe_model_predicts_like_the_probe(tiny_net, tiny_data):
    r = st.train(tiny_net, tiny_data, strategy="linear-probe", progress=False, seed=0)
    assert r.plan is None and r.history == [] and r.chosen["layer"] == "penultimate"
    # the backbone is untouched: the result is the pretrained network with the fitted head
    for (n, p), (_, q) in zip(r.model.named_parameters(), tiny_net.named_parameters()):
        if not n.startswith("classifier"):
            assert torch.equal(p, q), n
    assert r.frozen_fraction > 0.9


def test_probe_refit_default_and_refit_false(tiny_net, tiny_data):
    import copy

    on = st.train(
        copy.deepcopy(tiny_net), tiny_data, strategy="linear-probe", progress=False, seed=0
    )
    off = st.train(
        copy.deepcopy(tiny_net),
        tiny_data,
        strategy="linear-probe",
        refit=False,
        progress=False,
        seed=0,
    )
    assert on.chosen["refit"] is True and off.chosen["refit"] is False
    assert on.chosen["C"] == off.chosen["C"] and on.val_accuracy == off.val_accuracy
    assert not torch.equal(on.model.classifier.weight, off.model.classifier.weight)
