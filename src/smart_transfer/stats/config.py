"""``StatsConfig``: which statistics a profile computes and how each batch is sampled.

One frozen dataclass carries the settings that :func:`~smart_transfer.stats.profile` and
:class:`~smart_transfer.stats.running.RunningStats` share, with their defaults written once.
``stats`` names the groups of statistics to compute; a plan whose measure needs fewer of them
profiles faster (``gaussian_kl`` needs the moments only: :meth:`StatsConfig.for_measures`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import ConfigError
from .covariance import DEFAULT_COV_SAMPLE_PER_BATCH
from .histograms import DEFAULT_HIST_BINS, DEFAULT_HIST_MAX, DEFAULT_HIST_SCALE, hist_edges
from .sampling import DEFAULT_HIST_SAMPLE_PER_BATCH, DEFAULT_SAMPLE_PER_BATCH, check_sample

#: The groups of statistics a profile can compute, and the LayerProfile fields of each.
STAT_GROUPS: Mapping[str, frozenset[str]] = {
    "moments": frozenset({"count", "mean", "var", "min", "max", "zero_frac"}),
    "logs": frozenset({"log_count", "log_mean", "log_var"}),
    "histogram": frozenset({"hist", "hist_edges", "hist_count"}),
    "covariance": frozenset({"cov", "cov_count"}),
}
ALL_STATS: tuple[str, ...] = tuple(STAT_GROUPS)


@dataclass(frozen=True)
class StatsConfig:
    """The statistics of a profile and the sampling behind them (defaults: every statistic)."""

    stats: tuple[str, ...] = ALL_STATS  # groups computed, from STAT_GROUPS; "moments" always
    hist_bins: int = DEFAULT_HIST_BINS  # histogram bins, uniform in asinh(x / hist_scale)
    hist_scale: float = DEFAULT_HIST_SCALE  # width of the linear bins around 0
    hist_max: float = DEFAULT_HIST_MAX  # values beyond +-hist_max land in the end bins
    sample_per_batch: int | float | None = DEFAULT_SAMPLE_PER_BATCH  # log moments' positions
    hist_sample_per_batch: int | float | None = DEFAULT_HIST_SAMPLE_PER_BATCH  # histogram's
    cov_sample_per_batch: int | None = DEFAULT_COV_SAMPLE_PER_BATCH  # off-diagonal covariance
    seed: int = 0  # seeds the samples (rank r of a distributed run uses seed + r)

    def __post_init__(self) -> None:
        stats = (self.stats,) if isinstance(self.stats, str) else tuple(self.stats)
        unknown = [s for s in stats if s not in STAT_GROUPS]
        if unknown:
            raise ConfigError(
                f"StatsConfig(stats=...) has unknown group(s) {unknown}; choose from "
                f"{', '.join(ALL_STATS)}"
            )
        # "moments" always: every other statistic and every measure needs count, mean and var.
        canonical = tuple(s for s in ALL_STATS if s == "moments" or s in stats)
        object.__setattr__(self, "stats", canonical)
        check_sample("sample_per_batch", self.sample_per_batch)
        check_sample("hist_sample_per_batch", self.hist_sample_per_batch)
        check_sample("cov_sample_per_batch", self.cov_sample_per_batch, fraction=False)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"StatsConfig(seed=...) must be an int, got {self.seed!r}")
        if self.histogram:
            hist_edges(self.hist_bins, self.hist_scale, self.hist_max)  # validates them

    @property
    def logs(self) -> bool:
        return "logs" in self.stats

    @property
    def histogram(self) -> bool:
        return "histogram" in self.stats

    @property
    def covariance(self) -> bool:
        return "covariance" in self.stats

    @classmethod
    def for_measures(cls, measures: Iterable[str], **settings: Any) -> StatsConfig:
        """The lightest config whose profiles serve every measure in ``measures`` (names from
        ``st.list_measures()``), e.g. ``for_measures(["gaussian_kl"])``: the moments only."""
        from ..measures.registry import get_measure  # measures import stats: import late

        need: set[str] = set()
        for name in [measures] if isinstance(measures, str) else measures:
            need |= get_measure(name).requires
        return cls(stats=groups_for(need), **settings)

    @classmethod
    def from_settings(
        cls, *, hist_bins: int | None, covariance: bool, **settings: Any
    ) -> StatsConfig:
        """The config of the individual keyword arguments of ``profile`` / ``RunningStats``
        (``hist_bins`` 0 or None: no histogram; ``covariance=False``: no covariance)."""
        stats = tuple(
            s
            for s in ALL_STATS
            if not (s == "histogram" and not hist_bins)
            and not (s == "covariance" and not covariance)
        )
        return cls(stats=stats, hist_bins=int(hist_bins or DEFAULT_HIST_BINS), **settings)

    def replace(self, **changes: Any) -> StatsConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stats"] = list(self.stats)
        return d

    def meta(self) -> dict[str, Any]:
        """The settings as a profile's ``meta`` records them (the keys profiles always had,
        plus ``stats``)."""
        return {
            "hist_bins": self.hist_bins if self.histogram else 0,
            "hist_scale": float(self.hist_scale),
            "hist_max": float(self.hist_max),
            "sample_per_batch": self.sample_per_batch,
            "covariance": self.covariance,
            "cov_sample_per_batch": self.cov_sample_per_batch if self.covariance else None,
            "hist_sample_per_batch": self.hist_sample_per_batch if self.histogram else None,
            "seed": int(self.seed),
            "stats": list(self.stats),
        }


def groups_for(statistics: Iterable[str]) -> tuple[str, ...]:
    """The groups of :data:`STAT_GROUPS` that hold ``statistics`` (LayerProfile field names)."""
    need = set(statistics)
    return tuple(g for g, fields_ in STAT_GROUPS.items() if g == "moments" or need & fields_)


def profile_hint(missing: Iterable[str], measure: str) -> str:
    """How to profile again so that the statistics ``missing`` are there (for error
    messages); empty when profiling cannot provide them (e.g. an unknown count)."""
    if not [g for g in groups_for(missing) if g != "moments"]:
        return ""
    return (
        "profile it again with "
        f"config=smart_transfer.stats.StatsConfig.for_measures([{measure!r}]) or the default "
        "StatsConfig() (every statistic)"
    )


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(StatsConfig))
