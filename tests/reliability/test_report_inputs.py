"""Damaged or unusual report inputs: each one clear line naming the file, never a raw traceback.

A class name with ``$`` (matplotlib's mathtext), a ragged or non-numeric confusion matrix, a
non-numeric advice score: the report is still written, the section that needed the damaged
value is replaced by one line naming the file and the fix, the other sections are drawn.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from smart_transfer.cli import main
from smart_transfer.report import make_report

NAMES = ["$\\frac{a$", "b$", "$x^2$"]  # the first stops mathtext with a parse error


def _run(
    path: Path,
    names: list[str] = NAMES,
    metrics: dict[str, Any] | None = None,
    advice: dict[str, Any] | None = None,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(
        json.dumps(
            {
                "strategy": "full-finetune",
                "backbone": "small_vgg",
                "class_names": names,
                "num_classes": len(names),
            }
        )
    )
    m = {"accuracy": 0.5, "test_images": 6, "confusion_matrix": [[1, 1, 0], [0, 1, 1], [1, 0, 1]]}
    (path / "metrics.json").write_text(json.dumps({**m, **(metrics or {})}))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 12, 12, generator=g)
    save_file(
        {
            "images": x,
            "labels": torch.arange(3),
            "misclassified_images": x[:2].clone(),
            "misclassified_labels": torch.tensor([0, 1]),
            "misclassified_predictions": torch.tensor([1, 2]),
        },
        str(path / "test_samples.safetensors"),
    )
    save_file({"images": x, "labels": torch.arange(3)}, str(path / "samples.safetensors"))
    if advice is not None:
        (path / "advice.json").write_text(json.dumps(advice))
    return path


def _section(text: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.DOTALL)
    assert m, f"no section {sid}"
    return m.group(1)


def test_unescaped_dollar_names_break_matplotlib() -> None:
    """The case is real: drawn as they are, these names stop the figure."""
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    ax.set_xticks([0, 1, 2])
    ax.set_xticklabels(NAMES)
    with pytest.raises(ValueError):
        fig.savefig(io.BytesIO(), format="png")


def test_class_names_with_dollars_are_drawn_as_written(tmp_path: Path) -> None:
    out = make_report(_run(tmp_path / "run"))
    text = out.read_text(encoding="utf-8")
    assert 'class="note"' not in _section(text, "confusion") + _section(text, "misclassified")
    for name in ("confusion_matrix", "misclassified", "samples"):
        with Image.open(tmp_path / "run" / "figures" / f"{name}.png") as im:
            im.load()  # the figure was drawn and saved in full
    assert "true $\\frac{a$, predicted b$" in text  # HTML keeps the names as they are


def test_a_ragged_confusion_matrix_is_one_line_naming_the_file(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", metrics={"confusion_matrix": [[1, 1, 0], [0, 1], [1, 0, 1]]})
    text = make_report(run).read_text(encoding="utf-8")
    sec = _section(text, "confusion")
    notes = re.findall(r'<p class="note">(.*?)</p>', sec)
    assert len(notes) == 1 and "<img" not in sec
    assert (
        str(run / "metrics.json") in notes[0]
        and "row 1" in notes[0]
        and "has 2 values, not 3" in notes[0]
    )
    assert "--overwrite" in notes[0]
    assert 'alt="misclassified"' in _section(text, "misclassified")  # the rest is drawn


@pytest.mark.parametrize("bad", ["x", None, -1, 1.5, [1]])
def test_a_non_numeric_confusion_matrix_is_one_line_naming_the_file(
    tmp_path: Path, bad: Any
) -> None:
    run = _run(tmp_path / "run", metrics={"confusion_matrix": [[1, bad, 0], [0, 1, 1], [1, 0, 1]]})
    sec = _section(make_report(run).read_text(encoding="utf-8"), "confusion")
    notes = re.findall(r'<p class="note">(.*?)</p>', sec)
    assert len(notes) == 1 and str(run / "metrics.json") in notes[0] and "not a count" in notes[0]


def test_a_confusion_matrix_that_is_not_a_list(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", metrics={"confusion_matrix": "[[1, 2]]"})
    sec = _section(make_report(run).read_text(encoding="utf-8"), "confusion")
    assert "holds no confusion_matrix as a list of rows" in sec


def test_a_non_numeric_advice_score_is_one_line_naming_the_file(tmp_path: Path) -> None:
    curve = [{"layer": "features.0", "score": 0.5}, {"layer": "features.3", "score": "high"}]
    run = _run(tmp_path / "run", advice={"strategy": "lp-ft", "similarity": "very", "curve": curve})
    text = make_report(run).read_text(encoding="utf-8")
    sim = _section(text, "similarity")
    assert (
        "<img" not in sim
        and str(run / "advice.json") in sim
        and "point 1 of the similarity curve" in sim
    )
    comp = _section(text, "comparison")
    assert "similarity=&#x27;very&#x27;, not a number" in comp and str(run / "advice.json") in comp


def test_misclassified_images_without_predictions(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    x = torch.rand(2, 3, 8, 8)
    save_file(
        {
            "images": x,
            "labels": torch.arange(2),
            "misclassified_images": x.clone(),
            "misclassified_labels": torch.tensor([0, 1]),
        },
        str(run / "test_samples.safetensors"),
    )
    sec = _section(make_report(run).read_text(encoding="utf-8"), "misclassified")
    assert "no predictions" in sec and str(run / "test_samples.safetensors") in sec


def test_the_cli_writes_the_report_of_a_damaged_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run(
        tmp_path / "run",
        metrics={"confusion_matrix": [[1, 2], [3]]},
        advice={"curve": [{"layer": "a", "score": "nan?"}]},
    )
    assert main(["report", str(run)]) == 0
    assert "report ->" in capsys.readouterr().out
