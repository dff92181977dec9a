"""The practitioner's CLI through main([...]): train, resume, evaluate, advise, report, list."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import smart_transfer as st
from smart_transfer.cli import main

sys.path.insert(0, str(Path(__file__).parent / "strategies"))
from tiny_images import make_images


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    x, y = make_images(120)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=x.numpy(), labels=y.numpy())
    return path


def _train_args(npz, out, *extra):
    return [
        "train",
        "--backbone",
        "small_vgg",
        "--data",
        str(npz),
        "--per-class",
        "20",
        "--size",
        "16",
        "--epochs",
        "3",
        "--lr",
        "0.01",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def test_train_evaluate_report_advise(npz, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(_train_args(npz, out, "--strategy", "smart-kernel", "--option", 'bn_stats="update"'))
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["strategy"] == "smart-kernel" and cfg["options"] == {"bn_stats": "update"}
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "npz" and man["root"] == str(npz.resolve())
    # the test split (20% of each class) is held out first, then 20 per class for train + val
    assert {k: len(v) for k, v in man["indices"].items()} == {"train": 48, "val": 12, "test": 24}
    drawn = man["indices"]["train"] + man["indices"]["val"]
    assert not set(drawn) & set(man["indices"]["test"])
    assert (out / "plan.json").is_file() and (out / "model.safetensors").is_file()
    assert main(_train_args(npz, out)) == 2  # the folder already holds a run
    assert "--resume" in capsys.readouterr().err

    assert main(["evaluate", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_images"] == 24  # the held-out split of the manifest
    ds = st.data.arrays(str(npz))
    rest = torch.tensor(man["indices"]["test"])
    r = st.TrainResult.load(out)
    r.model.eval()
    with torch.no_grad():
        pred = r.model(r.transform()(ds.images[rest])).argmax(1)
    assert m["accuracy"] == pytest.approx(float((pred == ds.targets[rest]).double().mean()))
    assert main(["evaluate", str(out)]) == 2  # the test set is read once
    assert "read once" in capsys.readouterr().err

    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "<img" in html and "smart-kernel" in html

    assert (
        main(
            [
                "advise",
                "--backbone",
                "small_vgg",
                "--data",
                str(npz),
                "--size",
                "16",
                "--out",
                str(tmp_path / "advice.json"),
            ]
        )
        == 0
    )
    adv = json.loads((tmp_path / "advice.json").read_text())
    assert adv["strategy"] in st.list_strategies() and adv["quadrant"].startswith("small")
    assert "similarity curve" in capsys.readouterr().out


def test_ctrl_c_then_resume_ends_bit_identical(npz, tmp_path, monkeypatch, capsys):
    from smart_transfer.training import loop
    from smart_transfer.training.checkpoint import load_weights

    base = _train_args(npz, tmp_path / "full", "--strategy", "full-finetune", "--patience", "10")
    assert main(base) == 0
    real = loop._score
    calls = {"n": 0}

    def interrupt_after_two_epochs(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 0 (initial) and epochs 1, 2 were scored
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "_score", interrupt_after_two_epochs)
    out = tmp_path / "cut"
    assert main(_train_args(npz, out, "--strategy", "full-finetune", "--patience", "10")) == 130
    err = capsys.readouterr().err
    assert f"smart-transfer train --resume {out}" in err and "Traceback" not in err
    monkeypatch.setattr(loop, "_score", real)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    a, b = (
        load_weights(tmp_path / "full" / "model.safetensors"),
        load_weights(out / "model.safetensors"),
    )
    for k in a:
        assert torch.equal(a[k], b[k]), k
    from smart_transfer.training.checkpoint import WEIGHTS, latest

    la = load_weights(latest(tmp_path / "full" / "checkpoints/full-finetune") / WEIGHTS)
    lb = load_weights(latest(out / "checkpoints/full-finetune") / WEIGHTS)
    assert all(torch.equal(la[k], lb[k]) for k in la)
    assert len((out / "log.jsonl").read_text().splitlines()) == 3


def test_list_strategies_and_user_mistakes(capsys):
    assert main(["list", "strategies"]) == 0
    text = capsys.readouterr().out
    for name in st.list_strategies():
        assert name in text
    assert main(["train", "--data", "fashionmnist", "--out", "/tmp/never"]) == 2
    assert "fashion-mnist" in capsys.readouterr().err
    assert main(["train", "--resume", "/nonexistent/run"]) == 2
    assert main(["train", "--data", "x"]) == 2


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_like_one(npz, tmp_path):
    """`torchrun --nproc-per-node 2 -m smart_transfer.cli train` joins one gloo group: the two
    ranks share every batch and end with the weights of one process, and only rank 0 writes."""
    import os
    import subprocess

    from smart_transfer.training.checkpoint import load_weights

    args = _train_args(
        npz,
        tmp_path / "one",
        "--strategy",
        "head-only",
        "--optimizer",
        "sgd",
        "--batch-size",
        "16",
        "--device",
        "cpu",
    )
    torch.set_num_threads(1)
    assert main(args) == 0
    ddp = [a if a != str(tmp_path / "one") else str(tmp_path / "two") for a in args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "smart_transfer.cli",
        *ddp,
    ]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        done.stdout.count("head-only: validation accuracy") == 1
    )  # rank 0 reports, rank 1 is quiet
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["world_size"] == 2
    hist = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert len(hist) == 3  # three epochs of gradient descent, logged once
    single, two = (
        load_weights(tmp_path / "one" / "model.safetensors"),
        load_weights(tmp_path / "two" / "model.safetensors"),
    )
    assert set(two) == set(single)
    for k, v in single.items():
        torch.testing.assert_close(two[k], v, rtol=1e-5, atol=1e-5, msg=k)

    bad = [a if a != str(tmp_path / "two") else str(tmp_path / "three") for a in cmd] + [
        "--sync-bn"
    ]
    done = subprocess.run(
        bad, check=False, env=env, capture_output=True, text=True, timeout=600
    )  # SyncBatchNorm needs CUDA
    assert (
        done.returncode != 0
        and "sync_bn needs CUDA" in done.stderr
        and "internal error" not in done.stderr
    )
    assert not (tmp_path / "three" / "config.json").exists()


def test_steps_and_lr_grid_options(npz, tmp_path, capsys):
    out = tmp_path / "grid"
    args = [
        "train",
        "--backbone",
        "small_vgg",
        "--data",
        str(npz),
        "--per-class",
        "20",
        "--size",
        "16",
        "--strategy",
        "full-finetune",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--lr-grid",
        "0.01",
        "0.03",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["steps"] == 4
        and cfg["recipe"]["lr_grid"] == [0.01, 0.03]
        and cfg["recipe"]["eval_every"] == 2
    )
    res = json.loads((out / "result.json").read_text())
    rows = res["chosen"]["lr_grid"]
    assert [r["lr"] for r in rows] == [0.01, 0.03]
    assert res["chosen"]["lr"] == min(rows, key=lambda r: (r["val_loss"], -r["val_accuracy"]))["lr"]
    assert [h["step"] for h in res["history"]] == [2, 4]
    assert (
        main([*args[:-1], str(tmp_path / "both"), "--lr", "0.01"]) == 2
    )  # --lr and --lr-grid together
    assert (
        main([*args[:-1], str(tmp_path / "both"), "--epochs", "2"]) == 2
    )  # --steps and --epochs together
    assert "not allowed with" in capsys.readouterr().err
