"""Read a run directory: every file the report draws from, each one optional.

A run directory is what training and evaluation write (``config.json``, ``result.json``,
``plan.json``, ``profile_pre.pt`` / ``profile_new.pt``, ``log.jsonl``, ``metrics.json``,
``samples.safetensors``, ``test_samples.safetensors``, ``advice.json``,
``comparison.json``). The folder of a strategy comparison (``comparison.json`` naming its
``report_run``, no ``config.json``) reads as that run with the comparison's own
``comparison.json`` and ``advice.json``. :func:`load_run` reads what is there into a
:class:`RunData`; a missing file leaves its field ``None`` and the report says so in the section
that needed it. A file that is there but unreadable is a mistake worth stopping for: it raises
:class:`~smart_transfer.errors.DataError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from torch import Tensor

from ..errors import DataError, SmartTransferError
from ..spec import RunSpec

PathLike = Union[str, "os.PathLike[str]"]

# Every file the report knows about; a directory with none of them is not a run directory.
RUN_FILES = (
    "config.json",
    "result.json",
    "plan.json",
    "profile_pre.pt",
    "profile_new.pt",
    "log.jsonl",
    "metrics.json",
    "samples.safetensors",
    "test_samples.safetensors",
    "advice.json",
    "comparison.json",
)


@dataclass
class Samples:
    """A few images, raw as the dataset gives them: float32 ``(N, C, H, W)`` in [0, 1]."""

    images: Tensor
    labels: Tensor  # int64 (N,)
    predictions: Tensor | None = None  # int64 (N,): the model's class, where it was recorded


@dataclass
class RunData:
    """The contents of one run directory (``None`` where a file is absent)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None  # result.json: chosen, tried (auto's candidates), ...
    plan: Any = None  # FreezePlan
    profile_pre: Any = None  # ActivationProfile
    profile_new: Any = None  # ActivationProfile
    log: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] | None = None
    samples: Samples | None = None
    test_samples: Samples | None = None
    misclassified: Samples | None = None  # test images the model got wrong, with its predictions
    advice: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None
    notes: dict[str, str] = field(default_factory=dict)  # file name -> why it was not used
    moved: dict[str, Path] = field(default_factory=dict)  # file name -> where it was read instead

    def file(self, name: str) -> str:
        """The path a file of the run was read from (for messages naming a damaged file)."""
        return str(self.moved.get(name, self.path / name))

    @property
    def spec(self) -> RunSpec | None:
        """The run spec of config.json, typed (None: no config.json, or one that holds no spec
        this version reads; the report then shows what the other files say)."""
        if not self.config:
            return None
        try:
            return RunSpec.from_dict(self.config)
        except (SmartTransferError, TypeError, ValueError):
            return None

    def setting(self, name: str) -> Any:
        """A field of the run spec (``strategy``, ``options``, ``size``, ``source``...), typed when
        config.json holds a spec; None when config.json does not record it."""
        if name not in self.config:
            return None
        spec = self.spec
        return (
            getattr(spec, name) if spec is not None and hasattr(spec, name) else self.config[name]
        )

    @property
    def strategy(self) -> str:
        """The strategy the run was trained with ("?" when unknown)."""
        s = self.setting("strategy") or (self.result or {}).get("strategy")
        return s if isinstance(s, str) else "?"

    @property
    def effective_strategy(self) -> str:
        """For ``auto``, the candidate it kept; else the strategy itself."""
        chosen = (self.result or {}).get("chosen")
        if (
            self.strategy == "auto"
            and isinstance(chosen, dict)
            and isinstance(chosen.get("strategy"), str)
        ):
            return str(chosen["strategy"])
        return self.strategy

    @property
    def class_names(self) -> list[str]:
        """Class names from the config, else from metrics.json, else ``class 0``, ``class 1``..."""
        for src in (self.config, self.metrics or {}):
            names = src.get("class_names")
            if isinstance(names, list) and names:
                return [str(n) for n in names]
        n = self.config.get("num_classes")
        if not isinstance(n, int):
            cm = (self.metrics or {}).get("confusion_matrix")
            n = len(cm) if isinstance(cm, list) else 0
        return [f"class {i}" for i in range(n)]

    @property
    def measure(self) -> str:
        """The measure the run compared profiles with (config options, then the plan's meta)."""
        options = self.setting("options")
        if isinstance(options, dict) and isinstance(options.get("measure"), str):
            return str(options["measure"])
        if self.plan is not None and isinstance(self.plan.meta.get("measure"), str):
            return str(self.plan.meta["measure"])
        return "gaussian_kl"

    @property
    def source(self) -> str | None:
        """Where the D_pre statistics came from: ``"batchnorm"``, ``"data"`` or None."""
        src = self.setting("source")
        if isinstance(src, str):
            return src
        if self.profile_pre is not None:
            return str(self.profile_pre.source)
        return None


