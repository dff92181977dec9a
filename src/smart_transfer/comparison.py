"""``compare_strategies``: several strategies on the same splits of one's own data, over seeds.

    table = st.compare_strategies("efficientnet_lite0", "photos/", seeds=[0, 1, 2],
                                  strategies=["linear-probe", "lp-ft", "smart-kernel"],
                                  out="runs/cmp")
    print(table)        # mean +- std over seeds of validation and test accuracy per strategy

Why one split per seed, shared by every strategy: the differences between strategies on a few
dozen images are small, and comparing them on different draws would add the draw's noise to
every difference. Each run is tested once, on images that no strategy trained or validated on.
The test split is drawn *first* (a stratified ``test_fraction`` of every class; for
Fashion-MNIST its official test split), then ``per_class`` images per class for training and
validation from what is left.

The folder ``out`` receives ``seed-S/STRATEGY/`` (one run folder each, evaluated),
``comparison.json`` (the table and the per-seed records), ``comparison.md``, ``advice.json``
and ``report.html`` (the report of one run with the comparison section).
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._atomic import PathLike, atomic_open
from .errors import ConfigError, DataError

SCHEMA_VERSION = 1
TEST_SUBSET_SEED = 12345  # a fixed test subset (test_size), the same for every seed and run
NOTE_ONE_SEED = (
    "One seed: read this as a demonstration, not a benchmark; pass more seeds "
    "for a mean and a spread."
)


@dataclass
class StrategyTable:
    """Strategies side by side: one row per strategy (mean and std over seeds), and the records.

    ``rows``: dicts with ``strategy``, ``val_accuracy`` / ``val_std``, ``test_accuracy`` /
    ``test_std`` (std over seeds, ``None`` with one seed), ``frozen_fraction``, ``seconds``
    (mean training time of one run, backbone loading included) and ``seeds`` (how many).
    ``records``: one dict per (seed, strategy) run. ``meta``: what was compared (backbone, data,
    split sizes, ...). ``str(table)`` is the aligned table the command prints.
    """

    rows: list[dict[str, Any]]
    records: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping[str, Any]],
        strategies: Sequence[str],
        meta: Mapping[str, Any] | None = None,
    ) -> StrategyTable:
        """Aggregate per-run records (``strategy``, ``val_accuracy``, ``test_accuracy``, ...)."""
        rows = []
        for name in strategies:
            mine = [r for r in records if r["strategy"] == name]
            if not mine:
                continue
            val, std_val = _mean_std([float(r["val_accuracy"]) for r in mine])
            test, std_test = _mean_std([float(r["test_accuracy"]) for r in mine])
            rows.append(
                {
                    "strategy": name,
                    "val_accuracy": val,
                    "val_std": std_val,
                    "test_accuracy": test,
                    "test_std": std_test,
                    "frozen_fraction": statistics.fmean(float(r["frozen_fraction"]) for r in mine),
                    "seconds": statistics.fmean(float(r["seconds"]) for r in mine),
                    "seeds": len(mine),
                }
            )
        return cls(rows=rows, records=[dict(r) for r in records], meta=dict(meta or {}))

    def row(self, strategy: str) -> dict[str, Any]:
        """The row of ``strategy``."""
        for r in self.rows:
            if r["strategy"] == strategy:
                return r
        raise KeyError(strategy)

    def lines(self) -> list[str]:
        """The table as aligned text lines (a header, then one line per strategy)."""
        width = max([len("strategy")] + [len(str(r["strategy"])) for r in self.rows]) + 2
        acc = [_pm(r["val_accuracy"], r["val_std"]) for r in self.rows]
        tst = [_pm(r["test_accuracy"], r["test_std"]) for r in self.rows]
        wa = max([len("val acc")] + [len(a) for a in acc]) + 2
        wt = max([len("test acc")] + [len(a) for a in tst]) + 2
        out = [
            f"{'strategy':<{width}}{'val acc':>{wa}}{'test acc':>{wt}}{'frozen':>9}{'seconds':>9}"
        ]
        for r, a, t in zip(self.rows, acc, tst):
            out.append(
                f"{r['strategy']:<{width}}{a:>{wa}}{t:>{wt}}"
                f"{r['frozen_fraction']:>9.1%}{r['seconds']:>9.0f}"
            )
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def markdown(self) -> str:
        """The table (and the per-seed records) as Markdown, for comparison.md."""
        m = self.meta
        seeds = m.get("seeds", [])
        out = [
            f"# Strategies compared: {m.get('backbone', '?')} on {m.get('data', '?')}",
            "",
            (
                f"{m.get('train_images', '?')} training, {m.get('val_images', '?')} validation and "
                f"{m.get('test_images', '?')} test images per seed "
                f"({m.get('test', 'test split')}); seeds {', '.join(str(s) for s in seeds)}; mean "
                "± std over seeds."
            ),
            "",
            "| strategy | val accuracy | test accuracy | frozen | seconds |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            out.append(
                f"| {r['strategy']} | {_pm(r['val_accuracy'], r['val_std'])} | "
                f"{_pm(r['test_accuracy'], r['test_std'])} | {r['frozen_fraction']:.1%} | "
                f"{r['seconds']:.0f} |"
            )
        out += [
            "",
            "## Every run",
            "",
            "| seed | strategy | val accuracy | test accuracy | chosen |",
            "|---:|---|---:|---:|---|",
        ]
        for r in self.records:
            chosen = (r.get("chosen") or {}).get("strategy", "")
            out.append(
                f"| {r['seed']} | {r['strategy']} | {r['val_accuracy']:.3f} | "
                f"{r['test_accuracy']:.3f} | {chosen} |"
            )
        if m.get("note"):
            out += ["", str(m["note"])]
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what comparison.json holds): the meta keys, ``rows`` and ``records``."""
        return {
            "schema_version": SCHEMA_VERSION,
            **self.meta,
            "rows": [dict(r) for r in self.rows],
            "records": [dict(r) for r in self.records],
        }


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


