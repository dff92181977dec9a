"""make_report on hand-built run directories: sections, figures, notes, errors."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from smart_transfer.errors import DataError
from smart_transfer.report import SECTIONS, make_report

FIGURES = {
    "similarity_curve",
    "kernel_histograms",
    "activation_maps",
    "grad_cam",
    "frozen_fraction",
    "samples",
    "training_curves",
    "confusion_matrix",
    "misclassified",
    "comparison",
}


class Page(HTMLParser):
    """Sections (id -> text, notes, image names) and every <img> of a report."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, Any]] = {}
        self.images: list[dict[str, str]] = []
        self._section: str | None = None
        self._in_note = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._section = a["id"]
            self.sections[a["id"]] = {"notes": [], "images": [], "text": ""}
        elif tag == "img":
            self.images.append(a)
            if self._section:
                self.sections[self._section]["images"].append(a["alt"])
        elif tag == "p" and "note" in a.get("class", ""):
            self._in_note = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self._in_note = False
        elif tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._section:
            self.sections[self._section]["text"] += data
            if self._in_note:
                self.sections[self._section]["notes"].append(data)


def _grad_cam_installed() -> bool:
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        return False
    return True


def test_every_section_and_figure(report_bn: tuple[Path, dict[str, Any], Path]) -> None:
    run_dir, _, out = report_bn
    assert out == run_dir / "report.html" and out.is_file()
    page = Page(out.read_text(encoding="utf-8"))
    assert list(page.sections) == [sid for sid, _ in SECTIONS if sid != "selection"]  # not auto
    expected = set(FIGURES) if _grad_cam_installed() else FIGURES - {"grad_cam"}
    assert {img["alt"] for img in page.images} == expected
    for sid, sec in page.sections.items():
        if sid == "grad-cam" and not _grad_cam_installed():
            assert "grad-cam" in " ".join(sec["notes"])
        else:
            assert sec["notes"] == [], f"section {sid} was skipped: {sec['notes']}"
    run = page.sections["run"]["text"]
    for text in ("smart-kernel", "small_vgg", "BatchNorm running statistics", "77.78%", "12"):
        assert text in run


def test_figures_are_written_and_decode(report_bn: tuple[Path, dict[str, Any], Path]) -> None:
    run_dir, _, out = report_bn
    page = Page(out.read_text(encoding="utf-8"))
    for img in page.images:
        file = run_dir / img["data-file"]
        assert file.is_file(), file
        with Image.open(file) as im:
            im.load()
            assert im.format == "PNG"
            assert im.size == (int(img["width"]), int(img["height"]))
        embedded = img["src"].removeprefix("data:image/png;base64,")
        assert base64.b64decode(embedded) == file.read_bytes()
    sizes = {img["alt"]: (int(img["width"]), int(img["height"])) for img in page.images}
    # figure sizes in inches x 100 dpi; the per-layer figures grow with the 3 chosen layers
    assert sizes["similarity_curve"] == (1000, 420)
    assert sizes["training_curves"] == (1200, 400)
    assert sizes["kernel_histograms"] == (1000, 870)
    assert sizes["activation_maps"] == (1000, 990)


def test_model_left_as_it_was(run_bn: tuple[Path, dict[str, Any]]) -> None:
    from smart_transfer.report import maps

    _, data = run_bn
    model = data["model"]
    model.train()
    model.features[1].eval()  # a deliberately mixed model
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grad = torch.ones_like(model.classifier.weight)
    model.classifier.weight.grad = grad
    x = torch.rand(2, 3, 16, 16)
    try:
        acts = maps.kernel_maps(model, "features.3", x, [0, 2])
        cams, pred = maps.grad_cam_maps(model, x) if _grad_cam_installed() else (None, None)
        assert [m.training for m in model.modules()] == modes
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert model.classifier.weight.grad is grad
        assert model.features[0].weight.grad is None
        for m in model.modules():
            assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
    finally:
        model.eval()
        model.classifier.weight.grad = None
    with torch.no_grad():
        expected = model.features[:4](x)
    assert set(acts) == {0, 2}
    assert torch.allclose(acts[2], expected[:, 2], atol=1e-6)
    if cams is not None:
        assert cams.shape == (2, 16, 16) and float(cams.min()) >= 0 and float(cams.max()) <= 1
        assert pred.tolist() == model(x).argmax(1).tolist()


