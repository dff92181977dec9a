"""The training recipe: parameter groups, block-wise rate decay, the learning-rate grid chosen on
validation, gradual unfreezing, the seeds' heads (MLP, linear SVM)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import smart_transfer as st
from smart_transfer.errors import ConfigError
from smart_transfer.strategies.base import Outcome, Recipe
from smart_transfer.strategies.finetune import choose_rate
from smart_transfer.strategies.optim import block_ids, param_groups
from smart_transfer.training import FitResult


def _by_name(model, groups):
    out = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            out[names[id(p)]] = g
    return out


@pytest.mark.parametrize("backbone", ["small_vgg", "efficientnet_lite0"])
def test_no_weight_decay_on_biases_and_norm_layers(backbone):
    model = st.replace_head(st.load_backbone(backbone, pretrained=False), 3)
    groups = _by_name(model, param_groups(model, Recipe(weight_decay=0.05)))
    assert set(groups) == {n for n, _ in model.named_parameters()}
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        owner = modules[name.rpartition(".")[0]]
        wd = groups[name]["weight_decay"]
        if isinstance(owner, nn.BatchNorm2d) or name.endswith(".bias"):
            assert wd == 0.0, name
        else:
            assert isinstance(owner, (nn.Conv2d, nn.Linear)) and p.ndim >= 2 and wd == 0.05, name
    bn = next(n for n, m in modules.items() if isinstance(m, nn.BatchNorm2d))
    assert groups[f"{bn}.weight"]["weight_decay"] == groups[f"{bn}.bias"]["weight_decay"] == 0.0


def test_block_ids_of_efficientnet_lite0_and_small_vgg():
    lite = st.replace_head(st.load_backbone("efficientnet_lite0", pretrained=False), 3)
    ids, n = block_ids(lite)
    assert n == 18  # stem, 16 MBConv blocks, the conv head; the classifier is block 18
    expected = {
        "_conv_stem.weight": 0,
        "_bn0.weight": 0,
        "_bn0.bias": 0,
        "_blocks.0._depthwise_conv.weight": 1,
        "_blocks.0._bn2.bias": 1,
        "_blocks.15._project_conv.weight": 16,
        "_conv_head.weight": 17,
        "_bn1.bias": 17,
        "_fc.weight": 18,
        "_fc.bias": 18,
    }
    assert {k: ids[k] for k in expected} == expected
    vgg = st.replace_head(st.load_backbone("small_vgg", pretrained=False), 3)
    ids, n = block_ids(vgg)
    # six conv+BatchNorm blocks (features.0/1, 3/4, 7/8, 10/11, 14/15, 17/18), then the classifier
    assert n == 6
    assert [ids[f"features.{i}.weight"] for i in (0, 1, 3, 4, 7, 8, 10, 11, 14, 15, 17, 18)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        4,
        5,
        5,
    ]
    assert ids["classifier.weight"] == ids["classifier.bias"] == 6


@pytest.mark.parametrize("backbone", ["small_vgg", "efficientnet_lite0"])
def test_layer_decay_gives_every_block_its_factor(backbone):
    model = st.replace_head(st.load_backbone(backbone, pretrained=False), 3)
    ids, n = block_ids(model)
    lr, decay, mult = 1e-3, 0.7, 10.0
    groups = _by_name(
        model, param_groups(model, Recipe(lr=lr, head_lr_mult=mult), layer_decay=decay)
    )
    for name, b in ids.items():
        want = lr * decay ** (n - b) * (mult if b == n else 1.0)
        assert groups[name]["lr"] == pytest.approx(want, rel=1e-12), name
        assert groups[name]["block"] == b
    first = min(g["lr"] for g in groups.values())
    assert first == pytest.approx(lr * decay**n)  # not decay ** (number of tensors)


def _fake(loss, acc, lr):
    fit = FitResult(best_epoch=1, best_val_accuracy=acc, best_val_loss=loss, best_step=10)
    return Outcome(model=nn.Linear(1, 1), val_accuracy=acc, fit=fit, chosen={"lr": lr})


def test_choose_rate_takes_the_lowest_validation_loss_then_accuracy():
    scores = {1e-4: (0.60, 0.875), 3e-4: (0.41, 0.850), 1e-3: (0.90, 0.95)}
    seen = []

    def run(lr):
        seen.append(lr)
        return _fake(*scores[lr], lr)

    out, tried = choose_rate(list(scores), run)
    assert seen == list(scores) and out.chosen["lr"] == 3e-4
    assert [t["val_loss"] for t in tried] == [0.60, 0.41, 0.90]
    tie = {
        1e-4: (0.5, 0.80),
        3e-4: (0.5, 0.90),
        1e-3: (0.5, 0.90),
    }  # equal losses: accuracy, then order
    out, _ = choose_rate(list(tie), lambda lr: _fake(*tie[lr], lr))
    assert out.chosen["lr"] == 3e-4


class _Watched(torch.utils.data.Dataset):
    """A dataset that remembers every index read."""

    def __init__(self, ds):
        self.ds, self.read = ds, set()
        self.classes = ds.classes
        self.targets = ds.targets

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.read.add(int(i))
        return self.ds[i]


def test_lr_grid_is_chosen_on_validation_and_never_reads_the_test_images(tiny_net, tiny_data):
    ds = _Watched(tiny_data)
    idx = torch.arange(len(ds))
    train, val, test = idx[:48], idx[48:66], idx[66:]
    r = st.train(
        tiny_net,
        (ds, train),
        (ds, val),
        strategy="full-finetune",
        steps=6,
        lr_grid=[1e-3, 1e-2, 3e-2],
        progress=False,
    )
    assert not ds.read & set(test.tolist())
    rows = r.chosen["lr_grid"]
    assert [row["lr"] for row in rows] == [1e-3, 1e-2, 3e-2]
    best = min(rows, key=lambda row: (row["val_loss"], -row["val_accuracy"]))
    assert r.chosen["lr"] == best["lr"] and r.val_accuracy == best["val_accuracy"]
    assert r.config["recipe"]["lr_grid"] == [1e-3, 1e-2, 3e-2] and r.config["steps"] == 6


def test_recipe_defaults_and_user_mistakes(tiny_net, tiny_data):
    r = Recipe()
    assert r.steps == 300 and r.epochs is None and r.rates() == [1e-4, 3e-4, 1e-3]
    with pytest.raises(ConfigError, match="not both"):
        st.train(tiny_net, tiny_data, strategy="full-finetune", steps=5, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="not both"):
        st.train(
            tiny_net, tiny_data, strategy="full-finetune", lr=1e-3, lr_grid=[1e-3], progress=False
        )
    with pytest.raises(ConfigError, match="learning rate"):
        st.train(
            tiny_net, tiny_data, strategy="full-finetune", lr_grid=[1e-3, -1.0], progress=False
        )
    with pytest.raises(ConfigError, match="head"):
        st.train(
            tiny_net,
            tiny_data,
            strategy="full-finetune",
            head="deep",
            lr=1e-3,
            steps=2,
            progress=False,
        )


def test_step_budget_validates_every_few_steps_and_fixed_lr_trains_once(tiny_net, tiny_data):
    r = st.train(
        tiny_net,
        tiny_data,
        strategy="full-finetune",
        steps=7,
        eval_every=3,
        lr=1e-2,
        patience=None,
        progress=False,
    )
    assert [h["step"] for h in r.history] == [3, 6, 7]
    assert "lr_grid" not in r.chosen and r.chosen["lr"] == 1e-2


def test_fine_tune_trains_the_head_first_then_everything_at_discriminative_rates(
    tiny_net, tiny_data, monkeypatch
):
    from smart_transfer.strategies.base import Context

    calls = []
    real = Context.fit

    def spy(self, model, optimizer, tag, **kw):
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        calls.append(
            (
                tag,
                kw.get("steps"),
                trainable,
                [(g["block"], g["lr"]) for g in optimizer.param_groups],
            )
        )
        return real(self, model, optimizer, tag, **kw)

    monkeypatch.setattr(Context, "fit", spy)
    r = st.train(tiny_net, tiny_data, strategy="fine-tune", steps=10, lr=1e-3, progress=False)
    (tag1, steps1, train1, groups1), (tag2, steps2, train2, groups2) = calls
    assert (tag1, steps1, tag2, steps2) == ("fine-tune/head", 2, "fine-tune/all", 8)
    assert train1 == {"classifier.weight", "classifier.bias"}
    assert {b for b, _ in groups1} == {4} and all(lr == pytest.approx(1e-2) for _, lr in groups1)
    assert len(train2) == len(list(tiny_net.parameters()))
    n = 4  # tiny_net: four conv blocks, the classifier is block 4
    lrs = dict(groups2)
    assert lrs[n] == pytest.approx(5e-3) and lrs[0] == pytest.approx(5e-3 / 100)
    assert lrs[2] == pytest.approx(5e-3 * 100 ** (-2 / n))
    assert r.chosen["head_steps"] == 2 and r.strategy == "fine-tune"


def test_mlp_head_is_seed_001s_and_a_saved_run_loads_back(tiny_net, tiny_data, tiny_test, tmp_path):
    from smart_transfer.models.heads import MLPHead

    r = st.train(
        tiny_net,
        tiny_data,
        strategy="full-finetune",
        head="mlp",
        steps=4,
        lr=1e-2,
        out=tmp_path / "run",
        progress=False,
    )
    head = r.model.classifier
    assert isinstance(head, MLPHead)
    kinds = [type(m) for m in head]
    assert kinds == [nn.BatchNorm1d, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear]
    assert (head[1].in_features, head[1].out_features, head[5].out_features, head[4].p) == (
        16,
        32,
        3,
        0.5,
    )
    back = st.TrainResult.load(tmp_path / "run", model=tiny_net)
    x = tiny_test.images[:10]
    r.model.eval()
    back.model.eval()
    with torch.no_grad():
        assert torch.equal(r.model(r.transform()(x)), back.model(back.transform()(x)))


def test_head_only_with_the_mlp_head_trains_the_whole_head_only(tiny_net, tiny_data):
    before = {n: p.detach().clone() for n, p in copy.deepcopy(tiny_net).named_parameters()}
    r = st.train(
        tiny_net, tiny_data, strategy="head-only", head="mlp", steps=4, lr=1e-2, progress=False
    )
    for n, p in r.model.named_parameters():
        if n.startswith("classifier."):
            continue
        assert torch.equal(p, before[n]), n
    assert not torch.equal(
        r.model.classifier[1].weight, torch.zeros_like(r.model.classifier[1].weight)
    )


def test_svm_probe_is_sklearns_linear_svc(tiny_net, tiny_data):
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from smart_transfer.strategies.probe import layer_features

    r = st.train(
        tiny_net,
        tiny_data,
        strategy="linear-probe",
        classifier="svm",
        C=0.1,
        refit=False,
        progress=False,
    )
    assert r.chosen["classifier"] == "svm"
    ctx_idx = r.config["train_samples"]
    tr, va = st.data.few_shot(tiny_data.targets, per_class=None, val_fraction=0.2, seed=0)
    net = st.replace_head(copy.deepcopy(tiny_net), 3)
    tf = r.transform()
    feats, y = layer_features(
        net, ["penultimate"], st.data.loader(tiny_data, tr, batch_size=64), tf
    )
    x = feats["penultimate"]
    assert len(x) == ctx_idx
    scaler = StandardScaler().fit(x)
    svc = LinearSVC(C=0.1, loss="hinge", dual=True, max_iter=20000, tol=1e-5, random_state=0).fit(
        scaler.transform(x), y
    )
    xva, _ = layer_features(net, ["penultimate"], st.data.loader(tiny_data, va, batch_size=64), tf)
    want = svc.decision_function(scaler.transform(xva["penultimate"]))
    r.model.eval()
    with torch.no_grad():
        got = r.model.classifier(torch.from_numpy(xva["penultimate"]).float()).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_every_gradient_trained_strategy_offers_the_mlp_head_and_probes_the_svm():
    info = {d["name"]: d["options"] for d in st.list_strategies(details=True)}
    for name in (
        "head-only",
        "first-k-frozen",
        "full-finetune",
        "fine-tune",
        "smart-kernel",
        "smart-layer",
        "random-mask",
    ):
        assert "mlp" in info[name]["head"], name
    for name in ("linear-probe", "linear-probe-best-layer"):
        assert "svm" in info[name]["classifier"], name


def test_patience_in_steps_becomes_a_count_of_validations():
    from smart_transfer.strategies.base import Context

    batches = [(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.int64))] * 5  # 5 steps per pass

    def ctx(**recipe):
        return Context(
            make_model=lambda: nn.Linear(1, 1),
            backbone_name="x",
            num_classes=2,
            train=batches,
            val=batches,
            train_eval=batches,
            train_tf=lambda x: x,
            eval_tf=lambda x: x,
            recipe=Recipe(**recipe),
        )

    assert ctx(patience=100).patience_rounds(steps=300) == 20  # validation every pass of 5 steps
    assert ctx(patience=12, eval_every=4).patience_rounds(steps=300) == 3
    assert ctx(patience=1, eval_every=4).patience_rounds(steps=300) == 1
    assert ctx(patience=None).patience_rounds(steps=300) is None
    many = [batches[0]] * 40  # 40 steps per pass: validation every 10 steps
    c = ctx(patience=100)
    c.train = many
    assert c.patience_rounds(steps=300) == 10