# --------------------------------------------------------------------------- splits


@dataclass
class _Data:
    """The data every seed draws from: the training pool and where its test images come from."""

    train: Any
    test: Any | None  # a separate test set (Fashion-MNIST's), else None: held out of ``train``
    spec: str
    classes: list[str]
    is_spec: bool = True  # opened from a name or path that can open it again (recorded in the runs)


def _open(data: Any, on_error: str = "raise") -> _Data:
    from torch.utils.data import Dataset

    from .data.spec import is_fashion, open_data

    if isinstance(data, (str, Path)):
        spec = str(data)
        if is_fashion(spec):
            return _Data(
                open_data(spec, "train"),
                open_data(spec, "test"),
                "fashion-mnist",
                _class_names(open_data(spec, "test")),
            )
        ds = open_data(spec, "train", on_error=on_error, check=True)
        return _Data(ds, None, spec, _class_names(ds))
    if isinstance(data, Dataset):
        return _Data(data, None, type(data).__name__, _class_names(data), is_spec=False)
    raise ConfigError(
        f"data must be 'fashion-mnist', a folder of class subfolders, an .npz or a dataset, "
        f"got {type(data).__name__}"
    )


def _class_names(ds: Any) -> list[str]:
    names = getattr(ds, "classes", None)
    return [str(c) for c in names] if names else []


def _targets(ds: Any) -> torch.Tensor:
    t = getattr(ds, "targets", None)
    if t is not None:
        return torch.as_tensor(t).to(torch.int64)
    return torch.tensor([int(ds[i][1]) for i in range(len(ds))], dtype=torch.int64)


