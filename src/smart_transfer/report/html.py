"""``make_report``: one self-contained HTML page about one training run.

The page is a pure function of the run directory (and, for the model-based sections, the
trained model): it reads the files with :func:`~smart_transfer.report.run.load_run`, draws
each figure with :mod:`smart_transfer.report.plots` on a matplotlib ``Figure`` (no pyplot, no
global backend), embeds it as a base64 PNG and also writes it to ``figures/NAME.png`` beside
the page. A section whose inputs are missing is kept, with one sentence saying what it needs;
a section that does not apply to the run's strategy (the kernel distributions of a linear
probe, auto's candidates for any other strategy) is left out, and one line under the run's
table names what was left out and why.
"""

from __future__ import annotations

import base64
import html
import importlib
import io
import json
import os
import secrets
import shutil
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import nn

from .._atomic import atomic_open, disk_errors
from .._paths import check_outputs
from ..errors import (
    ConfigError,
    DataError,
    MissingDependencyError,
    SmartTransferError,
    StorageError,
)
from . import maps as mapsmod, plots
from .run import RunData, Samples, advice_curve, class_scores, confusion, finite, load_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..measures import Similarity

PathLike = Union[str, "os.PathLike[str]"]

DPI = 100
# (section id, title), in page order; a report has those that apply to its run's strategy.
SECTIONS = (
    ("run", "Run"),
    ("selection", "Strategy chosen by auto"),
    ("similarity", "Layer-wise similarity"),
    ("histograms", "Kernel distributions: D_pre and D_new"),
    ("activations", "Activation maps of the most and least similar kernels"),
    ("grad-cam", "Grad-CAM on test images"),
    ("frozen", "Frozen fraction per layer"),
    ("samples", "Sample images per class"),
    ("training", "Training curves"),
    ("confusion", "Confusion matrix and per-class scores"),
    ("misclassified", "Misclassified test images"),
    ("comparison", "Strategy comparison and advice"),
)
TITLES = dict(SECTIONS)
MAX_MISCLASSIFIED = 12  # images in the gallery, in rows of MAX_IMAGES
MAX_IMAGES = 6  # images per row in the activation-map and Grad-CAM figures
SOURCE_TEXT = {
    "batchnorm": "BatchNorm running statistics of the pretrained network (no source images)",
    "data": "source images",
}


