"""Data intake: evaluation geometry per image, CSV / dict datasets, raw batches, splits,
manifest."""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import smart_transfer as st
from smart_transfer.api import _dataset_and_indices
from smart_transfer.data.adapt import as_dataset
from smart_transfer.data.image_folder import image_csv
from smart_transfer.data.manifest import Manifest, draw_splits, summary
from smart_transfer.data.transforms import eval_geometry
from smart_transfer.errors import ConfigError, DataError

sys.path.insert(0, str(Path(__file__).parent))
from odd_photos import make_odd_folder


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    make_odd_folder(tmp_path / "photos")
    return tmp_path / "photos"


def _reference(img: torch.Tensor, size: int, crop_pct: float) -> torch.Tensor:
    """torchvision's eval geometry (Resize(short side) + CenterCrop), antialiased, on floats."""
    from torchvision.transforms.v2 import functional as TF

    x = img.float() / 255
    x = TF.resize(x, [math.floor(size / crop_pct)], antialias=True)
    return TF.center_crop(x, [size, size])


@pytest.mark.parametrize("crop_pct", [None, 0.875, 0.9])
@pytest.mark.parametrize("hw", [(37, 53), (64, 23), (16, 16), (12, 30)])
def test_transform_of_one_image_is_the_dataset_preprocessing(hw, crop_pct):
    """transforms_for(train=False) on one raw image (1, C, H, W) = torchvision's Resize+CenterCrop,
    and = the same transform on the image as a dataset reads it (eval_geometry), up to uint8
    rounding."""
    g = torch.Generator().manual_seed(hw[0])
    img = torch.randint(0, 256, (3, *hw), generator=g, dtype=torch.uint8)
    cfg = {"input_size": (3, 16, 16), "mean": (0.0,) * 3, "std": (1.0,) * 3, "crop_pct": crop_pct}
    tf = st.data.transforms_for(cfg, train=False)
    direct = tf(img[None])[0]
    torch.testing.assert_close(direct, _reference(img, 16, crop_pct or 1.0), atol=1e-5, rtol=0)
    stored = eval_geometry(img, 16, crop_pct)
    assert (
        stored.dtype == torch.uint8
        and stored.shape[-2:] == (math.floor(16 / (crop_pct or 1.0)),) * 2
    )
    via_dataset = tf(stored[None])[0]
    assert via_dataset.shape == (3, 16, 16)
    assert float((via_dataset - direct).abs().max()) <= 0.5 / 255 + 1e-6


@pytest.mark.filterwarnings("ignore:skipped 1 unreadable")
def test_mixed_size_folder_batches_at_the_network_geometry(photos: Path):
    ds = st.data.image_folder(photos, on_error="skip").with_geometry(16, 0.875)
    x, y = next(iter(st.data.loader(ds, batch_size=64)))
    assert x.shape == (30, 3, 18, 18) and x.dtype == torch.uint8  # floor(16 / 0.875) = 18
    assert ds.classes == ["cat", "dog", "owl"] and ds.empty_folders == ["zebra"]
    assert [p.name for p in ds.skipped_files] == ["broken.jpg"]
    names = {p.name for p, _ in ds.samples}
    assert "cat00.JPG" in names and not any(n.startswith(".") for n in names)
    # colour classes survive: red > blue for cat, blue > red for owl (RGBA and gray read as 3
    # channels)
    means = x.float().mean((2, 3))
    assert (means[y == 0, 0] > means[y == 0, 2]).all() and (
        means[y == 2, 2] > means[y == 2, 0]
    ).all()
    text = summary(ds, str(photos), {"train": 1})
    assert (
        "cat 10, dog 10, owl 10" in text
        and "1 unreadable (dog/broken.jpg)" in text
        and "(zebra)" in text
    )


def test_raise_names_the_file_and_the_flag(photos: Path):
    (photos / "zebra").rmdir()
    from smart_transfer.data.spec import open_data

    with pytest.raises(DataError, match=r"broken\.jpg could not be decoded.*--on-error skip"):
        open_data(str(photos), check=True)
    (photos / "zebra").mkdir()
    with pytest.raises(DataError, match=r"zebra has no images.*--on-error skip"):
        st.data.image_folder(photos)