def split_for_seed(
    d: _Data,
    seed: int,
    per_class: int | None,
    val_fraction: float,
    test_fraction: float,
    test_size: int | None,
) -> dict[str, Any]:
    """Train, validation and test indices for one seed (test first; every strategy shares them)."""
    from .data import few_shot

    y = _targets(d.train)
    classes = d.classes or None
    if d.test is not None:
        pool = torch.arange(len(y))
        test_ds, test_idx = d.test, torch.arange(len(d.test))
    else:
        pool, test_idx = few_shot(
            y, per_class=None, val_fraction=test_fraction, seed=seed, classes=classes
        )
        test_ds = d.train
        if len(test_idx) == 0:
            raise DataError(
                "the test split is empty: every class has a single image; give each class "
                "two images or more"
            )
    if test_size is not None and test_size < len(test_idx):
        g = torch.Generator().manual_seed(TEST_SUBSET_SEED)
        test_idx = test_idx[torch.randperm(len(test_idx), generator=g)[:test_size]].sort().values
    tr, va = few_shot(
        y[pool], per_class=per_class, val_fraction=val_fraction, seed=seed, classes=classes
    )
    return {
        "train": pool[tr],
        "val": pool[va],
        "test_ds": test_ds,
        "test": test_idx,
        "per_class": per_class,
    }


# --------------------------------------------------------------------------- the comparison


def _check_args(
    strategies: Sequence[str], seeds: Sequence[int], test_fraction: float, test_size: int | None
) -> tuple[list[str], list[int]]:
    from .strategies import get_strategy

    names = [str(s) for s in strategies]
    if not names:
        raise ConfigError(
            "name at least one strategy to compare (--strategies linear-probe lp-ft ...)"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"a strategy is named twice in {names}; name each once")
    for n in names:
        get_strategy(n)  # an unknown name is a clear error before any work
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"a seed is named twice in {seeds}; name each once")
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise ConfigError(
            f"test_fraction must be between 0 and 1, got {test_fraction!r} (--test-fraction)"
        )
    if test_size is not None and (
        isinstance(test_size, bool) or not isinstance(test_size, int) or test_size < 1
    ):
        raise ConfigError(f"test_size must be a positive integer, got {test_size!r} (--test-size)")
    return names, seeds


def _run_folders(
    out: Path,
    seeds: Sequence[int],
    names: Sequence[str],
    overwrite: bool,
    inputs: Mapping[str, Any],
) -> None:
    """Check (before any work) that every run folder can be written, replacing old runs only
    when ``overwrite``; a folder that is not a run is never deleted."""
    from ._paths import check_output_folders, check_outputs, check_replaced_folders

    check_output_folders({"--out": out}, inputs)
    data = inputs.get("--data")
    if data is not None and Path(data).is_dir():
        root, here = Path(data).expanduser().resolve(), out.expanduser().resolve()
        if here == root or root in here.parents:
            raise ConfigError(
                f"--out {str(out)!r} lies inside the data folder {str(data)!r}, where its files "
                "would become training images; pass an --out outside it"
            )
    check_outputs(
        {
            f"--out ({n})": out / n
            for n in ("comparison.json", "comparison.md", "advice.json", "report.html")
        },
        inputs,
    )
    folders = {f"--out (seed-{s}/{n})": out / f"seed-{s}" / n for s in seeds for n in names}
    check_replaced_folders(folders, inputs)
    for f in folders.values():
        if not f.exists():
            continue
        if not overwrite:
            raise ConfigError(
                f"{str(f)!r} already holds a run; pass another out folder (--out) or "
                "overwrite=True (--overwrite) to replace the comparison"
            )
        if not f.is_dir() or (any(f.iterdir()) and not (f / "config.json").is_file()):
            raise ConfigError(
                f"{str(f)!r} exists and is not a run folder; move it away or pass another "
                "out folder (--out)"
            )


