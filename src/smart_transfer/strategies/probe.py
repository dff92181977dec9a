"""Linear probes: logistic regression (scikit-learn) on frozen, pooled features.

Features are computed once per layer over the training and validation images with the
evaluation transform; ``C`` (inverse L2 strength) is chosen on validation. The fitted
standardisation and coefficients are folded into one ``nn.Linear``, so the probe is an
ordinary torch model: at the penultimate layer it becomes the backbone's own head; at another
layer a :class:`ProbeModel` (feature extractor + linear layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, MissingDependencyError
from ..models.heads import PENULTIMATE, FeatureExtractor, find_head, pool_features, replace_head
from ..training import channels_last_batch
from .base import Context, Outcome, check_options
from .selection import KeepBest

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


class ProbeModel(nn.Module):
    """Images -> pooled features at ``layer`` -> linear classifier ``head``."""

    def __init__(self, model: nn.Module, layer: str, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.features = FeatureExtractor(model, layer)
        self.head = nn.Linear(in_features, num_classes)
        cfg = getattr(model, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            self.pretrained_cfg = {**cfg, "num_classes": num_classes, "classifier": "head"}

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(x))  # TorchScript: no cast()
        return out

    def scriptable(self) -> nn.Module:
        """The same function without the feature extractor's hook and early-exit exception:
        the network traced with ``torch.fx`` and cut after ``layer``, for TorchScript and ONNX
        (see :func:`~smart_transfer.strategies.concat.graph_probe`); parameters are shared."""
        from .concat import graph_probe

        return graph_probe(self.features.model, [self.features.layer], self.head)


@torch.no_grad()
def layer_features(
    model: nn.Module, layers: Sequence[str], batches: Any, transform: Any
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pooled features of every layer in ``layers`` (one forward pass per batch) and labels.

    ``"penultimate"`` means the head's input."""
    model.eval()
    modules = dict(model.named_modules())
    _, head = find_head(model)
    store: dict[str, list[Tensor]] = {name: [] for name in layers}
    handles = []
    for name in layers:
        if name == PENULTIMATE:
            handles.append(
                head.register_forward_pre_hook(
                    lambda _m, args, n=name: store[n].append(pool_features(args[0]).double().cpu())
                )
            )
        else:
            if name not in modules:
                raise ConfigError(f"no layer {name!r}; see smart_transfer.list_layers(model)")
            handles.append(
                modules[name].register_forward_hook(
                    lambda m, _a, out, n=name: store[n].append(pool_features(out, m).double().cpu())
                )
            )
    labels = []
    device = next(model.parameters()).device
    try:
        for x, y in batches:
            model(channels_last_batch(transform(x.to(device))))
            labels.append(torch.as_tensor(y))
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v).numpy() for n, v in store.items()}, torch.cat(labels).numpy()


def _sklearn() -> tuple[Any, Any]:
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:
        raise MissingDependencyError(
            "linear probes need scikit-learn: pip install scikit-learn"
        ) from exc
    return LogisticRegression, StandardScaler


CLASSIFIERS = ("logistic", "svm")


def _classifier(c: float, kind: str = "logistic") -> Any:
    """Softmax (multinomial logistic regression) or seed 002's linear SVM (hinge loss,
    one-vs-rest); either folds into one nn.Linear whose argmax is the prediction."""
    from .option_values import RULES

    if not RULES["C"][0](c) or isinstance(c, (list, tuple)):  # scikit-learn would fail mid-run
        raise ConfigError(
            f"option C={c!r} must be a positive number, e.g. --option C=1.0 (Python: C=1.0)"
        )
    if kind == "svm":
        from sklearn.svm import LinearSVC

        return LinearSVC(C=c, loss="hinge", dual=True, max_iter=20000, tol=1e-5, random_state=0)
    if kind != "logistic":
        raise ConfigError(f"classifier must be 'logistic' or 'svm', got {kind!r}")
    LogisticRegression, _ = _sklearn()
    return LogisticRegression(C=c, max_iter=3000, tol=1e-6)


def _jobs(tasks: int) -> int:
    """Worker processes for independent scikit-learn fits: one per task, at most one per CPU."""
    import os

    return max(
        1,
        min(
            int(tasks),
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1,
        ),
    )


