"""``compare``: run one registered measure over every layer two profiles have in common."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Iterable
from typing import Any

import torch

from .._json import plain
from ..errors import ConfigError, IncompatibleError, ProfileError, UnknownNameError
from ..stats.config import profile_hint
from ..stats.fingerprint import check_same_model
from ..stats.profile import ActivationProfile, LayerProfile
from .registry import Measure, MeasureValues, get_measure, runnable_measures
from .similarity import Similarity

# Statistics that may legitimately hold NaN: unknown counts (BatchNorm-derived profiles) and
# the log moments of a channel that has no non-zero value.
_MAY_BE_NAN = frozenset({"count", "log_mean", "log_var"})


def _few(names: Iterable[str], k: int = 5) -> str:
    names = list(names)
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:k])
    return shown if len(names) <= k else f"{shown} and {len(names) - k} more"


def _select_layers(
    prof_pre: ActivationProfile,
    prof_new: ActivationProfile,
    layers: str | Iterable[str] | None,
) -> list[str]:
    """Names in both profiles, in prof_new's order, restricted to ``layers`` (names or
    fnmatch patterns) when given."""
    common = [n for n in prof_new.layers if n in prof_pre.layers]
    if not common:
        raise IncompatibleError(
            f"the profiles have no layer in common (D_pre: {_few(prof_pre.layers)}; D_new: "
            f"{_few(prof_new.layers)}); profile both with the same model and layer selection."
        )
    if layers is None:
        return common
    wanted = [layers] if isinstance(layers, str) else list(layers)
    if not wanted:
        raise ConfigError("layers is empty; pass None to compare every common layer.")
    chosen: set[str] = set()
    for w in wanted:
        if not isinstance(w, str):
            raise ConfigError(
                f"layers holds {w!r} ({type(w).__name__}); pass layer names or glob patterns."
            )
        hits = [n for n in common if n == w or fnmatch.fnmatchcase(n, w)]
        if not hits:
            close = difflib.get_close_matches(w, common, n=3, cutoff=0.6)
            hint = (
                f"did you mean {_few(close)}?"
                if close
                else f"choose from the common layers {_few(common, 8)}."
            )
            raise UnknownNameError(f"layer {w!r} is not in both profiles; {hint}")
        chosen.update(hits)
    return [n for n in common if n in chosen]


def _available(profile: ActivationProfile, names: list[str]) -> set[str]:
    """Statistics present in every selected layer; ``count`` only if it is known."""
    have: set[str] | None = None
    for n in names:
        lp = profile.layers[n]
        a = lp.available()
        if not bool(torch.isfinite(torch.as_tensor(lp.count, dtype=torch.float64)).all()):
            a.discard("count")
        have = a if have is None else have & a
    return have or set()


def _check_requirements(
    m: Measure, prof_pre: ActivationProfile, prof_new: ActivationProfile, names: list[str]
) -> None:
    avail_pre, avail_new = _available(prof_pre, names), _available(prof_new, names)
    for label, prof, avail in (("D_pre", prof_pre, avail_pre), ("D_new", prof_new, avail_new)):
        missing = sorted(m.requires - avail)
        if missing:
            why = (
                " (count is unknown for BatchNorm-derived profiles)"
                if "count" in missing and prof.source == "batchnorm"
                else ""
            )
            can = runnable_measures(avail_pre & avail_new)
            hint = profile_hint(missing, m.name) if prof.source == "data" else ""
            if hint:  # a data profile made with a lighter StatsConfig
                raise ConfigError(
                    f"measure {m.name!r} needs the statistics {', '.join(missing)}, which the "
                    f"{label} profile lacks (profiled with stats={prof.meta.get('stats')}); "
                    f"{hint}."
                )
            raise ConfigError(
                f"measure {m.name!r} needs the statistics {', '.join(missing)}, which the "
                f"{label} profile (source {prof.source!r}) lacks{why}; use one of the measures "
                f"that can run on these profiles: {', '.join(can) if can else 'none'}."
            )


def _check_variance(lp: LayerProfile, label: str) -> None:
    var = torch.as_tensor(lp.var, dtype=torch.float64)
    bad = (var < 0).nonzero().flatten()
    if bad.numel():
        c = int(bad[0])
        raise ProfileError(
            f"layer {lp.name!r} of the {label} profile has a negative variance ({float(var[c]):g} "
            f"in channel {c}{f' and {bad.numel() - 1} more' if bad.numel() > 1 else ''}); a "
            "variance cannot be negative, so the profile (or the BatchNorm running_var it was "
            "read from) is damaged; re-create it."
        )


def _check_order(prof_pre: ActivationProfile, prof_new: ActivationProfile) -> None:
    if getattr(prof_new, "source", "data") == "batchnorm":
        hint = (
            "the arguments look swapped: pass compare(bn_profile, data_profile)"
            if getattr(prof_pre, "source", "data") != "batchnorm"
            else "profile the new data with st.profile(model, loader) and pass that as D_new"
        )
        raise IncompatibleError(
            "D_new (prof_new) comes from BatchNorm running statistics, which describe the "
            f"pretraining data, not the target data; {hint}."
        )


def _check_finite(m: Measure, lp: LayerProfile) -> None:
    for stat in sorted(m.requires - _MAY_BE_NAN):
        v = getattr(lp, stat)
        if v is not None and not bool(torch.isfinite(torch.as_tensor(v)).all()):
            raise ProfileError(
                f"layer {lp.name!r} has non-finite values in its {stat!r} statistic; re-profile "
                f"it (a channel that saw no values, or NaN/Inf activations)."
            )


def _check_options(m: Measure, options: dict[str, Any]) -> None:
    params = list(inspect.signature(m.fn).parameters.values())[2:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params]
    for key in options:
        if key not in names:
            raise ConfigError(
                f"measure {m.name!r} has no option {key!r}; its options are: "
                f"{', '.join(names) if names else 'none'}."
            )


def compare(
    prof_pre: ActivationProfile,
    prof_new: ActivationProfile,
    measure: str | Measure = "gaussian_kl",
    layers: str | Iterable[str] | None = None,
    *,
    check_model: bool = True,
    **options: Any,
) -> Similarity:
    """Compare the D_pre and D_new profiles of one model, layer by layer, with one measure.

    Args:
        prof_pre: profile of the pretraining data (from images or from BatchNorm statistics).
        prof_new: profile of the new data, same model and layer selection.
        measure: a name from :func:`list_measures` (or a :class:`Measure`).
        layers: restrict to these layer names or fnmatch patterns; default every layer the two
            profiles have in common.
        check_model: refuse profiles whose recorded model fingerprints differ (another
            architecture, or the same one with other weights); False compares them anyway.
        **options: passed to the measure (e.g. ``symmetric=True`` for the KL measures).

    Returns:
        A :class:`Similarity` over the common layers in prof_new's order. For channel-level
        measures ``layer_scores`` is the mean of the channel scores and ``layer_raw`` the mean
        of the raw values; layer-level measures give the value of the whole layer. ``source``
        is prof_pre's source and ``params`` comes from prof_new.

    Raises:
        UnknownNameError: unknown measure or layer.
        IncompatibleError: profiles taken at different points (``meta["point"]``), of
            different models (``meta["fingerprint"]``), in the wrong order (a BatchNorm
            profile as D_new), no common layer, a layer whose channel counts differ, or
            histograms with different bins.
        ProfileError: a negative variance or non-finite statistics.
        ConfigError: a statistic the measure needs is missing (the message lists the measures
            that can run), or an unknown option.
    """
    _check_profiles(prof_pre, prof_new)
    m = get_measure(measure)
    _check_same_point(prof_pre, prof_new, check_model)
    names = _select_layers(prof_pre, prof_new, layers)
    _check_channels(prof_pre, prof_new, names)
    _check_requirements(m, prof_pre, prof_new, names)
    _check_options(m, options)
    _check_order(prof_pre, prof_new)
    sim = _LayerScores()
    for n in names:
        sim.add(n, m, prof_pre.layers[n], prof_new.layers[n], options)
    return Similarity(
        measure=m.name,
        direction=m.direction,
        scores=sim.scores,
        raw=sim.raw,
        layer_scores=sim.layer_scores,
        layer_raw=sim.layer_raw,
        params=sim.params,
        source=str(getattr(prof_pre, "source", "data")),
        meta=sim.meta(m, options, prof_pre, prof_new),
    )


def _check_profiles(prof_pre: Any, prof_new: Any) -> None:
    for label, prof in (("prof_pre", prof_pre), ("prof_new", prof_new)):
        if not isinstance(getattr(prof, "layers", None), dict):
            raise ConfigError(
                f"{label} must be an ActivationProfile (from smart_transfer.profile or "
                f"profile_from_batchnorm), got {type(prof).__name__}."
            )


def _check_same_point(prof_pre: Any, prof_new: Any, check_model: bool) -> None:
    """Both profiles are of one model (unless ``check_model`` is False), taken at one point."""
    meta_pre = getattr(prof_pre, "meta", None) or {}
    meta_new = getattr(prof_new, "meta", None) or {}
    if check_model:
        check_same_model(meta_pre, meta_new)
    point_pre, point_new = meta_pre.get("point"), meta_new.get("point")
    if point_pre is not None and point_new is not None and point_pre != point_new:
        raise IncompatibleError(
            f"D_pre was profiled at point {point_pre!r} and D_new at {point_new!r}; profile both "
            f"at the same point (BatchNorm-derived profiles describe the layer output, 'output')."
        )


def _check_channels(prof_pre: Any, prof_new: Any, names: Iterable[str]) -> None:
    for n in names:
        cp, cn = prof_pre.layers[n].num_channels, prof_new.layers[n].num_channels
        if cp != cn:
            raise IncompatibleError(
                f"layer {n!r} has {cp} channels in the D_pre profile but {cn} in the D_new "
                f"profile; profile both with the same model."
            )


class _LayerScores:
    """The per-layer results of one measure, gathered layer by layer."""

    def __init__(self) -> None:
        self.scores: dict[str, torch.Tensor] = {}
        self.raw: dict[str, torch.Tensor] = {}
        self.layer_scores: dict[str, float] = {}
        self.layer_raw: dict[str, float] = {}
        self.params: dict[str, dict[str, Any]] = {}
        self.layer_meta: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, list[str]] = {}

    def add(self, n: str, m: Measure, lp_pre: Any, lp_new: Any, options: dict[str, Any]) -> None:
        _check_variance(lp_pre, "D_pre")
        _check_variance(lp_new, "D_new")
        _check_finite(m, lp_pre)
        _check_finite(m, lp_new)
        out: MeasureValues = m.compute(lp_pre, lp_new, **options)
        s = out.score.to(torch.float64)
        if not bool(torch.isfinite(s).all()):
            raise ProfileError(
                f"measure {m.name!r} gave non-finite scores for layer {n!r}; check that both "
                f"profiles of this layer hold finite statistics."
            )
        self.scores[n] = s.clamp(0.0, 1.0)
        self.raw[n] = out.raw.to(torch.float64)
        if out.layer_score is None:
            self.layer_scores[n] = float(self.scores[n].mean()) if s.numel() else 1.0
            self.layer_raw[n] = float(self.raw[n].mean()) if self.raw[n].numel() else 0.0
        else:
            self.layer_scores[n] = min(max(float(out.layer_score), 0.0), 1.0)
            self.layer_raw[n] = float(out.layer_raw)  # type: ignore[arg-type]
        self.params[n] = dict(lp_new.params)
        if out.meta:
            self.layer_meta[n] = dict(out.meta)
            if "note" in out.meta:
                self.notes.setdefault(str(out.meta["note"]), []).append(n)

    def meta(
        self, m: Measure, options: dict[str, Any], prof_pre: Any, prof_new: Any
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "level": m.level,
            "assumption": m.assumption,
            "score": m.score_rule,
            "options": {k: plain(v) for k, v in options.items()},
            "num_samples": {
                "pre": int(getattr(prof_pre, "num_samples", 0)),
                "new": int(getattr(prof_new, "num_samples", 0)),
            },
        }
        if self.layer_meta:
            meta["layers"] = self.layer_meta
        if self.notes:
            meta["notes"] = [f"{text} (layers: {', '.join(ls)})" for text, ls in self.notes.items()]
        return meta
