"""A run directory built by hand, in the format training and evaluation write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import smart_transfer as st
from smart_transfer.models.small import small_vgg

CLASSES = ["tee", "boot", "bag"]
SIZE = 16


def _images(n_per_class: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gray 20x20 images in [0, 1] (raw, before resizing), a blob per class at its own place."""
    gen = torch.Generator().manual_seed(seed)
    imgs, labels = [], []
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    for c in range(len(CLASSES)):
        for _ in range(n_per_class):
            cy, cx = 5 + 5 * c, 14 - 4 * c
            blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 12)
            noise = 0.2 * torch.rand(20, 20, generator=gen)
            imgs.append((blob + noise + shift).clamp(0, 1)[None])
            labels.append(c)
    return torch.stack(imgs), torch.tensor(labels, dtype=torch.int64)


def build_run(path: Path, source: str = "batchnorm") -> dict[str, Any]:
    """Write config, profiles, plan, log, metrics, samples, advice and comparison into ``path``."""
    torch.manual_seed(0)
    model = small_vgg(num_classes=len(CLASSES), widths=(6, 8))
    with torch.no_grad():  # pretend pretraining left non-trivial running statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.2, 2.0)
    model.eval()
    tf = st.data.transforms_for(model, train=False, size=SIZE)
    x_new, y_new = _images(4, seed=1)
    new = st.profile(model, [(tf(x_new), y_new)], progress=False)
    if source == "batchnorm":
        pre = st.profile_from_batchnorm(model)
    else:
        x_pre, _ = _images(4, seed=2, shift=0.3)
        pre = st.profile(model, [tf(x_pre)], progress=False)
    sim = st.compare(pre, new, measure="gaussian_kl")
    plan = st.plan_freeze(sim, quantile=0.5)
    path.mkdir(parents=True, exist_ok=True)
    pre.save(path / "profile_pre.pt")
    new.save(path / "profile_new.pt")
    plan.save(path / "plan.json")
    config = {
        "schema_version": 1,
        "strategy": "smart-kernel",
        "backbone": "small_vgg",
        "num_classes": len(CLASSES),
        "class_names": CLASSES,
        "size": SIZE,
        "seed": 0,
        "epochs": 4,
        "options": {"measure": "gaussian_kl", "quantile": 0.5},
        "source": source,
        "samples": 12,
        "unknown_key": {"ignored": True},
    }
    (path / "config.json").write_text(json.dumps(config))
    log = [
        {
            "epoch": e,
            "train_loss": 1.2 / e,
            "train_accuracy": 0.3 + 0.15 * e,
            "val_loss": 1.3 / e + 0.1,
            "val_accuracy": [0.35, 0.5, 0.65, 0.6][e - 1],
            "lr": 1e-3,
            "seconds": 0.5,
        }
        for e in range(1, 5)
    ]
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    cm = [[5, 1, 0], [2, 3, 1], [0, 0, 6]]
    metrics = {
        "schema_version": 1,
        "accuracy": 14 / 18,
        "per_class_accuracy": [5 / 6, 3 / 6, 6 / 6],
        "confusion_matrix": cm,
        "test_images": 18,
        "class_names": CLASSES,
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    x_val, y_val = _images(2, seed=3)
    save_file({"images": x_val.contiguous(), "labels": y_val}, str(path / "samples.safetensors"))
    x_test, y_test = _images(2, seed=4)
    wrong = torch.tensor([1, 4])  # two test images the model got wrong: tee -> boot, boot -> bag
    save_file(
        {
            "images": x_test.contiguous(),
            "labels": y_test,
            "misclassified_images": x_test[wrong].contiguous(),
            "misclassified_labels": y_test[wrong].contiguous(),
            "misclassified_predictions": torch.tensor([1, 2]),
        },
        str(path / "test_samples.safetensors"),
    )
    advice = {
        "strategy": "smart-kernel",
        "quadrant": "small data, similar",
        "similarity": 0.71,
        "layer": "features.3",
        "reasons": ["4 images per class is few", "early layers behave alike on both data sets"],
        "curve": [{"layer": n, "score": s} for n, s in sim.layer_scores.items()],
        "samples_per_class": 4.0,
    }
    (path / "advice.json").write_text(json.dumps(advice))
    comparison = {
        "rows": [
            {
                "strategy": "full-finetune",
                "val_accuracy": 0.6,
                "test_accuracy": 0.55,
                "frozen_fraction": 0.0,
                "seconds": 3.2,
            },
            {
                "strategy": "smart-kernel",
                "val_accuracy": 0.65,
                "test_accuracy": 0.62,
                "frozen_fraction": plan.frozen_fraction,
                "seconds": 2.9,
            },
        ],
        "note": "one seed",
    }
    (path / "comparison.json").write_text(json.dumps(comparison))
    return {
        "model": model,
        "sim": sim,
        "plan": plan,
        "pre": pre,
        "new": new,
        "metrics": metrics,
        "log": log,
        "config": config,
    }


@pytest.fixture
def make_run() -> Any:
    return build_run


@pytest.fixture(scope="session")
def run_bn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("run_bn")
    return path, build_run(path, "batchnorm")


@pytest.fixture(scope="session")
def report_bn(run_bn: tuple[Path, dict[str, Any]]) -> tuple[Path, dict[str, Any], Path]:
    from smart_transfer.report import make_report

    path, data = run_bn
    return path, data, make_report(path, model=data["model"])
