"""st.predict and `smart-transfer predict` on photos of mixed sizes, checked against the network
itself."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import smart_transfer as st
from smart_transfer.cli import main
from smart_transfer.data.files import read_image
from smart_transfer.errors import ConfigError, DataError
from smart_transfer.predictions import Predictions, UnreadableImage

CLASSES = ["ant", "bee", "cow"]


def _photo(rng: np.random.Generator, c: int, h: int, w: int):
    from PIL import Image

    a = (rng.random((h, w, 3)) * 110).astype(np.uint8)
    a[..., c] += 120  # the class is the brightest channel
    a[: h // 3] += np.uint8(rng.integers(0, 20))  # a little structure that differs per photo
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A labelled folder (mixed sizes), a flat folder of new photos and a trained run."""
    base = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (base / "photos" / name).mkdir(parents=True)
        for i in range(12):
            h, w = (int(v) for v in rng.integers(18, 40, 2))
            _photo(rng, c, h, w).save(base / "photos" / name / f"{i}.png")
    flat = base / "new"
    flat.mkdir()
    for i in range(6):
        h, w = (int(v) for v in rng.integers(18, 40, 2))
        _photo(rng, i % 3, h, w).save(flat / (f"p{i}.png" if i % 2 else f"p{i}.jpg"))
    ds = st.data.image_folder(base / "photos", size=24)
    result = st.train(
        "small_vgg",
        ds,
        strategy="full-finetune",
        epochs=2,
        lr=0.01,
        size=16,
        progress=False,
        out=base / "run",
        device="cpu",
    )
    return base, result


def _direct(result, x: torch.Tensor) -> torch.Tensor:
    """The reference: the run's eval transform and network on one image, by hand."""
    with torch.no_grad():
        return result.model.eval()(result.transform()(x[None])).softmax(1)[0]