def _fit_one(c: float, ztr: np.ndarray, ytr: np.ndarray, kind: str = "logistic") -> Any:
    import warnings

    with warnings.catch_warnings():  # LinearSVC warns when it stops at max_iter
        warnings.simplefilter("ignore", category=UserWarning)
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", category=ConvergenceWarning)
        return _classifier(c, kind).fit(ztr, ytr)


def _fold(scaler: Any, clf: Any, k: int, width: int) -> nn.Linear:
    """Standardisation and fitted coefficients folded into one ``nn.Linear`` (raw features in)."""
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    w = np.zeros((k, width))
    b = np.full(k, -1e4)  # classes absent from training are never predicted
    coef, inter = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2 and coef.shape[0] == 1:  # binary: one row for class 1
        coef, inter = np.vstack([-coef / 2, coef / 2]), np.array([-inter[0] / 2, inter[0] / 2])
    for row, cls in enumerate(clf.classes_):
        w[int(cls)] = coef[row] / scale
        b[int(cls)] = inter[row] - float((coef[row] * scaler.mean_ / scale).sum())
    linear = nn.Linear(width, k)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
        linear.bias.copy_(torch.from_numpy(b))
    return linear


def fit_fixed(design: dict[str, Any], num_classes: int) -> nn.Linear:
    """Standardise and fit logistic regression with the design's one ``C`` on all of its samples
    (no selection): the refit of a chosen probe."""
    _, StandardScaler = _sklearn()
    x, y = design["x"], design["y"]
    scaler = StandardScaler().fit(x)
    clf = _fit_one(design["C"], scaler.transform(x), y, design.get("classifier", "logistic"))
    return _fold(scaler, clf, int(num_classes), x.shape[1])


def fit_logistic(
    xtr: np.ndarray,
    ytr: np.ndarray,
    xva: np.ndarray,
    yva: np.ndarray,
    c_grid: Sequence[float] = C_GRID,
    num_classes: int | None = None,
    refit: bool = False,
    classifier: str = "logistic",
) -> tuple[nn.Linear, float, float, list[dict[str, float]]]:
    """Standardise, fit multinomial logistic regression for every C, keep the best on validation.

    Returns ``(linear, C, val_accuracy, tried)``; ``linear`` maps raw features to logits
    (standardisation folded in), with one output per class ``0..num_classes-1``.
    ``refit=True``: once ``C`` is chosen, the returned layer is fitted again with it on the
    training and validation samples together (``val_accuracy`` stays that of the fit on the
    training samples alone, which chose ``C``)."""
    _, StandardScaler = _sklearn()
    k = int(num_classes if num_classes is not None else max(ytr.max(), yva.max()) + 1)
    scaler = StandardScaler().fit(xtr)
    ztr, zva = scaler.transform(xtr), scaler.transform(xva)
    from joblib import Parallel, delayed

    grid = [float(c) for c in c_grid]
    # the fits are independent and deterministic: fitted side by side, they are the same fits
    clfs = Parallel(n_jobs=_jobs(len(grid)))(
        delayed(_fit_one)(c, ztr, ytr, classifier) for c in grid
    )
    keep: KeepBest[tuple[float, Any]] = KeepBest(what="values of C")
    tried = []
    for c, clf in zip(grid, clfs):
        acc = float((clf.predict(zva) == yva).mean())
        tried.append({"C": float(c), "val_accuracy": acc})
        keep.offer((float(c), clf), acc)
    (c, clf), acc = keep.item, keep.accuracy
    if refit:
        return fit_fixed(cv_design(xtr, ytr, xva, yva, c, classifier), k), c, acc, tried
    return _fold(scaler, clf, k, xtr.shape[1]), c, acc, tried


def cv_design(
    xtr: np.ndarray,
    ytr: np.ndarray,
    xva: np.ndarray,
    yva: np.ndarray,
    c: float,
    classifier: str = "logistic",
) -> dict[str, Any]:
    """A chosen probe's features over every labelled sample (training then validation), its
    ``C`` and classifier: what its refit (:func:`fit_fixed`) and ``auto``'s cross-validation fit."""
    return {
        "x": np.vstack([xtr, xva]),
        "y": np.concatenate([ytr, yva]),
        "C": float(c),
        "classifier": classifier,
    }