def compare_strategies(
    backbone: Any,
    data: Any,
    strategies: Sequence[str] = ("linear-probe", "lp-ft", "smart-kernel", "random-mask"),
    seeds: Sequence[int] = (0,),
    *,
    per_class: int | None = 20,
    size: int | None = None,
    out: PathLike = "runs/compare",
    steps: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    lr_grid: Sequence[float] | None = None,
    batch_size: int = 32,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    test_size: int | None = None,
    device: Any = "auto",
    options: Mapping[str, Mapping[str, Any]] | None = None,
    advise: bool = True,
    report: bool | str = True,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    on_error: str = "raise",
) -> StrategyTable:
    """Train every strategy on the same splits for every seed, test each run once, tabulate.

    ``backbone``: a name (``list_backbones()``; recorded so the runs can be reloaded) or an
    ``nn.Module``. ``data``: ``'fashion-mnist'`` (tested on its official test split, or a fixed
    subset of ``test_size`` images), a folder of class subfolders, an ``.npz`` or a dataset (a
    stratified ``test_fraction`` of each class held out first, per seed). ``per_class``: images
    per class for training + validation (``None``: all that is left). ``options``: per strategy,
    e.g. ``{"auto": {"budget_s": 300}}``; ``random-mask`` gets smart-kernel's plan of the same
    seed when both are compared. ``advise``: also run the advisor on the first seed's images.
    ``steps`` / ``epochs`` / ``lr`` / ``lr_grid``: the recipe of every gradient-trained strategy,
    as :func:`~smart_transfer.train` takes it (default: its step budget and learning-rate grid).
    ``report``: write ``out/report.html`` for one run (``True``: the best strategy by mean
    validation accuracy, or a strategy name). ``progress``: the training progress bars;
    ``log``: where the progress lines go (``None``: nowhere). ``on_error``: ``"skip"`` leaves
    unreadable images out of a folder (listed in the data summary), ``"raise"`` stops naming them.
    """
    from ._device import resolve_device

    say = log or (lambda _line: None)
    names, seeds = _check_args(strategies, seeds, test_fraction, test_size)
    if isinstance(report, str) and report not in names:
        raise ConfigError(
            f"report={report!r} is not among the strategies compared ({', '.join(names)})"
        )
    dev = resolve_device(device)
    out = Path(out)
    inputs = {
        "--data": str(data) if isinstance(data, (str, Path)) else None,
        "--backbone": str(backbone) if isinstance(backbone, (str, Path)) else None,
    }
    _run_folders(out, seeds, names, overwrite, inputs)
    started = time.perf_counter()
    bname = str(backbone) if isinstance(backbone, (str, Path)) else type(backbone).__name__
    d = _open(data, on_error)
    say(
        f"[1/4] {bname} -> {d.spec}: {', '.join(names)}; seed{'s' if len(seeds) > 1 else ''} "
        f"{' '.join(map(str, seeds))}; {'all' if per_class is None else per_class} images per class"
    )
    splits = {
        s: split_for_seed(d, s, per_class, val_fraction, test_fraction, test_size) for s in seeds
    }
    first = splits[seeds[0]]
    _say_data(say, d, first, seeds[0])
    advice = _advice_phase(say, backbone, d, first, size) if advise else None
    if not advise:
        say("[2/4] advice: skipped")
    say(
        f"[3/4] {len(first['train'])} training, {len(first['val'])} validation and "
        f"{len(first['test'])} test images per seed ({_recipe_text(steps, epochs, lr, lr_grid)}, "
        f"{size or 'native'} px)"
    )
    train_kw = dict(
        steps=steps,
        epochs=epochs,
        lr=lr,
        lr_grid=lr_grid,
        batch_size=batch_size,
        size=size,
        device=dev,
        progress=progress,
    )
    records, results = _run_all(say, backbone, d, splits, names, out, options, train_kw)
    meta = _meta(bname, d, seeds, names, first, per_class, size, epochs, test_size, advice)
    meta["recipe"] = {
        "steps": steps,
        "epochs": epochs,
        "lr": lr,
        "lr_grid": None if lr_grid is None else list(lr_grid),
    }
    table = StrategyTable.from_records(records, names, meta)
    _say_results(say, table, records, advice, len(seeds))
    _write(out, table, advice, report, results, seeds)
    if report:
        say(
            f"      report: {out / 'report.html'} (the run {table.meta['report_run']}, with the "
            "comparison)"
        )
    say(
        f"      wrote {out / 'comparison.json'} and comparison.md "
        f"({time.perf_counter() - started:.0f} s in all)"
    )
    return table


def _say_data(say: Callable[[str], None], d: _Data, first: dict[str, Any], seed: int) -> None:
    """The data summary of the first seed's split."""
    from .data.manifest import summary

    for line in summary(
        d.train,
        d.spec,
        {k: len(first[k]) for k in ("train", "val", "test")},
        f"seed {seed}; each seed draws its own split",
    ).splitlines():
        say("      " + line)