def test_every_input_form_gives_the_direct_probabilities(setup):
    from PIL import Image

    base, result = setup
    flat = base / "new"
    files = sorted(flat.iterdir())
    ref = torch.stack([_direct(result, read_image(f)) for f in files])
    assert (ref.max(0).values - ref.min(0).values).max() > 1e-3  # the photos are told apart

    by_folder = st.predict(base / "run", flat)
    assert by_folder.paths == [str(f) for f in files]
    torch.testing.assert_close(by_folder.probs, ref, atol=1e-6, rtol=0)
    by_list = st.predict(result, [str(files[3]), files[0]])
    torch.testing.assert_close(by_list.probs, ref[[3, 0]], atol=1e-6, rtol=0)
    by_glob = st.predict(result, str(flat / "*.png"))
    assert by_glob.paths == [str(f) for f in files if f.suffix == ".png"]
    torch.testing.assert_close(by_glob.probs, ref[[1, 3, 5]], atol=1e-6, rtol=0)

    x = read_image(files[2])
    with Image.open(files[2]) as img:
        torch.testing.assert_close(st.predict(result, img).probs[0], ref[2], atol=1e-6, rtol=0)
    as_uint8 = st.predict(result, x)
    as_float = st.predict(result, x.float() / 255)
    batch = st.predict(result, torch.stack([x, x.flip(-1)]))
    assert as_uint8.paths == [None] and len(batch) == 2
    for p in (as_uint8.probs[0], as_float.probs[0], batch.probs[0]):
        torch.testing.assert_close(p, ref[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(batch.probs[1], _direct(result, x.flip(-1)), atol=1e-6, rtol=0)

    # a labelled dataset and a loader of (x, y) batches: labels are ignored
    ds = st.data.image_folder(base / "photos")
    from_ds = st.predict(result, ds)
    assert from_ds.paths[0] == str(ds.samples[0][0]) and len(from_ds) == 36
    torch.testing.assert_close(from_ds.probs[5], _direct(result, ds[5][0]), atol=1e-6, rtol=0)
    from_loader = st.predict(result, [(torch.stack([x, x]), torch.tensor([0, 1]))])
    torch.testing.assert_close(from_loader.probs, ref[[2, 2]], atol=1e-6, rtol=0)


def test_class_names_top_k_and_table(setup):
    base, result = setup
    preds = st.predict(result, base / "photos", top_k=2)  # nested folders: every image below
    assert isinstance(preds, Predictions) and len(preds) == 36
    assert (
        preds.classes
        == CLASSES
        == json.loads((base / "run" / "config.json").read_text())["class_names"]
    )
    torch.testing.assert_close(preds.probs.sum(1), torch.ones(36))
    assert torch.equal(preds.indices, preds.probs.argmax(1))
    assert preds.labels == [CLASSES[i] for i in preds.probs.argmax(1).tolist()]
    tops = preds.top(3)
    for row, probs, label in zip(tops, preds.probs, preds.labels):
        assert [n for n, _ in row] == [CLASSES[i] for i in probs.argsort(descending=True).tolist()]
        assert [q for _, q in row] == sorted(probs.tolist(), reverse=True)
        assert row[0][0] == label
    assert len(preds.top(10)[0]) == 3 and len(preds.top()[0]) == 2  # capped at K; default top_k
    text = str(preds)
    lines = text.splitlines()
    assert lines[0].split() == ["path", "predicted", "probability", "top", "2"]
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "... 16 more, see to_csv()"
    first = lines[1].split()
    assert (
        preds.paths[0].endswith(first[0].lstrip(".")) and first[1] == preds.labels[0]
    )  # long: its tail
    assert float(first[2]) == pytest.approx(preds.probs[0].max().item(), abs=5e-4)


def test_csv_columns_and_values(setup, tmp_path):
    base, result = setup
    preds = st.predict(result, base / "new")
    out = preds.to_csv(tmp_path / "p.csv", top_k=2)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == [
        "path",
        "predicted_class",
        "probability",
        "top1_class",
        "top1_probability",
        "top2_class",
        "top2_probability",
    ]
    assert len(rows) == 1 + len(preds)
    for row, path, probs in zip(rows[1:], preds.paths, preds.probs):
        order = probs.argsort(descending=True).tolist()
        assert row[0] == path and row[1] == CLASSES[order[0]] == row[3]
        assert float(row[2]) == pytest.approx(probs[order[0]].item(), abs=1e-6)
        assert row[5] == CLASSES[order[1]] and float(row[6]) == pytest.approx(
            probs[order[1]].item(), abs=1e-6
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]  # no temporary file left
    with pytest.raises(ConfigError, match="destroy the input"):
        preds.to_csv(preds.paths[0])


def test_unreadable_files_raise_or_are_skipped(setup, tmp_path):
    base, result = setup
    folder = tmp_path / "mixed"
    shutil.copytree(base / "new", folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UnreadableImage, match=r"broken\.jpg.*on_error='skip'"):
        st.predict(result, folder)
    preds = st.predict(result, folder, on_error="skip")
    assert len(preds) == 6 and [p for p, _ in preds.skipped] == [str(folder / "broken.jpg")]
    assert "skipped 1 unreadable file(s)" in str(preds)
    with pytest.raises(DataError, match="none of the 1"):
        st.predict(result, folder / "broken.jpg", on_error="skip")
    with pytest.raises(ConfigError, match="on_error"):
        st.predict(result, folder, on_error="ignore")


def test_one_clear_error_each(setup, tmp_path):
    base, result = setup
    with pytest.raises(DataError, match="no file matches the pattern"):
        st.predict(result, str(tmp_path / "*.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        st.predict(result, tmp_path / "empty")
    with pytest.raises(DataError, match="no image, folder or pattern"):
        st.predict(result, tmp_path / "missing.png")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(base / "run" / "config.json", unfinished / "config.json")
    with pytest.raises(DataError, match="has not finished"):
        st.predict(unfinished, base / "new")
    with pytest.raises(DataError, match="5 channels"):
        st.predict(result, torch.zeros(2, 5, 8, 8, dtype=torch.uint8))
    with pytest.raises(DataError, match=r"permute\(2, 0, 1\)"):
        st.predict(result, torch.zeros(20, 20, 3, dtype=torch.uint8))
    with pytest.raises(DataError, match="not normalised"):
        st.predict(result, torch.randn(3, 8, 8))
    with pytest.raises(DataError, match="empty list"):
        st.predict(result, [])


def test_cli_predict(setup, tmp_path, capsys, monkeypatch):
    base, _ = setup
    run, flat = str(base / "run"), str(base / "new")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", run, flat, "--top-k", "2"]) == 0  # default --out: ./predictions.csv
    out = capsys.readouterr().out
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(p) for p in sorted(Path(flat).iterdir())]
    lines = out.splitlines()
    assert lines[0].split() == ["path", "predicted", "probability", "top", "2"]
    for line, r in zip(lines[1:7], rows):
        shown, label = line.split()[:2]
        assert r["path"].endswith(shown.lstrip(".")) and label == r["predicted_class"]
    assert lines[-1] == "predicted 6 image(s), classes ant, bee, cow -> predictions.csv"

    assert main(["predict", run, str(base / "photos"), "--out", "all.csv"]) == 0
    assert "... 16 more, see all.csv" in capsys.readouterr().out

    bad = tmp_path / "bad"
    shutil.copytree(flat, bad)
    (bad / "x.png").write_bytes(b"\x89PNG broken")
    assert main(["predict", run, str(bad), "--out", "b.csv"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "x.png" in err and "--on-error skip" in err
    assert not (tmp_path / "b.csv").exists()
    assert main(["predict", run, str(bad), "--out", "b.csv", "--on-error", "skip"]) == 0
    assert f"skipped 1 unreadable file(s): {bad / 'x.png'}" in capsys.readouterr().out

    assert main(["predict", run, str(bad), "--out", str(bad / "p.csv")]) == 2
    assert "inside the image folder" in capsys.readouterr().err
    assert main(["predict", run, flat, "--out", str(base / "run" / "config.json")]) == 2
    assert "'config.json' of the run folder" in capsys.readouterr().err
    assert main(["predict", run, str(tmp_path / "none" / "*.png")]) == 2
    assert "no file matches" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), flat]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["predict", run, flat, "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err


def test_mixed_shapes_keep_their_order_and_the_model_its_state():
    """Without a fixed input size every image keeps its own shape: batches are split by shape,
    rows still come back in input order; the model is left in the mode it was in."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    result = st.TrainResult(
        model=net,
        strategy="x",
        plan=None,
        val_accuracy=0.0,
        history=[],
        config={"num_classes": 2, "class_names": ["no", "yes"], "size": None},
        timings={},
    )
    g = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        for h, w in [(9, 9), (12, 7), (9, 9), (5, 11), (12, 7), (9, 9), (8, 8)]
    ]
    net.train()
    preds = st.predict(result, images, batch_size=3)
    assert net.training  # handed back as it was
    ref = torch.stack([_direct(result, x) for x in images])
    torch.testing.assert_close(preds.probs, ref, atol=1e-6, rtol=0)
    assert (ref[:, 0].max() - ref[:, 0].min()) > 1e-3 and preds.classes == ["no", "yes"]