def make_report(
    run_dir: PathLike,
    model: nn.Module | None = None,
    out: PathLike | None = None,
    option: str = "out",
) -> Path:
    """Write the HTML report of the run in ``run_dir`` and return its path.

    Args:
        run_dir: a folder written by training / evaluation (``config.json``, ``plan.json``,
            ``profile_pre.pt``, ``profile_new.pt``, ``log.jsonl``, ``metrics.json``,
            ``samples.safetensors``, ``test_samples.safetensors``, ``advice.json``,
            ``comparison.json``; each optional).
        model: the trained network, for the activation maps and Grad-CAM. ``None`` loads it
            from ``run_dir`` when the run saved it; otherwise those sections say so.
        out: the HTML file to write (default ``run_dir/report.html``). Its figures also go
            to ``figures/`` beside it as PNG files. ``out`` may not be a file of the run (its
            weights, profiles, JSON files) nor lie inside the run's data folder, and a
            ``figures/`` folder beside it must be one a report wrote (it holds the marker
            ``.smart-transfer-figures``, or it lies in a run folder); a user's folder of that
            name is never written into. The figures are written into a temporary folder that
            replaces ``figures/`` only when the page is written, and is removed on any error.
        option: how to name ``out`` in error messages (the CLI passes ``"--out"``).

    Raises:
        DataError: ``run_dir`` is not a run directory or one of its files is damaged.
        MissingDependencyError: matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            "the report needs matplotlib; install it with pip install matplotlib"
        ) from e
    run = load_run(run_dir)
    out_path = Path(out) if out is not None else run.path / "report.html"
    check_outputs({option: out_path}, _report_inputs(run), own=("report.html", "figures"))
    figures = _Figures.open(out_path.parent / "figures", option)
    try:
        _write_page(run, model, out_path, figures)
    except BaseException:
        figures.discard()
        raise
    figures.commit()
    return out_path


def _report_inputs(run: RunData) -> dict[str, Any]:
    """What the report reads (the run's files) and the data folders it must stay out of."""
    from .._paths import RUN_FILES as ALL_RUN_FILES

    inputs: dict[str, Any] = {
        f"run ({name})": run.path / name
        for name in sorted(ALL_RUN_FILES)
        if name not in ("report.html", "figures") and (run.path / name).is_file()
    }
    data: dict[str, Any] = run.config["data"] if isinstance(run.config.get("data"), dict) else {}
    for key in ("spec", "root", "test_spec"):
        value = data.get(key)
        if isinstance(value, str) and value and Path(value).expanduser().is_dir():
            inputs[f"the run's data ({value})"] = Path(value).expanduser()
    manifest = run.path / "manifest.json"
    if manifest.is_file():
        try:
            root = json.loads(manifest.read_text(encoding="utf-8")).get("root")
        except (ValueError, OSError, AttributeError):
            root = None
        if isinstance(root, str) and Path(root).is_dir():
            inputs[f"the run's data ({root})"] = Path(root)
    return inputs


def _write_page(run: RunData, model: nn.Module | None, out_path: Path, figures: _Figures) -> None:
    ctx = _Context(run=run, figures=figures)
    if model is not None:
        ctx.model = model
    else:
        ctx.model, ctx.model_note = _load_model(run.path)
    builders: dict[str, Callable[[_Context], str]] = {
        "run": _run_section,
        "selection": _selection_section,
        "similarity": _similarity_section,
        "histograms": _histogram_section,
        "activations": _activation_section,
        "grad-cam": _grad_cam_section,
        "frozen": _frozen_section,
        "samples": _samples_section,
        "training": _training_section,
        "confusion": _confusion_section,
        "misclassified": _misclassified_section,
        "comparison": _comparison_section,
    }
    left_out = not_applicable(run)
    parts = []
    order = list(SECTIONS)
    if "comparison.json" in run.moved:  # a comparison's page: its table right after the run
        order.remove(("comparison", TITLES["comparison"]))
        order.insert(1, ("comparison", TITLES["comparison"]))
    for sid, title in order:
        if sid in left_out:
            continue
        try:
            body = builders[sid](ctx)
        except StorageError:  # a figure could not be written: the whole report fails
            raise
        except SmartTransferError as e:  # a user-facing problem with this section's inputs
            body = _note(f"not drawn: {e}")
        if sid == "run" and left_out:
            body += _left_out_line(run, left_out)
        parts.append(f'<section id="{sid}">\n<h2>{_e(title)}</h2>\n{body}\n</section>')
    title = f"smart-transfer report: {run.setting('strategy') or run.path.name}"
    if "comparison.json" in run.moved:
        rows = (run.comparison or {}).get("rows")
        n = len(rows) if isinstance(rows, list) else "several"
        title = f"smart-transfer: {n} strategies compared (the run shown: {run.strategy})"
    page = _PAGE.format(title=_e(title), body="\n".join(parts), css=_CSS)
    with atomic_open(out_path, "w", encoding="utf-8") as f:
        f.write(page)


# ---------------------------------------------------------------------------------- plumbing


@dataclass
class _Context:
    run: RunData
    figures: _Figures
    model: nn.Module | None = None
    model_note: str = ""
    _sim: Any = None
    _sim_done: bool = False
    sim_note: str = ""

    def similarity(self) -> Similarity | None:
        """The run's Similarity, from its two profiles (computed once)."""
        if not self._sim_done:
            self._sim_done = True
            self._sim, self.sim_note = _compare(self.run)
        return self._sim  # type: ignore[no-any-return]


FIGURES_MARKER = ".smart-transfer-figures"


@dataclass
class _Figures:
    """The PNG files of one report: written into a temporary folder (``staging``) beside
    ``target``, which replaces ``target`` in :meth:`commit` and is removed in :meth:`discard`."""

    folder: Path
    written: list[Path] = field(default_factory=list)
    target: Path | None = None
    created: Path | None = None  # the page's folder, when this report created it

    @classmethod
    def open(cls, target: Path, option: str = "out") -> _Figures:
        """Check that ``target`` may be replaced, and stage the figures beside it."""
        from .._paths import is_run_folder

        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise ConfigError(
                f"{option}: the report's figures go to {str(target)!r}, which is not a folder "
                f"the report wrote; move it away or write the report into another folder"
            )
        if (
            target.is_dir()
            and any(target.iterdir())
            and not (target / FIGURES_MARKER).is_file()
            and not is_run_folder(target.parent)
        ):
            raise ConfigError(
                f"{option}: the report's figures go to {str(target)!r}, which holds files the "
                f"report did not write; write the report into another folder, or move that "
                f"folder away"
            )
        staging = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        created = None if target.parent.exists() else target.parent
        with disk_errors(staging):
            staging.mkdir(parents=True)
            (staging / FIGURES_MARKER).write_text(
                "written by smart-transfer report\n", encoding="utf-8"
            )
        return cls(folder=staging, target=target, created=created)

    def commit(self) -> None:
        """Put the staged figures in place of ``target`` (its old figures are removed)."""
        if self.target is None:
            return
        if not self.written:  # a page without figures: no folder
            self.discard()
            return
        old = self.target.parent / f".{self.target.name}.{secrets.token_hex(6)}.old"
        try:
            if self.target.exists():
                os.rename(self.target, old)
            os.rename(self.folder, self.target)
        except BaseException:
            if old.exists() and not self.target.exists():
                os.rename(old, self.target)
            self.discard()
            raise
        shutil.rmtree(old, ignore_errors=True)
        self.written = [self.target / p.name for p in self.written]

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.created is not None and not (self.target is not None and self.target.exists()):
            try:  # a failed report leaves no folder it made (only when nothing else is in it)
                self.created.rmdir()
            except OSError:
                pass

    def new(self, width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Figure, Any]:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        return fig, axes

    def html(self, fig: Figure, name: str, caption: str) -> str:
        """Save ``fig`` as ``figures/NAME.png`` and return the ``<figure>`` that embeds it."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        data = buf.getvalue()
        path = self.folder / f"{name}.png"
        with atomic_open(path, "wb") as f:
            f.write(data)
        self.written.append(path)
        width, height = png_size(data)
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return (
            f'<figure><img src="{src}" width="{width}" height="{height}" alt="{_e(name)}" '
            f'data-file="figures/{_e(name)}.png">\n<figcaption>{caption}</figcaption></figure>'
        )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: Any) -> str:
    v = finite(x)
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _load_model(run_dir: Path) -> tuple[nn.Module | None, str]:
    try:
        train_result = importlib.import_module("smart_transfer.api").TrainResult
    except (ImportError, AttributeError):
        return None, "no trained model was given and this installation cannot load one from the run"
    try:
        return train_result.load(run_dir).model, ""
    except Exception as e:  # noqa: BLE001  (the page is still useful without the model)
        return None, f"no trained model could be loaded from the run ({type(e).__name__}: {e})"


def _compare(run: RunData) -> tuple[Similarity | None, str]:
    if run.profile_pre is None or run.profile_new is None:
        return None, ""
    from ..measures import compare

    measure = run.measure
    try:
        return compare(run.profile_pre, run.profile_new, measure=measure), ""
    except SmartTransferError as e:
        if measure == "gaussian_kl":
            raise
        sim = compare(run.profile_pre, run.profile_new, measure="gaussian_kl")
        return (
            sim,
            f"the run's measure {measure!r} cannot compare these profiles ({e}); shown with "
            "gaussian_kl",
        )


def _no_model(ctx: _Context) -> str:
    return _note(ctx.model_note or "no trained model was given") + _note(
        "pass the model: make_report(run_dir, model=model)"
    )


def _few_images(s: Samples, k: int = MAX_IMAGES) -> Samples:
    """``k`` of the images: the first of each class, then the rest in order."""
    order: list[int] = []
    labels = s.labels.tolist()
    for c in sorted(set(labels)):  # first image of each class, then the rest
        order.append(labels.index(c))
    order += [i for i in range(len(labels)) if i not in order]
    idx = torch.tensor(order[:k], dtype=torch.long)
    return Samples(images=s.images[idx], labels=s.labels[idx])


def _class_name(run: RunData, c: int) -> str:
    names = run.class_names
    return names[c] if 0 <= c < len(names) else str(c)


def _transform(run: RunData, model: nn.Module) -> Any:
    from ..data import transforms_for

    size = run.setting("size")
    return transforms_for(model, train=False, size=size if isinstance(size, int) else None)


def _compares(name: str) -> bool | None:
    """Whether strategy ``name`` compares activation distributions (None: not a known name)."""
    from ..strategies import get_strategy

    try:
        return get_strategy(name).needs != "nothing"
    except SmartTransferError:
        return None


def not_applicable(run: RunData) -> dict[str, str]:
    """Section id -> why it does not apply to the run's strategy; those sections are left out.

    A section that applies but lacks its input stays, with a note: a smart-kernel run without
    its profiles is missing something, a linear probe's is not."""
    out: dict[str, str] = {}
    kept = run.effective_strategy
    if run.strategy != "auto":
        out["selection"] = "only auto chooses among candidates"
    if run.comparison is None and run.advice is None:
        out["comparison"] = "no other strategy was compared and the advisor was not run"
    has_profiles = run.profile_pre is not None or run.profile_new is not None
    control = kept.startswith("random-")  # a control draws channels at random, by others' counts
    if (_compares(kept) is False or control) and not has_profiles:
        why = (
            f"{kept} draws its channels at random and compares no distributions itself"
            if control
            else f"{kept} compares no activation distributions"
        )
        out["histograms"] = out["activations"] = why
        if not (run.advice or {}).get("curve"):
            out["similarity"] = why
        if run.plan is None:
            out["frozen"] = f"{kept} freezes no kernels by plan"
    if not run.log and _compares(kept) is not None and "probe" in kept:
        out["training"] = f"{kept} is fitted in closed form, without epochs"
    return out


def _left_out_line(run: RunData, left_out: dict[str, str]) -> str:
    """One line naming the sections left out, grouped by reason."""
    by_reason: dict[str, list[str]] = {}
    for sid, _ in SECTIONS:
        if sid in left_out:
            by_reason.setdefault(left_out[sid], []).append(TITLES[sid])
    parts = [f"{', '.join(titles)} ({reason})" for reason, titles in by_reason.items()]
    return f'<p class="left-out">Not shown for {_e(run.strategy)}: {_e("; ".join(parts))}.</p>'


# ---------------------------------------------------------------------------------- sections


def _run_section(ctx: _Context) -> str:
    run, cfg = ctx.run, ctx.run.config
    if not cfg:
        return _note("no config.json in the run directory: strategy and backbone unknown")
    m = run.metrics or {}
    source = run.source
    if source is None:
        source_text = "none (this strategy compares no distributions)"
    else:
        source_text = SOURCE_TEXT.get(source, source)
        if source == "data" and run.profile_pre is not None:
            source_text += f" ({run.profile_pre.num_samples} images)"
    test = finite(m.get("accuracy"))
    test_text = "not evaluated (no metrics.json)"
    if test is not None:
        test_text = f"{100 * test:.2f}%" + (
            f" on {m['test_images']} test images" if isinstance(m.get("test_images"), int) else ""
        )
    rows: list[tuple[str, Any]] = [
        ("strategy", run.strategy),
        ("backbone", run.setting("backbone") or "?"),
        ("training samples", cfg.get("samples", "?")),
        ("classes", f"{len(run.class_names)}: {', '.join(run.class_names)}"),
        ("image size", run.setting("size") if "size" in cfg else "?"),
        ("D_pre source", source_text),
        ("test accuracy", test_text),
    ]
    if run.log:
        val = [finite(r.get("val_accuracy")) for r in run.log]
        best = max((v for v in val if v is not None), default=None)
        if best is not None:
            rows.append(
                ("best validation accuracy", f"{100 * best:.2f}% in {len(run.log)} validations")
            )
    if run.plan is not None:
        rows.append(("frozen parameters", _pct(run.plan.frozen_fraction)))
    given = cfg.get("recipe")
    recipe: dict[str, Any] = given if isinstance(given, dict) else {}
    for key in ("steps", "epochs", "lr"):  # the budget and rate asked for (None: not given)
        value = recipe.get(key, cfg.get(key))
        if value is not None:
            rows.append((key, value))
    if "seed" in cfg:
        rows.append(("seed", cfg["seed"]))
    options = run.setting("options")
    out = _table(["", ""], rows)
    if isinstance(options, dict) and options:
        out += "<p>options: <code>" + _e(json.dumps(options, sort_keys=True)) + "</code></p>"
    return out


def _selection_section(ctx: _Context) -> str:
    """auto: every candidate with its validation (and cross-validation) accuracy, the one kept."""
    res = ctx.run.result
    if res is None:
        return _note("no result.json: the candidates auto tried are unknown")
    chosen: dict[str, Any] = res["chosen"] if isinstance(res.get("chosen"), dict) else {}
    kept = str(chosen.get("strategy", "?"))
    sel: dict[str, Any] = chosen["selection"] if isinstance(chosen.get("selection"), dict) else {}
    tried = [t for t in res.get("tried") or [] if isinstance(t, dict)]
    rows = []
    for t in tried:
        name = str(t.get("strategy", "?"))
        cv = finite(t.get("cv_accuracy"))
        cv_text = (
            "-"
            if cv is None
            else f"{100 * cv:.1f}% ({t.get('cv_folds')} folds, {t.get('cv_images')} images)"
        )
        secs = finite(t.get("seconds"))
        loss = finite(t.get("val_loss"))
        status = "kept" if name == kept else f"skipped: {t['skipped']}" if "skipped" in t else ""
        rows.append(
            (
                name,
                _pct(t.get("val_accuracy")) if "val_accuracy" in t else "-",
                "-" if loss is None else f"{loss:.3f}",
                cv_text,
                "-" if secs is None else f"{secs:.1f}",
                status,
            )
        )
    out = f"<p>auto kept <strong>{_e(kept)}</strong>{_e(_rule_text(sel))}</p>"
    out += (
        _table(
            ["candidate", "val accuracy", "val loss", "cross-validation accuracy", "seconds", ""],
            rows,
        )
        if rows
        else _note("result.json lists no candidates")
    )
    if ctx.run.log:
        out += f"<p>The training curves below are those of {_e(kept)}, the candidate kept.</p>"
    else:
        out += f"<p>{_e(kept)} is fitted in closed form: it has no training curves.</p>"
    return out


def _rule_text(sel: dict[str, Any]) -> str:
    n = sel.get("val_images")
    if sel.get("rule") == "one-se":
        se = finite(sel.get("standard_error"))
        # runs from before "prefer" was recorded kept the simplest (the default then)
        which = "advisor's earliest" if sel.get("prefer") == "advice" else "simplest"
        text = (
            f": the {which} candidate within one standard error"
            + ("" if se is None else f" ({100 * se:.1f} points)")
            + f" of the best validation accuracy on {n} images"
        )
    elif sel.get("rule") == "best":
        text = f": the best validation accuracy on {n} images"
    else:
        text = ""
    if text and sel.get("tie") == "loss":
        text += (
            " (when that one is trained, the trained one among them with the lowest "
            "validation loss)"
        )
    cv = sel.get("cv")
    if isinstance(cv, dict):
        text += (
            f"; the probes were first compared by {cv.get('folds')}-fold cross-validation on "
            f"{cv.get('images')} images, which kept {cv.get('kept')}"
        )
    return text + "."


def _similarity_section(ctx: _Context) -> str:
    sim = ctx.similarity()
    run = ctx.run
    if sim is None:
        scores = advice_curve(run)
        if scores:
            fig, axes = ctx.figures.new(10, 4.2)
            plots.similarity_curve(scores, ax=axes[0][0], title="layer-wise similarity (advisor)")
            return ctx.figures.html(
                fig, "similarity_curve", "Layer similarity from advice.json (no saved profiles)."
            )
        return _note("no profiles (profile_pre.pt and profile_new.pt): nothing was compared")
    fig, axes = ctx.figures.new(10, 4.2)
    plots.similarity_curve(sim, ax=axes[0][0])
    text = ""
    if ctx.sim_note:
        text += _note(ctx.sim_note)
    caption = (
        f"Mean kernel similarity of each layer under {_e(sim.measure)} "
        f"(1 = same distribution on D_pre and D_new), D_pre from "
        f"{_e(SOURCE_TEXT.get(sim.source, sim.source))}."
    )
    return text + ctx.figures.html(fig, "similarity_curve", caption)


def _chosen_layers(ctx: _Context, sim: Similarity) -> list[str]:
    new = ctx.run.profile_new
    names = [n for n in sim.layers() if n in new.layers]
    conv = [n for n in names if new.layers[n].kind == "conv"]
    return mapsmod.pick_layers(conv or names, 3)


def _extremes(ctx: _Context, sim: Similarity, layer: str) -> tuple[int, int]:
    pre, new = ctx.run.profile_pre.layers[layer], ctx.run.profile_new.layers[layer]
    return mapsmod.extreme_kernels(sim.scores[layer], pre.var, new.var)


def _histogram_section(ctx: _Context) -> str:
    sim = ctx.similarity()
    if sim is None:
        return _note("no profiles (profile_pre.pt and profile_new.pt): no kernel distributions")
    run = ctx.run
    layers = _chosen_layers(ctx, sim)
    fig, axes = ctx.figures.new(10, 2.9 * len(layers), rows=len(layers), cols=2)
    for i, layer in enumerate(layers):
        most, least = _extremes(ctx, sim, layer)
        for j, c in enumerate((most, least)):
            plots.kernel_histogram(
                run.profile_pre.layers[layer],
                run.profile_new.layers[layer],
                c,
                ax=axes[i][j],
                score=float(sim.scores[layer][c]),
            )
    how = (
        "the source is drawn as the Gaussian N(mean, var) of the BatchNorm running statistics"
        if run.profile_pre.source == "batchnorm"
        else "both as histograms of the profiled activations"
    )
    caption = (
        f"Left: the most similar kernel of each layer; right: the least similar one "
        f"({_e(sim.measure)}; kernels constant on either data set are passed over); {how}."
    )
    return ctx.figures.html(fig, "kernel_histograms", caption)


def _activation_section(ctx: _Context) -> str:
    if ctx.model is None:
        return _no_model(ctx)
    sim = ctx.similarity()
    run = ctx.run
    if sim is None:
        return _note("no profiles: the most and least similar kernels are unknown")
    source = run.samples or run.test_samples
    if source is None:
        return _note("no samples.safetensors: no target images to show")
    imgs = _few_images(source)
    model = ctx.model
    x = _transform(run, model)(imgs.images)
    shown = mapsmod.resize_images(imgs.images, tuple(x.shape[-2:]))
    hooked = run.profile_new.meta.get("hooked", {})
    layers = _chosen_layers(ctx, sim)
    fig, axes = ctx.figures.new(10, 3.3 * len(layers), rows=len(layers), cols=1)
    cols = [_class_name(run, int(c)) for c in imgs.labels]
    for i, layer in enumerate(layers):
        most, least = _extremes(ctx, sim, layer)
        acts = mapsmod.kernel_maps(model, hooked.get(layer, layer), x, [most, least])
        rows = {
            f"{layer} #{most}\nmost similar ({float(sim.scores[layer][most]):.2f})": acts[most],
            f"{layer} #{least}\nleast similar ({float(sim.scores[layer][least]):.2f})": acts[least],
        }
        plots.activation_maps(shown, rows, ax=axes[i][0], col_labels=cols)
    caption = (
        "Each kernel's response on target images (brighter = stronger, one colour scale per "
        "row), computed with the given model at the profiled point; frozen kernels are "
        "the pretrained ones."
    )
    return ctx.figures.html(fig, "activation_maps", caption)


def _grad_cam_section(ctx: _Context) -> str:
    run = ctx.run
    if ctx.model is None:
        return _no_model(ctx)
    source = run.test_samples or run.samples
    if source is None:
        return _note("no test_samples.safetensors (or samples.safetensors): no images to explain")
    imgs = _few_images(source)
    model = ctx.model
    x = _transform(run, model)(imgs.images)
    try:
        cams, pred = mapsmod.grad_cam_maps(model, x)
    except MissingDependencyError as e:
        return _note(str(e))
    except (RuntimeError, ValueError) as e:  # from inside the grad-cam package
        return _note(f"Grad-CAM failed on this model ({type(e).__name__}: {e})")
    shown = mapsmod.resize_images(imgs.images, tuple(cams.shape[-2:]))
    cols = [
        f"true {_class_name(run, int(t))}\npred {_class_name(run, int(p))}"
        for t, p in zip(imgs.labels, pred)
    ]
    fig, axes = ctx.figures.new(10, 3.6)
    plots.grad_cam(shown, cams, ax=axes[0][0], col_labels=cols)
    caption = (
        "Grad-CAM of the predicted class at the model's last conv layer (red = most evidence)."
    )
    return ctx.figures.html(fig, "grad_cam", caption)


def _frozen_section(ctx: _Context) -> str:
    plan = ctx.run.plan
    if plan is None:
        return _note("no plan.json: this run froze no kernels by plan")
    fig, axes = ctx.figures.new(10, 4.2)
    plots.frozen_fraction(plan, ax=axes[0][0])
    sel = plan.meta.get("selection") or {}
    how = ", ".join(f"{k}={v}" for k, v in sel.items() if v is not None) if sel else "not recorded"
    caption = (
        f"Share of each layer's parameters the plan keeps fixed (measure "
        f"{_e(plan.meta.get('measure', '?'))}; selection {_e(how)})."
    )
    return ctx.figures.html(fig, "frozen_fraction", caption)


def _samples_section(ctx: _Context) -> str:
    s = ctx.run.samples
    if s is None:
        return _note("no samples.safetensors in the run directory")
    classes = len(set(s.labels.tolist()))
    fig, axes = ctx.figures.new(8, min(1.0 + 0.9 * classes, 12))
    plots.sample_grid(s.images, s.labels, ctx.run.class_names, ax=axes[0][0])
    return ctx.figures.html(
        fig, "samples", "Validation images of each class, as the dataset gives them."
    )


def _training_section(ctx: _Context) -> str:
    log = ctx.run.log
    if not log:
        return _note("no log.jsonl (or it is empty): no training curves")
    fig, axes = ctx.figures.new(12, 4.0, rows=1, cols=2)
    plots.training_curves(log, "loss", ax=axes[0][0])
    plots.training_curves(log, "accuracy", ax=axes[0][1])
    secs = [finite(r.get("seconds")) for r in log]
    total = sum(v for v in secs if v is not None)
    caption = (
        "Loss and accuracy per epoch on the training and validation splits "
        f"({len(log)} epochs, {total:.1f} s)."
    )
    return ctx.figures.html(fig, "training_curves", caption)


def _confusion_section(ctx: _Context) -> str:
    m = ctx.run.metrics
    if m is None or "confusion_matrix" not in m:
        return _note("no metrics.json with a confusion matrix: the run was not evaluated")
    cm = confusion(ctx.run)
    names = _names(ctx.run, len(cm))
    side = min(4.0 + 0.35 * len(cm), 12.0)
    fig, axes = ctx.figures.new(side, side - 0.5)
    plots.confusion_matrix(cm, names, ax=axes[0][0])
    figure = ctx.figures.html(
        fig, "confusion_matrix", "Rows: true class; columns: predicted class; test split."
    )
    sc = class_scores(cm)
    rows = [
        (
            names[i],
            f"{sc['precision'][i]:.3f}",
            f"{sc['recall'][i]:.3f}",
            f"{sc['f1'][i]:.3f}",
            int(sc["support"][i]),
        )
        for i in range(len(cm))
    ]
    rows.append(
        (
            "macro average",
            f"{sc['precision'].mean():.3f}",
            f"{sc['recall'].mean():.3f}",
            f"{sc['f1'].mean():.3f}",
            int(sc["support"].sum()),
        )
    )
    table = _table(["class", "precision", "recall", "F1", "test images"], rows)
    return (
        f'<div class="side">{figure}<div>{table}<p class="small">Precision: of the images '
        "predicted as the class, the share that are; recall: of the class's images, the share "
        "found (its accuracy); F1: their harmonic mean.</p></div></div>"
    )


def _names(run: RunData, k: int) -> list[str]:
    names = run.class_names
    return [names[i] if i < len(names) else f"class {i}" for i in range(k)]


def _misclassified_section(ctx: _Context) -> str:
    run, s = ctx.run, ctx.run.misclassified
    if s is None:
        if run.metrics is None:
            return _note("the run was not evaluated: no test predictions")
        return _note(
            "test_samples.safetensors records no misclassified images (an evaluation by an "
            "older version); evaluate again with smart-transfer evaluate RUN --overwrite"
        )
    if len(s.labels) == 0:
        return "<p>Every test image was classified correctly.</p>"
    if s.predictions is None:
        raise DataError(
            f"{run.file('test_samples.safetensors')!r} holds misclassified images but no "
            "predictions; evaluate the run again (smart-transfer evaluate RUN --overwrite)"
        )
    n = min(len(s.labels), MAX_MISCLASSIFIED)
    rows = (n + MAX_IMAGES - 1) // MAX_IMAGES
    fig, axes = ctx.figures.new(10, 1.9 * rows + 0.2, rows=rows, cols=MAX_IMAGES)
    pairs = [
        (_class_name(run, int(s.labels[i])), _class_name(run, int(s.predictions[i])))
        for i in range(n)
    ]
    for i in range(rows * MAX_IMAGES):
        ax = axes[i // MAX_IMAGES][i % MAX_IMAGES]
        if i < n:
            plots.misclassified(s.images[i], *pairs[i], ax=ax)
        else:
            ax.set_axis_off()
    wrong = _wrong_count(run)
    total = (run.metrics or {}).get("test_images")
    of = (
        f"{wrong} of {total} test images were misclassified; "
        if wrong is not None and isinstance(total, int)
        else ""
    )
    caption = (
        f"{_e(of)}{n} shown, taken in turn from each true class (title: true and predicted class)."
    )
    items = "".join(f"<li>true {_e(t)}, predicted {_e(p)}</li>" for t, p in pairs)
    return (
        ctx.figures.html(fig, "misclassified", caption) + f'<ol class="misclassified">{items}</ol>'
    )


def _wrong_count(run: RunData) -> int | None:
    try:
        cm = confusion(run)
    except SmartTransferError:
        return None
    return int(cm.sum() - cm.trace())


def _comparison_section(ctx: _Context) -> str:
    comp, advice = ctx.run.comparison, ctx.run.advice
    out = (
        _comparison_table(ctx, comp)
        if comp is not None
        else _note("no comparison.json: only this run's strategy was trained")
    )
    if advice:
        out += "<h3>Advice</h3>" + _advice_table(ctx.run, advice)
    else:
        out += _note("no advice.json: the advisor was not run")
    return out


def _comparison_table(ctx: _Context, comp: dict[str, Any]) -> str:
    """The strategies side by side (mean and std over seeds where there are several)."""
    rows = comp.get("rows")
    rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    if not rows:
        return _note(f"{ctx.run.file('comparison.json')!r} holds no rows; run the comparison again")
    out = ""
    seeds = comp.get("seeds")
    if isinstance(seeds, list) and seeds:
        out += (
            f"<p>{_e(comp.get('backbone', '?'))} on {_e(comp.get('data', '?'))}: "
            f"{_e(comp.get('train_images', '?'))} training, {_e(comp.get('val_images', '?'))} "
            f"validation and {_e(comp.get('test_images', '?'))} test images per seed "
            f"({_e(comp.get('test', ''))}); seeds {_e(', '.join(str(x) for x in seeds))}. This "
            f"page shows the run {_e(comp.get('report_run', ''))}.</p>"
        )
    out += _table(
        ["strategy", "val accuracy", "test accuracy", "frozen", "seconds", "seeds"],
        [
            (
                r.get("strategy", "?"),
                _pm(r.get("val_accuracy"), r.get("val_std")),
                _pm(r.get("test_accuracy"), r.get("test_std")),
                _pct(r.get("frozen_fraction")),
                "n/a" if finite(r.get("seconds")) is None else f"{r['seconds']:.1f}",
                r.get("seeds", 1),
            )
            for r in rows
        ],
    )
    fig, axes = ctx.figures.new(10, 3.8)
    plots.strategy_comparison(rows, ax=axes[0][0])
    what = (
        "mean over seeds, bars: one standard deviation"
        if isinstance(seeds, list) and len(seeds) > 1
        else "one seed"
    )
    out += ctx.figures.html(
        fig, "comparison", f"Validation and test accuracy of each strategy ({what})."
    )
    records = comp.get("records")
    records = [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []
    if records:
        out += (
            "<details><summary>every run</summary>"
            + _table(
                ["seed", "strategy", "val accuracy", "test accuracy", "auto chose"],
                [
                    (
                        r.get("seed", "?"),
                        r.get("strategy", "?"),
                        _pct(r.get("val_accuracy")),
                        _pct(r.get("test_accuracy")),
                        (r.get("chosen") or {}).get("strategy", "")
                        if isinstance(r.get("chosen"), dict)
                        else "",
                    )
                    for r in records
                ],
            )
            + "</details>"
        )
    if comp.get("note"):
        out += f"<p>{_e(comp['note'])}</p>"
    return out


def _pm(mean: Any, std: Any) -> str:
    m, s = finite(mean), finite(std)
    if m is None:
        return "n/a"
    return f"{100 * m:.1f}%" if s is None else f"{100 * m:.1f} ± {100 * s:.1f}%"


def _advice_table(run: RunData, advice: dict[str, Any]) -> str:
    """The advisor's verdict; a score that is there but not a number is a damaged file."""
    for key in ("similarity", "samples_per_class"):
        if key in advice and advice[key] is not None and finite(advice[key]) is None:
            return _note(
                f"not drawn: {run.file('advice.json')!r} holds {key}={advice[key]!r}, not a "
                "number; run the advisor again (smart-transfer advise)"
            )
    out = _table(
        ["", ""],
        [
            ("recommended strategy", advice.get("strategy", "?")),
            ("quadrant", advice.get("quadrant", "?")),
            ("similarity", _num_text(advice.get("similarity"))),
            ("layer", advice.get("layer", "?")),
            ("samples per class", _num_text(advice.get("samples_per_class"))),
        ],
    )
    reasons = advice.get("reasons")
    if isinstance(reasons, list) and reasons:
        out += "<ul>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>"
    return out


def _num_text(x: Any) -> str:
    v = finite(x)
    return "n/a" if v is None else f"{v:.3g}"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1240px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; margin-top: 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #555; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
thead th:empty { display: none; }
.note { color: #8a6d3b; background: #fcf8e3; padding: 4px 8px; border-radius: 3px; }
code { font-size: 0.9em; }
.side { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.small { font-size: 0.85em; color: #555; max-width: 32em; }
.left-out { color: #555; font-size: 0.92em; }
ol.misclassified { font-size: 0.85em; color: #555; columns: 3; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""