def _advice_phase(
    say: Callable[[str], None], backbone: Any, d: _Data, first: dict[str, Any], size: int | None
) -> Any:
    """The advisor on the first seed's training and validation images."""
    from .api import advise as _advise

    say("[2/4] advice: D_pre from BatchNorm running statistics, D_new from the training images")
    advice = _advise(backbone, (d.train, torch.cat([first["train"], first["val"]])), size=size)
    for line in str(advice).splitlines():
        say("      " + line)
    return advice


def _run_all(
    say: Callable[[str], None],
    backbone: Any,
    d: _Data,
    splits: dict[int, dict[str, Any]],
    names: Sequence[str],
    out: Path,
    options: Mapping[str, Mapping[str, Any]] | None,
    train_kw: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[tuple[int, str], Any]]:
    """Every strategy for every seed (smart-kernel before random-mask, which reads its plan);
    the records in the order of seeds and names, and the results by (seed, name)."""
    seeds = list(splits)
    order = sorted(names, key=lambda n: n == "random-mask" and "smart-kernel" in names)
    records: list[dict[str, Any]] = []
    results: dict[tuple[int, str], Any] = {}
    for seed in seeds:
        for name in order:
            opts = dict((options or {}).get(name, {}))
            rec, res = _one_run(backbone, d, splits[seed], name, seed, out, opts, names, **train_kw)
            records.append(rec)
            results[(seed, name)] = res
            say(
                f"      seed {seed}  {name:<16} val {rec['val_accuracy']:.3f}  test "
                f"{rec['test_accuracy']:.3f}  frozen {rec['frozen_fraction']:5.1%}  "
                f"{rec['seconds']:4.0f} s"
            )
    records.sort(key=lambda r: (seeds.index(r["seed"]), list(names).index(r["strategy"])))
    return records, results


def _say_results(
    say: Callable[[str], None],
    table: StrategyTable,
    records: list[dict[str, Any]],
    advice: Any,
    n_seeds: int,
) -> None:
    meta = table.meta
    say(
        f"[4/4] test accuracy on {meta['test_images']} test images ({meta['test']}); mean "
        f"{'± std ' if n_seeds > 1 else ''}over {n_seeds} seed{'s' if n_seeds > 1 else ''}"
    )
    for line in table.lines():
        say("      " + line)
    if advice is not None:
        auto = [r for r in records if r["strategy"] == "auto"]
        chose = (
            f"auto chose: {', '.join(str((r['chosen'] or {}).get('strategy')) for r in auto)}; "
            if auto
            else ""
        )
        say(f"      {chose}advice: {advice.strategy} ({advice.quadrant})")
    say(f"      {meta['note']}")


def _recipe_text(
    steps: int | None, epochs: int | None, lr: float | None, lr_grid: Sequence[float] | None
) -> str:
    """The budget and learning rate the gradient-trained strategies get, in words."""
    from .strategies.base import LR_GRID, STEPS

    budget = (
        f"at most {epochs} epochs" if epochs is not None else f"{steps or STEPS} optimizer steps"
    )
    rate = (
        f"AdamW lr={lr}"
        if lr is not None
        else f"AdamW lr chosen on validation from "
        f"{', '.join(f'{r:g}' for r in (lr_grid or LR_GRID))}"
    )
    return f"{budget}, {rate}"