def test_csv_and_tsv_lists(photos: Path, tmp_path: Path):
    rows = [
        (f"photos/{c}/{c}0{i}.{'png' if i % 2 else 'jpg'}", c)
        for c in ("cat", "dog")
        for i in (2, 3)
    ]
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    ds = image_csv(tmp_path / "list.csv")
    assert ds.classes == ["cat", "dog"] and len(ds) == 4 and ds.targets.tolist() == [0, 0, 1, 1]
    assert ds.relative(ds.samples[0][0]) == rows[0][0]  # relative to the CSV's folder
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "list.tsv").write_text(
        "".join(f"../{p}\t{c}\n" for p, c in rows) + "../photos/nope.png\tcat\n"
    )
    with pytest.raises(DataError, match=r"line 5 lists .*nope\.png.*--on-error skip"):
        image_csv(sub / "list.tsv")
    skipped = image_csv(sub / "list.tsv", on_error="skip")
    assert len(skipped) == 4 and [p.name for p in skipped.skip_reasons["missing"]] == ["nope.png"]
    (tmp_path / "one.csv").write_text(f"{rows[0][0]},cat\n")
    with pytest.raises(DataError, match="at least two"):
        image_csv(tmp_path / "one.csv")


class _ClassLabel:
    def __init__(self, names):
        self.names = names


class FakeHF:
    """What a Hugging Face `datasets.Dataset` looks like to us: dict rows, columns, features."""

    def __init__(self, images, labels, names=None):
        self.images, self.labels = images, labels
        self.column_names = ["img", "label"]
        self.features = {"label": _ClassLabel(names)} if names else {}

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, key):
        if isinstance(key, str):
            return list(self.labels) if key == "label" else list(self.images)
        return {"img": self.images[key], "label": self.labels[key]}


def test_hugging_face_style_dataset_trains(tmp_path: Path):
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 30, 220)]
    images, labels = [], []
    for i in range(16):
        h, w = int(rng.integers(12, 30)), int(rng.integers(12, 30))
        images.append(Image.fromarray(np.full((h, w, 3), colours[i % 2], dtype=np.uint8)))
        labels.append(i % 2)
    hf = FakeHF(images, labels, names=["red", "blue"])
    ds = as_dataset(hf)
    assert ds.classes == ["red", "blue"] and ds.targets.tolist() == labels
    r = st.train("small_vgg", hf, strategy="head-only", size=16, epochs=1, progress=False)
    assert r.config["class_names"] == ["red", "blue"]
    # no features: the names come from .classes, plain (image, label) items work too
    hf.features = {}
    hf.classes = ["r", "b"]
    assert as_dataset(hf).classes == ["r", "b"]
    items = [
        (torch.zeros(3, 4, 4, dtype=torch.uint8), 5),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), 9),
    ]
    with pytest.warns(UserWarning, match="mapped"):
        listed = as_dataset(items)
    assert listed.classes == ["5", "9"] and listed[1][1] == 1


def test_raw_batches_are_checked_like_arrays():
    x = torch.rand(6, 3, 8, 8)
    huge = torch.tensor([0, 10**12, 0, 10**12, 0, 10**12])
    with pytest.warns(UserWarning, match="mapped"):
        ds, idx = _dataset_and_indices([(x, huge)], "train_data")
    assert ds.classes == ["0", str(10**12)] and ds.targets.tolist() == [0, 1] * 3 and len(idx) == 6
    with pytest.raises(DataError, match="fractional"):
        _dataset_and_indices([(x, torch.tensor([0.5, 1, 0, 1, 0, 1]))], "train_data")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        _dataset_and_indices([(x * 255, torch.tensor([0, 1, 0, 1, 0, 1]))], "train_data")
    with pytest.raises(DataError, match="at least two"):
        st.train(
            "small_vgg",
            [(x, torch.zeros(6, dtype=torch.int64))],
            strategy="head-only",
            size=8,
            epochs=1,
            progress=False,
        )
    # evaluation: labels index the run's classes, no remapping
    ev, _ = _dataset_and_indices(
        [(x, torch.tensor([0, 2, 0, 2, 0, 2]))], "test_data", classes=["a", "b", "c"]
    )
    assert ev.targets.tolist() == [0, 2, 0, 2, 0, 2]


