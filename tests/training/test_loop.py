"""training/loop.py: accuracy against a direct computation, best-on-validation selection."""

import pytest
import torch
from torch import nn

from smart_transfer.errors import DataError
from smart_transfer.training import evaluate, fit


def _batches(x, y, bs=16):
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


def test_evaluate_matches_direct_accuracy_and_restores_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5))
    model.train()
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    acc = evaluate(model, _batches(x, y))
    model.eval()
    expected = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(expected)
    model.train()
    evaluate(model, _batches(x, y))
    assert model.training


def test_evaluate_applies_transform():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([1, 0])
    assert evaluate(model, [(x, y)]) == 0.0
    assert evaluate(model, [(x, y)], transform=lambda t: t.flip(1)) == 1.0


def test_evaluate_empty_loader_is_a_clear_error():
    with pytest.raises(DataError, match="no batches"):
        evaluate(nn.Linear(2, 2), [])


def test_fit_learns_and_keeps_the_best_validation_state():
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    res = fit(
        model, opt, _batches(x[:150], y[:150]), _batches(x[150:], y[150:]), epochs=6, progress=False
    )
    assert len(res.history) == 6
    assert res.best_val_accuracy == max(
        [h["val_accuracy"] for h in res.history] + [res.best_val_accuracy]
    )
    # the restored weights are the ones that scored best on validation
    assert evaluate(model, _batches(x[150:], y[150:])) == pytest.approx(res.best_val_accuracy)
    assert res.best_val_accuracy > 0.9


def test_fit_keeps_initial_weights_when_training_only_hurts():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-10.0, 0, 0], [10.0, 0, 0]]))
        model.bias.zero_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    # train on flipped labels: validation accuracy can only get worse than the perfect start
    res = fit(model, opt, _batches(x, 1 - y), _batches(x, y), epochs=3, progress=False)
    assert res.best_epoch == 0 and res.best_val_accuracy == 1.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


class _RecordsLayout(nn.Module):
    """A small conv net that records whether each batch arrived channels-last."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(
            x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        )
        return self.head(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("channels_last", [True, False])
def test_fit_and_predict_feed_channels_last_batches_by_default(channels_last):
    from smart_transfer.training import predict

    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 2, (16,))
    model = _RecordsLayout()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(
        model,
        opt,
        _batches(x, y, 8),
        _batches(x, y, 8),
        epochs=1,
        progress=False,
        channels_last=channels_last,
    )
    assert model.seen and all(s == channels_last for s in model.seen)
    assert model.conv.weight.is_contiguous()  # on the CPU only the inputs change layout
    model.seen.clear()
    logits, _ = predict(model, _batches(x, y, 8), channels_last=channels_last)
    assert all(s == channels_last for s in model.seen)
    # the layout changes no value
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-6)
    model.seen.clear()
    predict(model, _batches(x, y, 8))
    assert all(model.seen)