def _one_run(
    backbone: Any,
    d: _Data,
    split: dict[str, Any],
    name: str,
    seed: int,
    out: Path,
    opts: dict[str, Any],
    names: Sequence[str],
    **train_kw: Any,
) -> tuple[dict[str, Any], Any]:
    """Train ``name`` on ``split`` into out/seed-S/NAME, test it once; its record and result."""
    from .api import evaluate, train

    run = out / f"seed-{seed}" / name
    if run.exists():
        shutil.rmtree(run)  # checked by _run_folders: an old run, and overwrite was asked
    if name == "random-mask" and "smart-kernel" in names and "plan" not in opts:
        opts["plan"] = str(out / f"seed-{seed}" / "smart-kernel" / "plan.json")
    info = {
        "per_class": split["per_class"],
        "seed": seed,
        "comparison": True,
        "train_indices": split["train"].tolist(),
        "val_indices": split["val"].tolist(),
        "test_indices": split["test"].tolist(),
        "test_split": "test" if d.test is not None else "train",
    }
    if d.is_spec:  # a path as an absolute path: the run can be evaluated from another folder
        info["spec"] = d.spec if d.test is not None else str(Path(d.spec).expanduser().resolve())
    t0 = time.perf_counter()
    result = train(
        backbone,
        (d.train, split["train"]),
        (d.train, split["val"]),
        strategy=name,
        seed=seed,
        out=run,
        data_info=info,
        **train_kw,
        **opts,
    )
    seconds = time.perf_counter() - t0  # training only, as the demo always reported it
    metrics = evaluate(result, (split["test_ds"], split["test"]))
    rec = {
        "seed": seed,
        "strategy": name,
        "val_accuracy": float(result.val_accuracy),
        "test_accuracy": float(metrics["accuracy"]),
        "frozen_fraction": float(result.frozen_fraction),
        "seconds": seconds,
        "test_images": int(metrics["test_images"]),
        "chosen": result.chosen,
        "run": f"seed-{seed}/{name}",
    }
    return rec, result


def _meta(
    bname: str,
    d: _Data,
    seeds: Sequence[int],
    names: Sequence[str],
    first: dict[str, Any],
    per_class: int | None,
    size: int | None,
    epochs: int | None,
    test_size: int | None,
    advice: Any,
) -> dict[str, Any]:
    n_test = len(first["test"])
    if d.test is not None:
        test = (
            "a fixed subset of Fashion-MNIST's test split"
            if n_test < len(d.test)
            else "Fashion-MNIST's whole test split"
        )
    else:
        test = "a stratified share of every class, held out before training, drawn per seed"
    return {
        "backbone": bname,
        "data": d.spec,
        "strategies": list(names),
        "seeds": list(seeds),
        "per_class": per_class,
        "size": size,
        "epochs": epochs,
        "test_size": test_size,
        "class_names": d.classes,
        "train_images": len(first["train"]),
        "val_images": len(first["val"]),
        "test_images": n_test,
        "test": test,
        "advice": None
        if advice is None
        else {"strategy": advice.strategy, "quadrant": advice.quadrant},
        "note": NOTE_ONE_SEED
        if len(seeds) == 1
        else f"{len(seeds)} seeds: mean ± sample standard deviation over seeds; each seed draws "
        f"its own split.",
    }


def _pick_report_run(table: StrategyTable, report: bool | str) -> str:
    if isinstance(report, str):
        return report
    return max(table.rows, key=lambda r: r["val_accuracy"])["strategy"]  # type: ignore[no-any-return]


def _write(
    out: Path,
    table: StrategyTable,
    advice: Any,
    report: bool | str,
    results: Mapping[tuple[int, str], Any],
    seeds: Sequence[int],
) -> None:
    """comparison.json, comparison.md, advice.json and (``report``) report.html into ``out``."""
    import json

    if report:
        name = _pick_report_run(table, report)
        table.meta["report_run"] = f"seed-{seeds[0]}/{name}"
    with atomic_open(out / "comparison.json", "w", encoding="utf-8") as f:
        json.dump(table.to_dict(), f, indent=2, default=str)
    with atomic_open(out / "comparison.md", "w", encoding="utf-8") as f:
        f.write(table.markdown())
    if advice is not None:
        with atomic_open(out / "advice.json", "w", encoding="utf-8") as f:
            json.dump(advice.to_dict(), f, indent=2, default=str)
    if report:
        try:
            from .report import make_report
        except ImportError:  # pragma: no cover - matplotlib is a core dependency
            return
        res = results[(seeds[0], name)]
        make_report(out, model=res.model, out=out / "report.html")


__all__ = ["StrategyTable", "compare_strategies", "split_for_seed"]