def test_a_path_trains_with_all_images_and_a_test_split(tmp_path: Path):
    x = torch.rand(40, 1, 8, 8)
    y = torch.arange(40) % 2
    x[y == 1] *= 0.2
    np.savez(
        tmp_path / "d.npz", images=x.numpy(), labels=np.array(["dark", "light"])[1 - y.numpy()]
    )
    r = st.train(
        "small_vgg",
        str(tmp_path / "d.npz"),
        strategy="head-only",
        size=8,
        epochs=1,
        progress=False,
        per_class=None,
        out=tmp_path / "run",
    )
    m = r.manifest
    # per class: 4 of 20 held out for test, then all 16 drawn: 3 for validation, 13 for training
    assert m.kind == "npz" and m.counts() == {"train": 26, "val": 6, "test": 8}
    assert not set(m.indices["test"]) & set(m.indices["train"] + m.indices["val"])
    assert r.config["class_names"] == ["dark", "light"]
    metrics = st.evaluate(tmp_path / "run")
    assert metrics["test_images"] == 8
    # another .npz whose labels are names: mapped by name, not by position
    np.savez(tmp_path / "t.npz", images=x[:4].numpy(), labels=np.array(["light"] * 4))
    by_name = st.evaluate(tmp_path / "run", str(tmp_path / "t.npz"), overwrite=True)
    assert by_name["confusion_matrix"][0] == [0, 0] and sum(by_name["confusion_matrix"][1]) == 4
    np.savez(tmp_path / "u.npz", images=x[:4].numpy(), labels=np.array(["light", "purple"] * 2))
    with pytest.raises(DataError, match="'purple', which the run was not trained on"):
        st.evaluate(tmp_path / "run", str(tmp_path / "u.npz"), overwrite=True)
    with pytest.raises(DataError, match="trained and validated on"):
        st.evaluate(tmp_path / "run", str(tmp_path / "d.npz"), overwrite=True)


def test_draw_splits_test_first_stratified_and_stable():
    y = torch.arange(100) % 4
    a = draw_splits(y, per_class=None, val_fraction=0.2, test_fraction=0.2, seed=3)
    b = draw_splits(y, per_class=5, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert torch.equal(a["test"], b["test"])  # the test split does not depend on per_class
    assert torch.bincount(y[a["test"]]).tolist() == [5, 5, 5, 5]
    assert len(a["train"]) + len(a["val"]) == 80 and len(b["train"]) + len(b["val"]) == 20
    for d in (a, b):
        sets = [set(d[k].tolist()) for k in ("train", "val", "test")]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    with pytest.raises(ConfigError, match="--test-fraction"):
        draw_splits(y, None, 0.2, 1.5)


@pytest.mark.filterwarnings("ignore:skipped 1 unreadable")
def test_manifest_records_files_and_sees_changes(photos: Path, tmp_path: Path):
    ds = st.data.image_folder(photos, on_error="skip")
    splits = draw_splits(ds.targets, None, 0.2, 0.2, seed=0)
    m = Manifest.record(ds, splits, str(photos), "skip")
    path = m.save(tmp_path / "manifest.json")
    back = Manifest.load(path)
    assert back.root == str(photos.resolve()) and back.on_error == "skip" and back.kind == "folder"
    assert len(back.images) == 30 and back.counts() == {k: len(v) for k, v in splits.items()}
    e = back.images[0]
    assert set(e) == {"path", "label", "size", "mtime", "split"}
    assert e["size"] == os.path.getsize(photos / e["path"]) and e["label"] in ("cat", "dog", "owl")
    assert back.changed() == []
    test_file = back.files("test")[0]["path"]
    os.utime(photos / test_file, (1, 1))
    (photos / back.files("train")[0]["path"]).unlink()
    assert sorted(back.changed()) == sorted([test_file, back.files("train")[0]["path"]])
    with pytest.raises(DataError, match="changed since the run started.*and 1 more"):
        back.check_unchanged("x", "y")
    tds, idx = back.dataset("test", size=16)
    assert len(idx) == len(splits["test"]) and tds.classes == ds.classes


def test_image_size_free_folder_with_warnings_silenced(photos: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from smart_transfer.data.spec import open_data

        ds = open_data(str(photos), on_error="skip", check=True)  # the summary says it, no warning
    assert ds.skipped == 1
