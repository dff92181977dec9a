"""A user's own photos through the CLI (``main([...])``): a folder of mixed sizes and odd files,
train, evaluate by manifest (also from another folder), the leaks it refuses, --device, --resume."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

import smart_transfer as st
from smart_transfer.cli import main

sys.path.insert(0, str(Path(__file__).parent / "data"))
from odd_photos import make_odd_folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The odd folder and a small_vgg run on it at --size 16 (--on-error skip)."""
    base = tmp_path_factory.mktemp("own")
    photos = base / "photos"
    make_odd_folder(photos)
    out = base / "run"
    rc = main(
        [
            "train",
            "--backbone",
            "small_vgg",
            "--data",
            str(photos),
            "--size",
            "16",
            "--epochs",
            "2",
            "--strategy",
            "head-only",
            "--lr",
            "0.05",
            "--on-error",
            "skip",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return photos, out


def test_raise_is_the_default_and_names_the_file_and_the_flag(tmp_path, capsys):
    photos = tmp_path / "photos"
    make_odd_folder(photos)
    args = [
        "train",
        "--backbone",
        "small_vgg",
        "--data",
        str(photos),
        "--size",
        "16",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "zebra has no images" in err
        and "--on-error skip" in err
        and len(err.strip().splitlines()) == 1
    )
    (photos / "zebra").rmdir()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "broken.jpg could not be decoded" in err and "--on-error skip" in err
    assert not (tmp_path / "r").exists()


def test_train_prints_the_summary_and_records_the_manifest(trained, capsys):
    photos, out = trained
    man = json.loads((out / "manifest.json").read_text())
    assert (
        man["schema_version"] == 1
        and man["root"] == str(photos.resolve())
        and man["on_error"] == "skip"
    )
    assert "size+mtime" in man["change_check"]
    on_disk = sorted(
        p.relative_to(photos).as_posix()
        for p in photos.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name != "broken.jpg"
    )
    assert (
        sorted(e["path"] for e in man["images"]) == on_disk
    )  # --per-class all: every readable image
    assert {e["split"] for e in man["images"]} == {"train", "val", "test"}
    assert man["counts"] == {"train": 18, "val": 6, "test": 6}  # 20% of each class held out first
    for e in man["images"][:5]:
        stat = os.stat(photos / e["path"])
        assert (e["size"], e["mtime"]) == (stat.st_size, stat.st_mtime)
        assert e["label"] == e["path"].split("/")[0]
    assert man["skipped"] == {"unreadable": ["dog/broken.jpg"], "empty folder": ["zebra"]}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["class_names"] == ["cat", "dog", "owl"] and cfg["geometry"]["size"] == [16, 16]


def test_evaluate_from_another_folder_tests_the_manifest_files(
    trained, tmp_path, monkeypatch, capsys
):
    photos, out = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    monkeypatch.chdir(tmp_path)  # elsewhere: the manifest's root is absolute
    capsys.readouterr()
    assert main(["evaluate", "run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("data: ") and "split: test 6" in printed
    man = json.loads((run / "manifest.json").read_text())
    test_files = [e["path"] for e in man["images"] if e["split"] == "test"]
    m = json.loads((run / "metrics.json").read_text())
    assert m["test_files"] == test_files and m["test_images"] == 6
    # the run's transform on each raw photo, one (1, C, H, W) batch at a time, gives the same answer
    r = st.TrainResult.load(run)
    tf = r.transform()
    ds = st.data.image_folder(photos, on_error="skip")
    r.model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for f in test_files:
            raw = ds.load(photos / f)
            preds.append(int(r.model(tf(raw[None])).argmax(1)))
            labels.append(r.config["class_names"].index(f.split("/")[0]))
    assert m["accuracy"] == pytest.approx(sum(p == y for p, y in zip(preds, labels)) / len(labels))


def test_a_new_image_does_not_leak_into_the_test(trained, tmp_path, capsys):
    photos, out = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    before = json.loads((run / "manifest.json").read_text())
    test_files = sorted(e["path"] for e in before["images"] if e["split"] == "test")
    extra = photos / "cat" / "zz_new.png"
    shutil.copyfile(photos / "cat" / "cat01.png", extra)
    try:
        assert main(["evaluate", str(run)]) == 0
        assert sorted(json.loads((run / "metrics.json").read_text())["test_files"]) == test_files
        # testing on the training folder itself would test training images: refused
        assert (
            main(
                [
                    "evaluate",
                    str(run),
                    "--test-data",
                    str(photos),
                    "--on-error",
                    "skip",
                    "--overwrite",
                ]
            )
            == 2
        )
        assert "used to train or validate" in capsys.readouterr().err
    finally:
        extra.unlink()


def test_a_changed_file_stops_evaluate_and_resume(trained, tmp_path, capsys):
    photos, out = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    man = json.loads((run / "manifest.json").read_text())
    victim = photos / next(e["path"] for e in man["images"] if e["split"] == "test")
    stat = os.stat(victim)
    try:
        os.utime(victim, (stat.st_atime, stat.st_mtime + 5))
        capsys.readouterr()
        assert main(["evaluate", str(run)]) == 2
        err = capsys.readouterr().err
        assert (
            "changed since the run started" in err and "--test-data" in err and victim.name in err
        )
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "cannot resume" in err and len(err.strip().splitlines()) == 1
    finally:
        os.utime(victim, (stat.st_atime, stat.st_mtime))
    assert not (run / "metrics.json").exists()


def test_test_data_with_other_class_names_is_refused(trained, tmp_path, capsys):
    photos, out = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    other = tmp_path / "other"
    for c, src in (("cat", "cat"), ("lion", "dog")):
        (other / c).mkdir(parents=True)
        for f in sorted((photos / src).glob("*.png"))[:2]:
            shutil.copyfile(f, other / c / f"x{f.name}")
    assert main(["evaluate", str(run), "--test-data", str(other)]) == 2
    assert "'lion', which the run was not trained on" in capsys.readouterr().err
    shutil.rmtree(other / "lion")
    (other / "owl").mkdir()
    for f in sorted((photos / "owl").glob("*.png"))[:2]:
        shutil.copyfile(f, other / "owl" / f"x{f.name}")
    assert (
        main(["evaluate", str(run), "--test-data", str(other)]) == 0
    )  # cat, owl: a subset, by name
    m = json.loads((run / "metrics.json").read_text())
    cm = torch.tensor(m["confusion_matrix"])
    assert cm.sum(1).tolist() == [2, 0, 2] and m["test_files"] == sorted(m["test_files"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_leaves_no_folder(trained, tmp_path, capsys):
    photos, out = trained
    args = [
        "train",
        "--backbone",
        "small_vgg",
        "--data",
        str(photos),
        "--size",
        "16",
        "--on-error",
        "skip",
        "--device",
        "cuda",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(args) == 2
    assert "no cuda device" in capsys.readouterr().err and not (tmp_path / "r").exists()
    for cmd in (
        ["evaluate", str(out), "--device", "cuda"],
        ["train", "--resume", str(out), "--device", "cuda"],
        ["advise", "--data", str(photos), "--device", "cuda"],
    ):
        assert main(cmd) == 2
        assert "no cuda device" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_efficientnet_lite0_at_32px_with_image_size_alias(trained, tmp_path, capsys):
    photos, _ = trained
    out = tmp_path / "eff"
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--backbone",
                "efficientnet_lite0",
                "--data",
                str(photos),
                "--image-size",
                "32",
                "--epochs",
                "1",
                "--strategy",
                "head-only",
                "--on-error",
                "skip",
                "--per-class",
                "6",
                "--test-fraction",
                "0.3",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cap = capsys.readouterr()
    assert cap.err.count("--image-size is deprecated") == 1
    assert (
        "split: train 15, val 3, test 9" in cap.out
    )  # 3 of 10 per class held out, then 6 per class drawn
    cfg = json.loads((out / "config.json").read_text())
    own = st.load_backbone(
        "efficientnet_lite0"
    ).pretrained_cfg  # the backbone's own evaluation geometry
    assert cfg["size"] == 32 and cfg["geometry"] == {
        "size": [32, 32],
        "crop_pct": own["crop_pct"],
        "interpolation": own.get("interpolation", "bilinear"),
    }
    assert own["crop_pct"] == 0.875
    assert main(["evaluate", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["test_images"] == 9


def test_resume_honours_device_and_plan_profile_read_the_folder(trained, tmp_path, capsys):
    photos, out = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--device", "cpu", "--no-progress"]) == 0
    assert "manifest.json of" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["device"] == "cpu"
    for cmd in (
        ["plan", "--out", str(tmp_path / "plan.json")],
        ["profile", "--out", str(tmp_path / "p.pt")],
    ):
        assert (
            main(
                [
                    *cmd,
                    "--backbone",
                    "small_vgg",
                    "--data",
                    str(photos),
                    "--size",
                    "16",
                    "--on-error",
                    "skip",
                    "--max-batches",
                    "1",
                    "--no-progress",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        printed = capsys.readouterr().out
        assert "cat 10, dog 10, owl 10" in printed and "1 unreadable (dog/broken.jpg)" in printed


def test_a_csv_of_paths_and_labels(trained, tmp_path, capsys):
    photos, _ = trained
    rows = [
        f"{p.relative_to(photos.parent).as_posix()},{p.parent.name}"
        for p in sorted(photos.rglob("*.png"))
    ]
    (photos.parent / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "c"
    assert (
        main(
            [
                "train",
                "--backbone",
                "small_vgg",
                "--data",
                str(photos.parent / "list.csv"),
                "--size",
                "16",
                "--epochs",
                "1",
                "--strategy",
                "head-only",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "csv" and man["root"] == str(photos.parent.resolve())
    assert sorted(e["path"] for e in man["images"]) == sorted(r.split(",")[0] for r in rows)
    assert main(["evaluate", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["test_files"] == [
        e["path"] for e in man["images"] if e["split"] == "test"
    ]


def test_train_on_every_image_and_test_on_a_separate_folder(trained, tmp_path, capsys):
    photos, _ = trained
    test_dir = tmp_path / "held"
    for c in ("cat", "dog", "owl"):
        (test_dir / c).mkdir(parents=True)
        for f in sorted((photos / c).glob("*.png"))[:2]:
            shutil.copyfile(f, test_dir / c / f"t{f.name}")
    out = tmp_path / "r"
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--backbone",
                "small_vgg",
                "--data",
                str(photos),
                "--per-class",
                "all",
                "--test-data",
                str(test_dir),
                "--size",
                "16",
                "--epochs",
                "1",
                "--strategy",
                "head-only",
                "--on-error",
                "skip",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "split: train 24, val 6, test 0 (test images: " in capsys.readouterr().out
    assert main(["evaluate", str(out)]) == 0  # the --test-data the run was trained with
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_images"] == 6 and m["test_files"] == sorted(
        p.relative_to(test_dir).as_posix() for p in test_dir.rglob("*.png")
    )