def cv_accuracy(design: dict[str, Any], folds: int, seed: int) -> tuple[float, int]:
    """Stratified ``folds``-fold cross-validated accuracy of a probe's configuration (its
    features, standardisation and ``C``) over every labelled sample; ``(accuracy, folds used)``,
    folds capped at the smallest class count (``(nan, 0)`` when under 2). The accuracy is over
    every sample, each predicted by the fit that did not see it."""
    _, StandardScaler = _sklearn()
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    x, y = design["x"], design["y"]
    k = min(int(folds), int(np.unique(y, return_counts=True)[1].min(initial=len(y))))
    if k < 2:
        return float("nan"), 0
    split = StratifiedKFold(n_splits=k, shuffle=True, random_state=int(seed) % (2**32))
    pred = cross_val_predict(
        make_pipeline(
            StandardScaler(), _classifier(design["C"], design.get("classifier", "logistic"))
        ),
        x,
        y,
        cv=split,
        n_jobs=_jobs(k),
    )
    return float((pred == y).mean()), k


# (train features per layer, train labels, validation features per layer, validation labels)
# A context whose cache holds SHARE_FEATURES (set by ``auto`` when it will fit several probes)
# computes the features of every candidate layer on the first request, so that the probes
# share one pass over the training and validation images.
SHARE_FEATURES = "share-probe-features"
_Features = tuple[dict, np.ndarray, dict, np.ndarray]


def _features(ctx: Context, model: nn.Module, layers: Sequence[str]) -> _Features:
    key = ("features", tuple(layers))
    if key not in ctx.cache:
        # Features of the pretrained network: any cached superset of these layers holds them
        # (auto's probes ask for the same candidate layers, then for the penultimate one).
        for k, v in list(ctx.cache.items()):
            if len(k) == 2 and k[0] == "features" and set(layers) <= set(k[1]):
                ftr, ytr, fva, yva = v
                ctx.cache[key] = (
                    {n: ftr[n] for n in layers},
                    ytr,
                    {n: fva[n] for n in layers},
                    yva,
                )
                return cast(_Features, ctx.cache[key])
        wanted = list(layers)
        if ctx.cache.get(SHARE_FEATURES):  # auto: one pass serves every probe candidate
            wanted += [n for n in candidate_layers(model) if n not in wanted]
        ftr, ytr = layer_features(model, wanted, ctx.train_eval, ctx.eval_tf)
        fva, yva = layer_features(model, wanted, ctx.val, ctx.eval_tf)
        ctx.cache[("features", tuple(wanted))] = (ftr, ytr, fva, yva)
        ctx.cache[key] = ({n: ftr[n] for n in layers}, ytr, {n: fva[n] for n in layers}, yva)
    return cast(_Features, ctx.cache[key])


def probe_model(
    model: nn.Module, layer: str, linear: nn.Linear, num_classes: int
) -> tuple[nn.Module, dict]:
    """The fitted probe as a torch model (and how to rebuild it)."""
    if layer == PENULTIMATE:
        replace_head(model, num_classes)
        _, head = find_head(model)
        with torch.no_grad():
            head.weight.copy_(linear.weight.to(head.weight))  # type: ignore[operator, arg-type]
            head.bias.copy_(linear.bias.to(head.bias))  # type: ignore[operator, arg-type]
        return model, {"kind": "backbone"}
    pm = ProbeModel(model, layer, linear.in_features, num_classes).to(linear.weight.device)
    pm.head.load_state_dict(linear.state_dict())
    return pm, {"kind": "probe", "layer": layer, "in_features": linear.in_features}


def run_linear_probe(
    ctx: Context,
    layer: str = PENULTIMATE,
    C: Sequence[float] | float = C_GRID,
    refit: bool = True,
    classifier: str = "logistic",
) -> Outcome:
    """Logistic regression (or, ``classifier="svm"``, a linear SVM) on the pooled features of one
    layer (the head's input by default); ``refit``: once ``C`` is chosen, fitted again on the
    training and validation samples."""
    grid = [C] if isinstance(C, (int, float)) else list(C)
    _classifier(1.0, classifier)  # an unknown classifier is named before any work
    model = ctx.fresh_model("linear-probe")
    ftr, ytr, fva, yva = _features(ctx, model, [layer])
    linear, c, acc, tried = fit_logistic(
        ftr[layer], ytr, fva[layer], yva, grid, ctx.num_classes, classifier=classifier
    )
    design = cv_design(ftr[layer], ytr, fva[layer], yva, c, classifier)
    if refit:
        linear = fit_fixed(design, ctx.num_classes)
    model, kind = probe_model(model, layer, linear.to(ctx.device), ctx.num_classes)
    return Outcome(
        model=model,
        val_accuracy=acc,
        chosen={"layer": layer, "C": c, "refit": bool(refit), "classifier": classifier},
        tried=tried,
        model_kind=kind,
        extra={"head_only": True, "probe_design": design},
    )


