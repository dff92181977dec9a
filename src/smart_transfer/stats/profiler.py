"""``profile()``: one streaming pass of a model over a loader, per-channel statistics per layer.

The model runs exactly as in inference (eval mode, no gradients); forward hooks hand each
chosen layer's output to a :class:`~smart_transfer.stats.running.RunningStats`, which
reduces it on the spot, so no activation outlives its hook. Afterwards the model is as it was:
same train/eval flags, same BatchNorm statistics, no hooks left.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import FORWARD_ERRORS, check_input, check_loader, forward_error
from ..errors import ConfigError, DataError, ProfileError, SmartTransferError
from ..layers import following_norms, layer_param_map, num_out_channels, select_layers
from .batches import batch_input
from .config import StatsConfig
from .covariance import DEFAULT_COV_SAMPLE_PER_BATCH
from .distributed import distributed_rank, distributed_world, gather_profiles
from .fingerprint import model_fingerprint
from .histograms import DEFAULT_HIST_BINS, DEFAULT_HIST_MAX, DEFAULT_HIST_SCALE
from .hooks import eval_no_grad, forward_hooks
from .moments import Scratch
from .profile import ActivationProfile
from .running import RunningStats, resolve_config
from .sampling import DEFAULT_HIST_SAMPLE_PER_BATCH, DEFAULT_SAMPLE_PER_BATCH

POINTS = ("output", "norm", "act")

# Modules recognised as "the activation after a layer" for point="act".
ACT_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)
# Modules that do nothing at inference and may sit between a norm and its activation.
_PASS_TYPES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)


@dataclass
class _Point:
    """Where one layer's statistics are taken."""

    name: str  # the layer's name: the key in the profile whatever the point
    module: nn.Module  # the module whose output is hooked (the layer, its norm or activation)
    hooked: str  # that module's name
    kind: str  # "conv", "linear" or the module's class name in lower case
    num_channels: int
    channel_dim: int  # 1 for conv / norm outputs, -1 (last) for linear outputs


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return type(module).__name__.lower()


def _next_activation(model: nn.Module, after: str) -> str | None:
    """Name of the activation module registered right after ``after`` (skipping no-ops)."""
    names: list[str] = [n for n, m in model.named_modules() if n]
    modules = dict(model.named_modules())
    if after not in modules:
        return None
    for name in names[names.index(after) + 1 :]:
        mod = modules[name]
        if name.startswith(after + "."):  # a child of ``after`` itself (timm's BatchNormAct2d.act)
            if isinstance(mod, ACT_TYPES):
                return name
            continue
        if any(True for _ in mod.children()) or isinstance(mod, _PASS_TYPES):
            continue  # containers and no-ops
        return name if isinstance(mod, ACT_TYPES) else None
    return None