def load_run(run_dir: PathLike) -> RunData:
    """Read every report input found in ``run_dir``.

    Raises:
        DataError: ``run_dir`` is not a directory, holds none of the run files, or one of them
            is damaged.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise DataError(
            f"no run directory at {str(path)!r}; pass the folder that training wrote "
            "(the one holding config.json)"
        )
    if not (path / "config.json").is_file() and (path / "comparison.json").is_file():
        comparison = _json_object(path / "comparison.json") or {}
        sub = comparison.get("report_run")
        if isinstance(sub, str) and sub:
            return _comparison_run(path, sub, comparison)
    return _load_one(path)


def _comparison_run(path: Path, sub: str, comparison: dict[str, Any]) -> RunData:
    """The run a comparison folder's report shows, with the comparison's table and advice."""
    target = path / sub
    if path.resolve() not in target.resolve().parents or not target.is_dir():
        raise DataError(
            f"{str(path / 'comparison.json')!r} names report_run {sub!r}, which is not a run "
            "folder inside it; run the comparison again"
        )
    run = _load_one(target)
    run.comparison = comparison
    run.moved["comparison.json"] = path / "comparison.json"
    top = _json_object(path / "advice.json")
    if top is not None:
        run.advice = top
        run.moved["advice.json"] = path / "advice.json"
    return run


def _load_one(path: Path) -> RunData:
    if not any((path / name).is_file() for name in RUN_FILES):
        raise DataError(
            f"{str(path)!r} holds none of the files of a run ({', '.join(RUN_FILES[:4])}, ...); "
            "pass the folder that training wrote"
        )
    run = RunData(path=path)
    config = _json(path / "config.json")
    if config is not None:
        if not isinstance(config, dict):
            raise DataError(f"{str(path / 'config.json')!r} is not a JSON object; write it again")
        run.config = config
    run.result = _json_object(path / "result.json")
    run.metrics = _json_object(path / "metrics.json")
    run.advice = _json_object(path / "advice.json")
    run.comparison = _json_object(path / "comparison.json")
    run.log = _jsonl(path / "log.jsonl")
    run.samples = _samples(path / "samples.safetensors")
    run.test_samples = _samples(path / "test_samples.safetensors")
    run.misclassified = _samples(path / "test_samples.safetensors", prefix="misclassified_")
    if (path / "plan.json").is_file():
        from ..freeze import FreezePlan

        run.plan = _load(FreezePlan.load, path / "plan.json")
    for name in ("pre", "new"):
        file = path / f"profile_{name}.pt"
        if file.is_file():
            from ..stats import ActivationProfile

            setattr(run, f"profile_{name}", _load(ActivationProfile.load, file))
    return run


def _load(loader: Any, file: Path) -> Any:
    try:
        return loader(file)
    except SmartTransferError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{str(file)!r} could not be read ({type(e).__name__}: {e})") from e


def _json(file: Path) -> Any:
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{str(file)!r} is not valid JSON ({e}); write it again") from e


def _json_object(file: Path) -> dict[str, Any] | None:
    d = _json(file)
    if d is not None and not isinstance(d, dict):
        raise DataError(f"{str(file)!r} is not a JSON object; write it again")
    return d


def _jsonl(file: Path) -> list[dict[str, Any]] | None:
    if not file.is_file():
        return None
    rows: list[dict[str, Any]] = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{str(file)!r} could not be read ({e})") from e
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # a run interrupted while writing its last line
                break
            raise DataError(f"line {i + 1} of {str(file)!r} is not valid JSON ({e})") from e
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _samples(file: Path, prefix: str = "") -> Samples | None:
    """``images`` and ``labels`` (with ``prefix``: ``PREFIXimages``, ...) of a safetensors file;
    None when the file or (with a prefix) those tensors are absent."""
    if not file.is_file():
        return None
    try:
        from safetensors.torch import load_file
    except ImportError:  # a core dependency; without it the samples are skipped, not fatal
        return None
    try:
        d = load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise DataError(f"{str(file)!r} is not a readable safetensors file ({e})") from e
    images, labels = d.get(prefix + "images"), d.get(prefix + "labels")
    if (
        images is None
        and labels is None
        and (prefix or any(k.startswith("misclassified_") for k in d))
    ):
        return None
    if images is None or labels is None:
        raise DataError(f"{str(file)!r} needs the tensors '{prefix}images' and '{prefix}labels'")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or labels.dim() != 1 or labels.numel() != images.shape[0]:
        raise DataError(
            f"{str(file)!r} holds images of shape {tuple(images.shape)} and labels of shape "
            f"{tuple(labels.shape)}; expected (N, C, H, W) and (N,)"
        )
    pred = d.get(prefix + "predictions")
    if pred is not None and (pred.dim() != 1 or pred.numel() != labels.numel()):
        raise DataError(
            f"{str(file)!r} holds {pred.numel()} predictions for {labels.numel()} images"
        )
    return Samples(
        images=images.float().clamp(0, 1),
        labels=labels.long(),
        predictions=None if pred is None else pred.long(),
    )


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def confusion(run: RunData) -> np.ndarray:
    """The run's confusion matrix from metrics.json, checked: square, whole counts >= 0.

    Raises:
        DataError: naming metrics.json and what is wrong with it, when it is ragged, not
            square, not numeric or negative (the report then leaves the section out).
    """
    file = run.file("metrics.json")
    cm = (run.metrics or {}).get("confusion_matrix")
    fix = "evaluate the run again (smart-transfer evaluate RUN --overwrite)"
    if not isinstance(cm, list) or not cm or not all(isinstance(r, list) for r in cm):
        raise DataError(f"{file!r} holds no confusion_matrix as a list of rows; {fix}")
    k = len(cm)
    for i, row in enumerate(cm):
        if len(row) != k:
            raise DataError(
                f"{file!r}: row {i} of the confusion matrix has {len(row)} values, not {k} "
                f"(it must be square); {fix}"
            )
        for v in row:
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < 0
                or v != int(v)
            ):
                raise DataError(
                    f"{file!r}: the confusion matrix holds {v!r} in row {i}, not a count; {fix}"
                )
    return np.asarray(cm, dtype=np.int64)


def class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support of a confusion matrix (rows: true class).

    A class never predicted (precision) or never present (recall) scores 0, as scikit-learn's
    ``precision_recall_fscore_support(..., zero_division=0)`` does."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted, support = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def advice_curve(run: RunData) -> dict[str, float] | None:
    """Layer -> score of advice.json's similarity curve, checked; None when there is none.

    Raises:
        DataError: naming advice.json, when a point has no layer or a score that is not a number.
    """
    curve = (run.advice or {}).get("curve")
    if not isinstance(curve, list) or not curve:
        return None
    file = run.file("advice.json")
    out: dict[str, float] = {}
    for i, p in enumerate(curve):
        score = finite(p.get("score")) if isinstance(p, dict) else None
        if not isinstance(p, dict) or "layer" not in p or score is None:
            raise DataError(
                f"{file!r}: point {i} of the similarity curve is {p!r}, not a layer with a "
                "numeric score; run the advisor again (smart-transfer advise)"
            )
        out[str(p["layer"])] = score
    return out