def candidate_layers(model: nn.Module, n: int = 8) -> list[str]:
    """``n`` conv/linear layers evenly spaced from the input to the output, then the head's
    input."""
    from ..layers import select_layers

    head_name, _ = find_head(model)
    names = [m for m in select_layers(model) if m != head_name]
    if len(names) > n:
        picks = np.linspace(0, len(names) - 1, n).round().astype(int)
        names = [names[i] for i in sorted(set(picks.tolist()))]
    return names + [PENULTIMATE]


def run_best_layer(
    ctx: Context,
    layers: Sequence[str] | None = None,
    concat: int = 1,
    C: Sequence[float] | float = C_GRID,
    refit: bool = True,
    classifier: str = "logistic",
) -> Outcome:
    """A probe on every candidate layer; the layer (or the ``concat`` best layers' features
    side by side) chosen on validation; ``refit``: the chosen probe fitted again on the
    training and validation samples."""
    if not isinstance(concat, int) or concat < 1:
        raise ConfigError(f"concat must be a positive integer, got {concat!r}")
    grid = [C] if isinstance(C, (int, float)) else list(C)
    _classifier(1.0, classifier)
    model = ctx.fresh_model("linear-probe-best-layer")
    cands = list(layers) if layers else candidate_layers(model)
    ftr, ytr, fva, yva = _features(ctx, model, cands)
    tried, fits = [], {}
    for name in cands:
        linear, c, acc, _ = fit_logistic(
            ftr[name], ytr, fva[name], yva, grid, ctx.num_classes, classifier=classifier
        )
        tried.append({"layer": name, "C": c, "val_accuracy": acc})
        fits[name] = (acc, linear, c)
    order = sorted(cands, key=lambda n: (-fits[n][0], -cands.index(n)))  # ties: the deeper layer
    best = order[0]
    if concat > 1 and len(cands) > 1:
        top = order[:concat]
        xtr, xva = np.hstack([ftr[n] for n in top]), np.hstack([fva[n] for n in top])
        linear, c, acc, _ = fit_logistic(
            xtr, ytr, xva, yva, grid, ctx.num_classes, classifier=classifier
        )
        tried.append({"layer": "+".join(top), "C": c, "val_accuracy": acc})
        if acc > fits[best][0]:
            from .concat import ConcatProbe

            design = cv_design(xtr, ytr, xva, yva, c, classifier)
            if refit:
                linear = fit_fixed(design, ctx.num_classes)
            pm = ConcatProbe(model, top, linear, ctx.num_classes).to(ctx.device)
            return Outcome(
                model=pm,
                val_accuracy=acc,
                chosen={"layer": top, "C": c, "refit": bool(refit)},
                tried=tried,
                model_kind={"kind": "concat", "layers": top, "in_features": linear.in_features},
                extra={"head_only": True, "probe_design": design},
            )
    acc, linear, c = fits[best]
    design = cv_design(ftr[best], ytr, fva[best], yva, c, classifier)
    if refit:
        linear = fit_fixed(design, ctx.num_classes)
    out_model, kind = probe_model(model, best, linear.to(ctx.device), ctx.num_classes)
    return Outcome(
        model=out_model,
        val_accuracy=acc,
        chosen={"layer": best, "C": c, "refit": bool(refit)},
        tried=tried,
        model_kind=kind,
        extra={"head_only": True, "probe_design": design},
    )


def check_probe_options(name: str, options: dict[str, Any]) -> None:
    known = {
        "linear-probe": {"layer", "C", "refit", "classifier"},
        "linear-probe-best-layer": {"layers", "concat", "C", "refit", "classifier"},
    }
    check_options(name, options, known[name])