def resolve_points(
    model: nn.Module, names: Sequence[str], point: str
) -> tuple[list[_Point], dict[str, str]]:
    """The module to hook for each layer, and the layers skipped because the point is missing."""
    if point not in POINTS:
        raise ConfigError(f"point must be one of {', '.join(map(repr, POINTS))}, got {point!r}")
    modules = dict(model.named_modules())
    norms = following_norms(model) if point in ("norm", "act") else {}
    points: list[_Point] = []
    skipped: dict[str, str] = {}
    for name in names:
        layer = modules[name]
        channels = num_out_channels(layer)
        # Linear and LayerNorm outputs carry their channels last (tokens or features before them)
        dim = -1 if isinstance(layer, (nn.Linear, nn.LayerNorm)) else 1
        hooked: str | None = name
        if point == "norm":
            hooked = norms.get(name)
            dim = 1  # BatchNorm normalises dim 1 (the last dim of a (B, F) input)
            if hooked is None:
                skipped[name] = "no BatchNorm directly follows it"
        elif point == "act":
            hooked = _next_activation(model, norms.get(name, name))
            if hooked is None:
                skipped[name] = "no activation module directly follows it (or its BatchNorm)"
        if hooked is not None:
            points.append(_Point(name, modules[hooked], hooked, layer_kind(layer), channels, dim))
    if not points:
        raise ConfigError(
            f"none of the {len(names)} selected layers has a point={point!r} to profile "
            f"(e.g. {names[0]!r}: {skipped.get(names[0], '?')}); use point='output'"
        )
    return points, skipped


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), None


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` name the same device when either leaves the index out."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_int(value: Any, what: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"{what} must be a positive int{' or None' if allow_none else ''}, got {value!r}"
        )


def profile(
    model: nn.Module,
    loader: Iterable[Any],
    layers: str | Sequence[str] | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    *,
    types: Sequence[type[nn.Module]] | None = None,
    exclude: str | Sequence[str] | None = None,
    point: str = "output",
    device: torch.device | str | None = None,
    hist_bins: int | None = DEFAULT_HIST_BINS,
    hist_scale: float = DEFAULT_HIST_SCALE,
    hist_max: float = DEFAULT_HIST_MAX,
    sample_per_batch: float | None = DEFAULT_SAMPLE_PER_BATCH,
    covariance: bool = True,
    cov_sample_per_batch: int | None = DEFAULT_COV_SAMPLE_PER_BATCH,
    hist_sample_per_batch: float | None = DEFAULT_HIST_SAMPLE_PER_BATCH,
    seed: int = 0,
    distributed: bool | None = None,
    config: StatsConfig | None = None,
) -> ActivationProfile:
    """Per-layer, per-output-channel activation statistics of ``model`` on the data of ``loader``.

    Args:
        model: any ``nn.Module``; it is run in eval mode under ``torch.no_grad()`` and left as
            it was (train/eval flags, BatchNorm statistics, no hooks).
        loader: an iterable of batches: tensors, ``(inputs, targets, ...)`` tuples/lists or
            dicts with an ``image``/``images``/``pixel_values``/``x``/``input`` key.
        layers: names or glob patterns of the layers (default: every Conv2d and Linear).
        max_batches: stop after this many batches (default: the whole loader).
        progress: show a tqdm progress bar (only on a terminal).
        types / exclude: module types to select, and names/patterns to leave out.
        point: ``"output"`` (the layer's output), ``"norm"`` (the output of the BatchNorm right
            after it) or ``"act"`` (the output of the activation after it / its norm); keyed by
            the layer's name in every case. Layers without that point are skipped and listed in
            ``meta["skipped"]``.
        device: where the model runs (default and only allowed value: the model's device);
            batches are moved there.
        hist_bins / hist_scale / hist_max: the fixed histogram bins, uniform in
            ``asinh(x / hist_scale)`` up to ``+-hist_max`` (``hist_bins=0``: no histogram).
        sample_per_batch: the positions of each batch (all channels at the same positions)
            behind the log moments: a fraction in (0, 1] (default 0.25) takes every
            ``round(1 / fraction)``-th block of 16 consecutive positions, from a random block
            on, so that every position is drawn with the same probability and the values are
            read where the pass over the batch already has them; an int takes at most that many
            positions as a stratified random sample; None uses every value. Count, mean,
            variance, min/max and zero fraction always use every value.
        hist_sample_per_batch: the positions behind the histogram, in the same forms
            (default 1024: that many stratified random positions of each batch, every position
            of a batch of at most 2048); an int takes at most that many of the log moments'
            positions when those are an int sample too, else of the batch; a fraction that
            share of the blocks (None: every position).
        covariance: also accumulate the (C, C) channel covariance of each layer.
        cov_sample_per_batch: at most this many positions per batch (a stratified random
            sample, weighted so that the estimate is unbiased) feed the off-diagonal covariance
            entries; the diagonal is the exact variance. None uses every position. The number
            used is in each layer's ``cov_count``.
        seed: seeds the subsample (rank r of a distributed run uses ``seed + r``).
        distributed: combine the profiles of all ranks when torch.distributed is initialised
            (None: automatically; False: keep this rank's profile). Every rank must call
            ``profile`` with its own shard and gets the global profile back.
        config: every setting above from ``hist_bins`` to ``seed`` in one
            :class:`~smart_transfer.stats.config.StatsConfig`, which also chooses the
            statistics computed (``StatsConfig.for_measures(["gaussian_kl"])``: the moments
            only, the fastest profile); those keyword arguments must then stay at their
            defaults. The profile's ``meta`` records the statistics (``stats``) and whether
            the fused C statistics or the eager torch ones computed them (``engine``).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_loader(loader, "loader")
    _check_int(max_batches, "max_batches")
    if hist_bins is not None and hist_bins != 0:
        _check_int(hist_bins, "hist_bins")
    cfg = resolve_config(
        config,
        seed=int(seed) if config is None else 0,
        hist_bins=hist_bins,
        hist_scale=hist_scale,
        hist_max=hist_max,
        covariance=covariance,
        sample_per_batch=sample_per_batch,
        cov_sample_per_batch=cov_sample_per_batch,
        hist_sample_per_batch=hist_sample_per_batch,
    )
    if config is not None and seed != 0:
        raise ConfigError("pass seed either in config=StatsConfig(seed=...) or as seed=, not both")
    points, skipped = resolve_points(model, select_layers(model, layers, types, exclude), point)
    run_device, model_dtype = _run_device(model, device)
    world = distributed_world(distributed)
    rank = distributed_rank() if world > 1 else 0
    generator = torch.Generator().manual_seed(cfg.seed + rank)
    scratch = Scratch()
    accs = {
        p.name: RunningStats(
            p.num_channels, config=cfg, generator=generator, device=run_device, scratch=scratch
        )
        for p in points
    }
    meta: dict[str, Any] = {
        "point": point,
        **cfg.meta(),
        "model": type(model).__name__,
        "fingerprint": model_fingerprint(model),
        "hooked": {p.name: p.hooked for p in points},
        "skipped": skipped,
    }
    run = functools.partial(
        _run,
        model,
        loader,
        points,
        accs,
        run_device,
        model_dtype,
        max_batches,
        progress and rank == 0,
    )
    return _profile_ranks(run, model, points, accs, meta, world)


def _run_device(
    model: nn.Module, device: torch.device | str | None
) -> tuple[torch.device, torch.dtype | None]:
    """Where the profile runs (the model's device; ``device`` may only name that one) and the
    model's floating dtype."""
    model_device, model_dtype = _model_device_dtype(model)
    run_device = model_device if device is None else torch.device(device)
    if (
        device is not None
        and model_dtype is not None
        and not _same_device(run_device, model_device)
    ):
        raise ConfigError(
            f"the model is on {model_device} but device={str(device)!r}; move the model with "
            f"model.to({str(device)!r}) or leave device=None"
        )
    return run_device, model_dtype


def _profile_ranks(
    run: Callable[[], tuple[int, int]],
    model: nn.Module,
    points: list[_Point],
    accs: dict[str, RunningStats],
    meta: dict[str, Any],
    world: int,
) -> ActivationProfile:
    """``run()`` this process's batches and finish its profile; with several processes, every
    rank gets the combined profile (an error on one rank is raised on every rank)."""
    local: ActivationProfile | None = None
    error: BaseException | None = None
    try:
        num_samples, num_batches = run()
        if num_batches > 0:
            local = _finish(model, points, accs, num_samples, num_batches, meta)
        elif world == 1:
            raise DataError(
                "the loader yielded no batches (or only empty ones); pass a loader over at least "
                "one image"
            )
    except Exception as e:
        if world == 1:
            raise
        error = e
    if world > 1:
        return gather_profiles(local, error)
    if local is None:  # unreachable: a single process without batches raised above
        raise DataError("the loader yielded no batches; pass a loader over at least one image")
    return local


def _batches(
    loader: Iterable[Any], max_batches: int | None, progress: bool
) -> tuple[Iterable[Any], Any]:
    """The loader's batches (at most ``max_batches``), behind a progress bar when asked;
    returns (batches, the bar or None) so that the caller can close the bar."""
    try:
        total: int | None = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    batches: Iterable[Any] = (
        loader if max_batches is None else itertools.islice(loader, max_batches)
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        # disable=None: tqdm shows the bar only when writing to a terminal
        bar = tqdm(batches, total=total, desc="profile", unit="batch", disable=None, leave=False)
        batches = bar
    return batches, bar


def _run(
    model: nn.Module,
    loader: Iterable[Any],
    points: list[_Point],
    accs: dict[str, RunningStats],
    device: torch.device,
    dtype: torch.dtype | None,
    max_batches: int | None,
    progress: bool,
) -> tuple[int, int]:
    """Forward every batch with the hooks in place; returns (images, non-empty batches)."""
    flags: list[tuple[str, Tensor]] = []  # (layer, all-finite flag) in the order hooks fired
    calls: dict[str, int] = {}

    def make_hook(p: _Point) -> Any:
        acc = accs[p.name]

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(out, Tensor):
                raise ProfileError(
                    f"layer {p.hooked!r} returned a {type(out).__name__}, not a tensor; "
                    "exclude it from the profiled layers"
                )
            calls[p.name] = calls.get(p.name, 0) + 1
            flags.append((p.name, acc.update(out, p.channel_dim, p.hooked)))

        return hook

    batches, bar = _batches(loader, max_batches, progress)
    num_samples = num_batches = 0
    with contextlib.ExitStack() as stack:
        if bar is not None:
            stack.enter_context(contextlib.closing(bar))
        stack.enter_context(eval_no_grad(model))
        stack.enter_context(forward_hooks([(p.module, make_hook(p)) for p in points]))
        for index, batch in enumerate(batches):
            x = batch_input(batch, index)
            check_input(model, x, f"batch {index}")
            if x.shape[0] == 0:
                continue
            if dtype is not None:
                if not x.is_floating_point():
                    raise DataError(
                        f"batch {index} holds {x.dtype} values but the model computes in {dtype}; "
                        "convert the images to floats in the loader (e.g. x.float() / 255)"
                    )
                x = x.to(device=device, dtype=dtype, non_blocking=True)
            else:
                x = x.to(device=device, non_blocking=True)
            flags.clear()
            calls.clear()
            try:
                model(x)
            except Exception as e:
                explained = None
                if isinstance(e, FORWARD_ERRORS) and not isinstance(e, SmartTransferError):
                    explained = forward_error(e, x, f"batch {index}")
                if explained is not None:
                    raise explained from e
                if not isinstance(e, SmartTransferError) and hasattr(e, "add_note"):
                    e.add_note(f"(raised by the model's forward on batch {index} while profiling)")
                raise
            _check_batch(flags, calls, points, x, index)
            num_samples += int(x.shape[0])
            num_batches += 1
    return num_samples, num_batches


def _check_batch(
    flags: list[tuple[str, Tensor]],
    calls: dict[str, int],
    points: list[_Point],
    x: Tensor,
    index: int,
) -> None:
    """Raise on the first layer with NaN/Inf values and on shared activation modules."""
    if flags and bool(torch.stack([ok for _, ok in flags]).all()):  # one device sync per batch
        flags = []
    for name, ok in flags:  # only after a failure: find the first layer, in the order they ran
        if not bool(ok):
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise DataError(
                    f"batch {index} (counting from 0) contains NaN or Inf input values; "
                    "clean or drop those images"
                )
            raise ProfileError(
                f"layer {name!r} produced NaN or Inf activations on batch {index} (counting from "
                "0); check the model's weights and that batch's values"
            )
    for p in points:
        if isinstance(p.module, ACT_TYPES) and calls.get(p.name, 0) > 1:
            raise ProfileError(
                f"activation module {p.hooked!r} runs {calls[p.name]} times per forward (shared by "
                f"several layers), so its output is not layer {p.name!r}'s alone; "
                "use point='norm' or point='output'"
            )


def _finish(
    model: nn.Module,
    points: list[_Point],
    accs: dict[str, RunningStats],
    num_samples: int,
    num_batches: int,
    meta: dict[str, Any],
) -> ActivationProfile:
    reached = [p for p in points if accs[p.name].count > 0]
    for p in points:
        if accs[p.name].count == 0:
            meta["skipped"][p.name] = "never ran during the forward pass"
    if not reached:
        raise ProfileError(
            "none of the selected layers ran during the forward pass; select layers that the "
            "model's forward uses"
        )
    params = layer_param_map(model, [p.name for p in reached])
    layers = {
        p.name: accs[p.name].to_layer_profile(p.name, p.kind, params[p.name]) for p in reached
    }
    meta["num_batches"] = num_batches
    meta["subsampled"] = any(accs[p.name].subsampled for p in reached)
    meta["cov_subsampled"] = any(accs[p.name].cov_subsampled for p in reached)
    # "native" when the fused C statistics computed any layer (small batches whose exact
    # covariance comes with the eager moments may still take the eager path), else "eager".
    native = sum(accs[p.name].used_native for p in reached)
    meta["engine"] = "native" if native else "eager"
    meta["engine_layers"] = {"native": native, "eager": len(reached) - native}
    return ActivationProfile(layers=layers, source="data", num_samples=num_samples, meta=meta)
