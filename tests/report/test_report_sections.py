"""The report's sections about what happened: auto's choice, per-class scores, the misclassified
gallery, what is left out, and a run trained from a backbone name drawn without passing a model."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

import smart_transfer as st
from smart_transfer.data.tensor_dataset import TensorImageDataset
from smart_transfer.errors import DataError
from smart_transfer.report import load_run, make_report
from smart_transfer.report.gallery import pick_misclassified, thumbnails
from smart_transfer.report.run import class_scores


def _section(text: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.DOTALL)
    assert m, f"no section {sid}"
    return m.group(1)


def _cells(table_html: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", table_html, re.DOTALL)
    cells = [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", r)] for r in rows]
    return [c for c in cells if c]  # the header row has <th> cells only


def test_per_class_scores_are_sklearns() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    y_pred[y_pred == 3] = 1  # class 3 never predicted: precision 0 by zero_division=0
    y_true[y_true == 4] = 0  # class 4 never present: recall 0
    cm = np.zeros((5, 5), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(5), zero_division=0)
    got = class_scores(cm)
    np.testing.assert_allclose(got["precision"], p, atol=1e-12)
    np.testing.assert_allclose(got["recall"], r, atol=1e-12)
    np.testing.assert_allclose(got["f1"], f, atol=1e-12)
    assert got["support"].tolist() == s.tolist()


def test_the_confusion_section_tables_sklearns_scores(
    report_bn: tuple[Path, dict[str, Any], Path],
) -> None:
    _, data, page = report_bn
    cm = np.asarray(data["metrics"]["confusion_matrix"])
    y_true = np.repeat(np.arange(3), cm.sum(1))
    y_pred = np.concatenate([np.repeat(np.arange(3), row) for row in cm])
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    rows = _cells(_section(page.read_text(encoding="utf-8"), "confusion"))
    assert [row[0] for row in rows] == ["tee", "boot", "bag", "macro average"]
    for i, row in enumerate(rows[:3]):
        assert [float(v) for v in row[1:4]] == pytest.approx([p[i], r[i], f[i]], abs=5e-4)
        assert int(row[4]) == s[i]
    assert float(rows[3][3]) == pytest.approx(f.mean(), abs=5e-4)


def _auto_run(path: Path, kept: str, log: bool) -> None:
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps(
            {
                "strategy": "auto",
                "backbone": "small_vgg",
                "class_names": ["a", "b"],
                "num_classes": 2,
            }
        )
    )
    tried = [
        {
            "strategy": "linear-probe",
            "val_accuracy": 0.75,
            "seconds": 0.4,
            "cv_accuracy": 0.8125,
            "cv_folds": 5,
            "cv_images": 48,
        },
        {"strategy": "lp-ft", "val_accuracy": 0.8, "val_loss": 0.61234, "seconds": 12.0},
        {"strategy": "smart-kernel", "skipped": "time budget of 10 s used (12 s)"},
    ]
    chosen = {
        "strategy": kept,
        "selection": {
            "rule": "one-se",
            "prefer": "advice",
            "tie": "loss",
            "val_images": 20,
            "standard_error": 0.089,
            "cv": {"folds": 5, "images": 48, "kept": "linear-probe"},
        },
    }
    (path / "result.json").write_text(
        json.dumps({"strategy": "auto", "chosen": chosen, "tried": tried})
    )
    if log:
        rows = [
            {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_accuracy": 0.5 + 0.1 * e}
            for e in (1, 2, 3)
        ]
        (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_auto_names_its_choice_every_candidate_and_the_kept_curves(tmp_path: Path) -> None:
    _auto_run(tmp_path / "ft", "lp-ft", log=True)
    text = make_report(tmp_path / "ft").read_text(encoding="utf-8")
    sec = _section(text, "selection")
    assert "auto kept <strong>lp-ft</strong>" in sec and "8.9 points" in sec and "5-fold" in sec
    assert "advisor&#x27;s earliest candidate" in sec and "lowest validation loss" in sec
    assert _cells(sec) == [
        ["linear-probe", "75.0%", "-", "81.2% (5 folds, 48 images)", "0.4", ""],
        ["lp-ft", "80.0%", "0.612", "-", "12.0", "kept"],
        ["smart-kernel", "-", "-", "-", "-", "skipped: time budget of 10 s used (12 s)"],
    ]
    assert "training curves below are those of lp-ft" in sec
    assert 'alt="training_curves"' in _section(text, "training")

    _auto_run(tmp_path / "lp", "linear-probe", log=False)
    text = make_report(tmp_path / "lp").read_text(encoding="utf-8")
    assert "linear-probe is fitted in closed form" in _section(text, "selection")
    assert '<section id="training">' not in text  # left out: the kept probe has no epochs
    assert "Training curves (linear-probe is fitted in closed form, without epochs)" in text


def test_misclassified_are_taken_in_turn_from_each_class() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = torch.tensor([1, 2, 0, 0, 1, 0, 1, 2, 0])
    wrong = [i for i in range(9) if pred[i] != labels[i]]  # 0, 1, 3, 5, 6, 8
    assert pick_misclassified(labels, pred, limit=4) == [0, 3, 5, 1]
    assert sorted(pick_misclassified(labels, pred)) == wrong


def test_thumbnails_bring_mixed_sizes_to_one_square() -> None:
    gray = torch.full((1, 40, 20), 255, dtype=torch.uint8)
    rgba = torch.zeros(4, 30, 60, dtype=torch.uint8)
    rgba[0] = 255
    out = thumbnails([gray, rgba], side=16)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out[0], torch.ones(3, 16, 16))
    assert torch.allclose(out[1][0], torch.ones(16, 16)) and float(out[1][1:].abs().max()) == 0.0
    same = thumbnails([torch.zeros(3, 5, 7, dtype=torch.uint8)] * 2)
    assert same.shape == (2, 3, 5, 7)  # one size: kept as it is


def _hard_dataset() -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(16)
    x = torch.rand(len(y), 3, 20, 20, generator=g) * 0.9
    x[torch.arange(len(y)), y] += 0.06  # a faint signal: some test images come out wrong
    return TensorImageDataset((x.clamp(0, 1) * 255).to(torch.uint8), y, ["cat", "dog", "$x$"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, TensorImageDataset]:
    ds = _hard_dataset()
    out = tmp_path_factory.mktemp("sk") / "run"
    idx = torch.arange(len(ds))
    train_idx, val_idx, test_idx = idx[idx % 4 < 2], idx[idx % 4 == 2], idx[idx % 4 == 3]
    result = st.train(
        "small_vgg",
        (ds, train_idx),
        (ds, val_idx),
        strategy="smart-kernel",
        epochs=1,
        size=16,
        out=out,
        progress=False,
        device="cpu",
    )
    st.evaluate(result, (ds, test_idx))
    return out, result, ds


def test_evaluate_records_the_misclassified_and_the_report_shows_them(
    trained: tuple[Path, Any, TensorImageDataset],
) -> None:
    out, result, ds = trained
    test_idx = torch.arange(len(ds))[torch.arange(len(ds)) % 4 == 3]
    x = torch.stack([ds[int(i)][0] for i in test_idx])
    model = result.model.eval()
    with torch.no_grad():
        pred = model(result.transform()(x)).argmax(1)  # the reference: the model on the test images
    labels = ds.targets[test_idx]
    picks = pick_misclassified(labels, pred)
    assert picks, "the faint signal should leave some test images wrong"
    gallery = load_run(out).misclassified
    assert gallery is not None and gallery.predictions is not None
    assert gallery.labels.tolist() == labels[picks].tolist()
    assert gallery.predictions.tolist() == pred[picks].tolist()
    expected = torch.stack([ds[int(test_idx[i])][0] for i in picks]).float() / 255
    assert torch.allclose(gallery.images, expected)
    text = make_report(out).read_text(encoding="utf-8")
    sec = _section(text, "misclassified")
    items = [html.unescape(i) for i in re.findall(r"<li>(.*?)</li>", sec)]
    names = ds.classes
    assert items == [
        f"true {names[int(labels[i])]}, predicted {names[int(pred[i])]}" for i in picks
    ]
    wrong = int((pred != labels).sum())
    assert f"{wrong} of {len(test_idx)} test images were misclassified" in sec


def test_a_run_trained_from_a_name_draws_its_maps_without_being_given_the_model(
    trained: tuple[Path, Any, TensorImageDataset],
    tmp_path: Path,
) -> None:
    out, _, _ = trained
    page = make_report(out, out=tmp_path / "r.html").read_text(encoding="utf-8")
    assert "no trained model could be loaded" not in page
    assert 'alt="activation_maps"' in _section(page, "activations")
    assert "<td>backbone</td><td>small_vgg</td>" in _section(page, "run")
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        return
    assert 'alt="grad_cam"' in _section(page, "grad-cam")


def test_a_comparison_folder_cannot_point_outside_itself(
    tmp_path: Path, run_bn: tuple[Path, dict[str, Any]]
) -> None:
    run_dir, _ = run_bn
    shutil.copytree(run_dir, tmp_path / "elsewhere")
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "comparison.json").write_text(
        json.dumps({"rows": [], "report_run": "../elsewhere"})
    )
    with pytest.raises(DataError, match="report_run '../elsewhere'"):
        load_run(tmp_path / "cmp")
    shutil.copytree(run_dir, tmp_path / "cmp" / "seed-0" / "x")
    (tmp_path / "cmp" / "comparison.json").write_text(
        json.dumps({"rows": [{"strategy": "x"}], "report_run": "seed-0/x"})
    )
    run = load_run(tmp_path / "cmp")
    assert run.path == tmp_path / "cmp" / "seed-0" / "x" and run.comparison == {
        "rows": [{"strategy": "x"}],
        "report_run": "seed-0/x",
    }


def test_auto_rule_in_words_follows_what_the_run_recorded() -> None:
    from smart_transfer.report.html import _rule_text

    old = _rule_text({"rule": "one-se", "val_images": 20})  # before prefer / tie were recorded
    assert "the simplest candidate within one standard error" in old and "loss" not in old
    new = _rule_text({"rule": "one-se", "prefer": "advice", "tie": "order", "val_images": 20})
    assert "advisor's earliest candidate" in new and "loss" not in new
    best = _rule_text({"rule": "best", "tie": "loss", "val_images": 20})
    assert best.startswith(": the best validation accuracy on 20 images (when that one is trained")