def test_out_path_and_figures_beside_it(
    run_bn: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run_dir, _ = run_bn
    for name in ("config.json", "metrics.json"):
        shutil.copy(run_dir / name, tmp_path / name)
    out = make_report(tmp_path, out=tmp_path / "r" / "page.html")
    assert out == tmp_path / "r" / "page.html" and out.is_file()
    assert (tmp_path / "r" / "figures" / "confusion_matrix.png").is_file()
    assert not (tmp_path / "report.html").exists()
    assert not list((tmp_path / "r").glob(".*.tmp"))


def test_data_source_draws_both_histograms(tmp_path: Path, make_run: Any) -> None:
    make_run(tmp_path / "run", source="data")
    for name in (
        "log.jsonl",
        "metrics.json",
        "comparison.json",
        "samples.safetensors",
        "test_samples.safetensors",
    ):
        (tmp_path / "run" / name).unlink()  # figures this test does not look at
    out = make_report(tmp_path / "run")
    page = Page(out.read_text(encoding="utf-8"))
    assert page.sections["histograms"]["images"] == ["kernel_histograms"]
    assert "both as histograms" in page.sections["histograms"]["text"]
    assert "source images (12 images)" in page.sections["run"]["text"]


def test_without_model_the_model_sections_say_so(
    run_bn: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run_dir, _ = run_bn
    for name in ("config.json", "samples.safetensors", "test_samples.safetensors"):
        shutil.copy(run_dir / name, tmp_path / name)
    page = Page(make_report(tmp_path).read_text(encoding="utf-8"))
    for sid in ("activations", "grad-cam"):
        assert page.sections[sid]["images"] == []
        assert any("make_report(run_dir, model=model)" in n for n in page.sections[sid]["notes"])
    assert page.sections["samples"]["images"] == ["samples"]


def test_minimal_run_leaves_out_what_does_not_apply_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"strategy": "linear-probe", "source": None}))
    text = make_report(tmp_path).read_text(encoding="utf-8")
    page = Page(text)
    # what a linear probe has (a model, samples, a test) is kept, with a note saying what is missing
    assert list(page.sections) == ["run", "grad-cam", "samples", "confusion", "misclassified"]
    assert page.images == []
    for sid, sec in page.sections.items():
        if sid != "run":
            assert sec["notes"], f"section {sid} has no note"
    assert page.sections["run"]["notes"] == []
    assert "none (this strategy compares no distributions)" in page.sections["run"]["text"]
    lines = re.findall(r'<p class="left-out">(.*?)</p>', text)
    assert len(lines) == 1
    line = html.unescape(lines[0])
    assert line.startswith("Not shown for linear-probe: Strategy chosen by auto (only auto chooses")
    assert (
        "Layer-wise similarity, Kernel distributions: D_pre and D_new, Activation maps of the most "
        "and least similar kernels (linear-probe compares no activation distributions)"
    ) in line
    assert "Frozen fraction per layer (linear-probe freezes no kernels by plan)" in line
    assert "Training curves (linear-probe is fitted in closed form, without epochs)" in line
    assert "Strategy comparison and advice (no other strategy was compared" in line
    assert not (tmp_path / "figures").exists()


def test_advice_curve_stands_in_for_missing_profiles(
    run_bn: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run_dir, _ = run_bn
    for name in ("config.json", "advice.json"):
        shutil.copy(run_dir / name, tmp_path / name)
    page = Page(make_report(tmp_path).read_text(encoding="utf-8"))
    assert page.sections["similarity"]["images"] == ["similarity_curve"]
    assert page.sections["histograms"]["notes"]


def test_bad_run_directories(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no run directory"):
        make_report(tmp_path / "missing")
    with pytest.raises(DataError, match="none of the files"):
        make_report(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match="metrics.json"):
        make_report(tmp_path)


def test_truncated_last_log_line_is_ignored(tmp_path: Path) -> None:
    rows = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1}, {"epoch": 2, "train_loss": 0.5}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 3, "train_lo'
    (tmp_path / "log.jsonl").write_text(text)
    page = Page(make_report(tmp_path).read_text(encoding="utf-8"))
    assert page.sections["training"]["images"] == ["training_curves"]
    assert "2 epochs" in page.sections["training"]["text"]
    with Image.open(io.BytesIO((tmp_path / "figures" / "training_curves.png").read_bytes())) as im:
        assert im.size == (1200, 400)


def test_grad_cam_without_the_package_is_a_note(
    run_bn: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, data = run_bn
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import raises ImportError
    shutil.copy(run_dir / "config.json", tmp_path / "config.json")
    shutil.copy(run_dir / "test_samples.safetensors", tmp_path / "test_samples.safetensors")
    page = Page(make_report(tmp_path, model=data["model"]).read_text(encoding="utf-8"))
    sec = page.sections["grad-cam"]
    assert sec["images"] == []
    assert any('pip install "smart-transfer[cam]"' in n for n in sec["notes"])
