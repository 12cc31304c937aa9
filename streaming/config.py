"""Typed configuration: dataclasses with defaults, read from TOML, overridden by CLI flags.

Validated once at load time; every error names the bad key (``patching.patch_len``).

May import: connectors, models.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.kafka_io import Topics
from connectors.security import (
    DEFAULT_PASSWORD_ENV,
    PASSWORD_KEYS,
    SecurityError,
    refused_key_message,
)
from connectors.security import check as check_security
from models.shape import BASES, ModelShape, ModelSize


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it."""


@dataclass
class PatchingConfig:
    interval_ms: int = 300_000          # sampling grid (5 min)
    grid_phase_ms: int = 0              # readings sit this long after each grid point (an
    #                                     hourly logger at :30: 1800000); each is rounded to
    #                                     its own point, jitter too. backtest and an inferred
    #                                     grid take it from the data
    patch_len: int = 12                 # grid points per patch = one time step
    lateness_ms: int = 600_000          # out-of-order tolerance behind the event-time clock
    max_future_ms: int | None = None    # readings further ahead of the clock are held, then
    #                                     dead-lettered as `future` (None: 3 steps)
    clock_quorum: int = 3               # sensors that must reach a time before the clock does
    clock_dead_steps: int = 2           # a sensor silent this many steps of arrival time (live:
    #                                     the records' Kafka timestamps; replay: the rows
    #                                     replayed) no longer counts toward its partition's
    #                                     quorum (0: it always does)
    value_abs_max: float = 1e12         # |value| beyond this → dead-letter `out_of_range`
    value_ranges: dict[str, list[float]] = field(default_factory=dict)
    # ^ per-sensor plausible [min, max]; keys are sensor ids or globs ("pm25/*")
    future_rearm_steps: int = 24        # closed steps before a `future` sensor is re-flagged
    timezone: str = "UTC"               # IANA zone of timestamps written without a UTC offset
    max_sensors: int = 20_000           # sensors per region (each costs ~33 KB): new ids
    #                                     beyond it go to dead-letter as `capacity` (one alert)
    max_sensor_id_bytes: int = 256      # longer sensor ids go to dead-letter as `invalid`

    def future_ms(self) -> int:
        """How far ahead of the clock a reading may be (``max_future_ms`` or 3 steps)."""
        if self.max_future_ms is not None:
            return self.max_future_ms
        return 3 * self.interval_ms * self.patch_len

    def validate(self) -> None:
        _positive(self, "patching", "interval_ms", "patch_len", "clock_quorum",
                  "value_abs_max", "future_rearm_steps", "max_sensors", "max_sensor_id_bytes")
        try:
            from connectors.schemas import zone

            zone(self.timezone)
        except (ValueError, KeyError, OSError):
            raise ConfigError(f"patching.timezone: unknown timezone {self.timezone!r} (an IANA "
                              f"name such as 'UTC' or 'Europe/Berlin')") from None
        if not 0 <= self.grid_phase_ms < self.interval_ms:
            raise ConfigError(f"patching.grid_phase_ms must be in [0, interval_ms = "
                              f"{self.interval_ms}), got {self.grid_phase_ms}")
        if self.lateness_ms < 0:
            raise ConfigError("patching.lateness_ms must be >= 0")
        if self.clock_dead_steps < 0:
            raise ConfigError("patching.clock_dead_steps must be >= 0")
        if self.max_future_ms is not None and self.max_future_ms < 0:
            raise ConfigError("patching.max_future_ms must be >= 0")
        for key, bounds in self.value_ranges.items():
            if (not isinstance(bounds, list | tuple) or len(bounds) != 2
                    or not all(isinstance(b, int | float) and not isinstance(b, bool)
                               for b in bounds) or not bounds[0] <= bounds[1]):
                raise ConfigError(f"patching.value_ranges.{key} must be [min, max] with "
                                  f"min <= max, got {bounds!r}")


@dataclass
class ModelConfig(ModelSize):
    """The served model's size (``models.shape``) and how it learns online."""

    base: str = "persistence"           # what a fresh model's forecast corrects (or "mean")
    lr: float = 3e-3                    # online learning rate of a fresh model (0: frozen;
    #                                     a checkpoint adapts at adapt.checkpoint_lr)
    learn: bool = True                  # supervised step when realized values arrive
    learn_batch: int = 64               # sensors per online step (a seeded sample; 0 = all)
    torch_threads: int = 1              # intra-op threads of the live worker (0 = torch's)
    seed: int = 0                       # seed of the model's initialization and sampling
    live_graph: bool = False            # a corpus-pretrained (inductive) model uses the
    #                                     network's graph: its graph layer and Laplacian
    #                                     encodings. Off: it helped on Los-loop, not on
    #                                     SZ-taxi or ETTh2 (benchmarks/RESULTS.md)

    def shape(self, patching: PatchingConfig) -> ModelShape:
        """The whole model shape: this size plus the patcher's patch length."""
        return ModelShape(**{f.name: getattr(self, f.name)
                             for f in dataclasses.fields(ModelSize)},
                          patch_len=patching.patch_len, base=self.base)

    def validate(self) -> None:
        bad = self.size_errors("model")
        if self.base not in BASES:
            bad.append(f"model.base must be one of {', '.join(BASES)}, got {self.base!r}")
        if bad:
            raise ConfigError(bad[0])
        if self.lr < 0:
            raise ConfigError("model.lr must be >= 0")
        if self.torch_threads < 0:
            raise ConfigError("model.torch_threads must be >= 0")
        if self.learn_batch < 0:
            raise ConfigError("model.learn_batch must be >= 0")


DRIFT_CHANNELS = ("abs_residual", "seasonal_residual", "embedding_distance")
ANOMALY_DETECTORS = ("residual", "embedding", "level", "jump", "distribution", "context",
                     "range")
VALUE_DETECTORS = ANOMALY_DETECTORS[2:]                          # streaming.alerts.novelty
MIN_WARMUP_STEPS = 4


@dataclass
class DriftConfig:
    """Per-sensor change detection. The default, ``bocpd``, watches each sensor's deseasonalized
    level and spread with online Bayesian change-point detection
    (``streaming.alerts.changepoint``); ``page_hinkley``, ``adwin`` and ``kswin`` watch the
    forecast-residual and embedding channels instead (array detectors over all sensors,
    river's arithmetic: ``streaming.alerts.detectors``)."""

    detector: str = "bocpd"             # bocpd | page_hinkley | adwin | kswin
    expected_run_steps: float = 200.0   # bocpd: 1 / hazard, in steps between changes
    runs: int = 8                       # bocpd: run lengths kept per sensor and statistic
    alpha0: float = 5.0                 # bocpd: Normal-Gamma shape (prior weight of the scale)
    kappa0: float = 0.05                # bocpd: prior weight of a new run's mean (small: a new
    #                                     run's level is learned from its own readings)
    min_effect: float = 5.0             # bocpd: smallest change worth an alert, in the
    #                                     statistic's step-to-step noise
    history_factor: float = 4.0         # bocpd: a change must also exceed this many times the
    #                                     sensor's own typical move over the same span (0: off)
    repeat_factor: float = 2.0          # bocpd: each drift alert on a sensor raises the bar
    #                                     of its next one by this share, fading over the
    #                                     sensor's budget (10,000 / alerts.max_per_10k readings)
    bocpd_threshold: float = 0.0        # bocpd: posterior mass that declares a change
    #                                     (0: from alerts.max_per_10k)
    season_rate: float = 0.1            # bocpd: learning rate of the daily profile
    common_mode_min: int = 5            # bocpd: with this many sensors, the step's network-wide
    #                                     move is taken out first (0: off)
    report_calmer: bool = False         # bocpd: alert on variance falls too (a sensor grown
    #                                     calmer; detected either way)
    channels: str = "abs_residual+seasonal_residual"  # residual detectors' channels, '+'-joined
    threshold: float = 9.0              # Page-Hinkley lambda (in standardized-error units)
    delta: float = 0.5                  # Page-Hinkley tolerated increase (standardized units)
    clip: float = 8.0                   # standardized values are clipped to [-clip, clip]
    adwin_delta: float = 1e-4           # ADWIN confidence (detector = adwin)
    kswin_alpha: float = 1e-4           # KSWIN test level (detector = kswin)
    kswin_window: int = 100             # KSWIN window of readings
    kswin_stat_size: int = 30           # KSWIN recent sample compared with the window
    warmup_readings: int = 288          # readings per sensor and channel before alerts may fire
    #                                     (in steps: readings / patch_len, at least 4)
    min_readings: int = 30              # bocpd: readings per sensor before a change may fire
    #                                     (and its first day, on a grid with a daily cycle)
    season_ms: int = 86_400_000         # season of the seasonal-naive reference (0 = off)

    def warmup_steps(self, patch_len: int) -> int:
        """The warm-up in closed steps: ``ceil(warmup_readings / patch_len)``, at least 4."""
        return max(MIN_WARMUP_STEPS, -(-self.warmup_readings // patch_len))

    def validate(self) -> None:
        if self.detector not in ("bocpd", "page_hinkley", "adwin", "kswin"):
            raise ConfigError("drift.detector must be bocpd, page_hinkley, adwin or kswin, "
                              f"not {self.detector!r}")
        if self.expected_run_steps <= 1:
            raise ConfigError("drift.expected_run_steps must be > 1")
        if self.runs < 2:
            raise ConfigError("drift.runs must be >= 2")
        if self.alpha0 < 1:
            raise ConfigError("drift.alpha0 must be >= 1")
        if self.kappa0 <= 0:
            raise ConfigError("drift.kappa0 must be > 0")
        if not 0 <= self.bocpd_threshold < 1:
            raise ConfigError("drift.bocpd_threshold must be in [0, 1) (0: from the budget)")
        if not 0 < self.season_rate <= 1:
            raise ConfigError("drift.season_rate must be in (0, 1]")
        if self.common_mode_min < 0:
            raise ConfigError("drift.common_mode_min must be >= 0 (0: off)")
        if self.history_factor < 0:
            raise ConfigError("drift.history_factor must be >= 0 (0: off)")
        if self.min_effect < 0:
            raise ConfigError("drift.min_effect must be >= 0")
        if self.repeat_factor < 0:
            raise ConfigError("drift.repeat_factor must be >= 0 (0: off)")
        bad = [c for c in self.channels.split("+") if c not in DRIFT_CHANNELS]
        if bad or not self.channels:
            raise ConfigError(f"drift.channels: unknown channel {bad[0] if bad else ''!r} "
                              f"(known: {'+'.join(DRIFT_CHANNELS)})")
        _positive(self, "drift", "threshold", "adwin_delta", "kswin_alpha", "clip")
        if not 0 < self.kswin_stat_size < self.kswin_window:
            raise ConfigError("drift needs 0 < kswin_stat_size < kswin_window")
        for k in ("delta", "warmup_readings", "season_ms", "min_readings"):
            if getattr(self, k) < 0:
                raise ConfigError(f"drift.{k} must be >= 0")


@dataclass
class AnomalyConfig:
    """The anomaly score (``streaming.alerts.anomaly``): detectors on the values and on the forecast
    residual, each calibrated on the sensor's own history, fused into one score."""

    detectors: str = "residual+level+jump+distribution+range"   # fused, '+'-joined
    #                                     (also: context, embedding: see RESULTS.md for why not)
    long_window: int = 2000             # steps of the long-run residual distribution
    short_window: int = 10              # steps of the short moving average that is scored
    level_window: int = 1000            # readings of the windowed Gaussian (level, jump)
    weights: str = "range:0.5+residual:0.05"  # fusion: shares of the false-alarm budget, e.g.
    #                                     'range:0.9' (the others share the rest equally;
    #                                     empty: equal shares, plain Bonferroni)
    range_short: int = 20               # range: readings of the mean also tested for a break
    range_forget: int = 0               # range: readings for an unrevisited range to fade
    #                                     (0: never, the running min and max)
    probation_readings: int = 100       # readings per sensor before it may score > 0
    #                                     (per-step components: readings / patch_len, >= 8)
    tail_mass: float = 0.2              # calibration: fraction of surprises fitted as the tail
    calibration_window: int = 8000      # readings the calibration remembers
    embedding: bool = True              # compute the embedding's distance to its centroid
    #                                     (a drift channel; an anomaly detector if listed)

    def validate(self) -> None:
        _positive(self, "anomaly", "long_window", "short_window", "level_window",
                  "range_short", "probation_readings", "calibration_window")
        if self.range_forget < 0 or self.range_forget == 1:
            raise ConfigError("anomaly.range_forget must be 0 (never) or >= 2")
        if self.short_window >= self.long_window:
            raise ConfigError("anomaly.short_window must be < anomaly.long_window")
        names = [d for d in self.detectors.split("+") if d]
        bad = [d for d in names if d not in ANOMALY_DETECTORS]
        if bad or not names:
            raise ConfigError(f"anomaly.detectors: unknown detector {bad[0] if bad else ''!r} "
                              f"(known: {'+'.join(ANOMALY_DETECTORS)})")
        self.weights_for(names)          # raises on a bad anomaly.weights
        if "embedding" in names and not self.embedding:
            raise ConfigError("anomaly.detectors lists embedding but anomaly.embedding is false")
        if not 0 < self.tail_mass < 0.5:
            raise ConfigError("anomaly.tail_mass must be in (0, 0.5)")

    def weights_for(self, names: list[str]) -> dict[str, float] | None:
        """Each fused component's share of the false-alarm budget (``weights``: the listed
        ones' shares, the rest split equally among the others; None: equal shares)."""
        given: dict[str, float] = {}
        for item in (w for w in self.weights.replace(",", "+").split("+") if w.strip()):
            key, sep, val = item.partition(":")
            try:
                given[key.strip()] = float(val)
            except ValueError:
                given[key.strip()] = float("nan")
            if not sep or not 0 < given[key.strip()] <= 1:
                raise ConfigError(f"anomaly.weights: {item!r} must be NAME:SHARE with "
                                  "0 < SHARE <= 1")
        bad = [k for k in given if k not in ANOMALY_DETECTORS]
        if bad:
            raise ConfigError(f"anomaly.weights: unknown detector {bad[0]!r}")
        given = {k: v for k, v in given.items() if k in names}
        if not given:
            return None
        rest = [d for d in names if d not in given]
        left = 1.0 - sum(given.values())
        if left < -1e-9 or (rest and left <= 1e-9):
            raise ConfigError("anomaly.weights: the shares must sum to at most 1, and below 1 "
                              "when other detectors are fused")
        return {**given, **{d: left / len(rest) for d in rest}}

    def detector_names(self) -> list[str]:
        return [d for d in self.detectors.split("+") if d]

    def value_detectors(self) -> list[str]:
        return [d for d in self.detector_names() if d in VALUE_DETECTORS]


@dataclass
class AlertsConfig:
    """The alert gate: when a detector's evidence becomes an alert
    (``streaming.alerts.alert_gate``)."""

    max_per_10k: float = 1.0            # false-alarm budget: the anomaly threshold is crossed
    #                                     on at most this many readings per 10,000 of a
    #                                     stationary stream (per sensor, self-calibrated)
    anomaly_threshold: float = 0.9      # anomaly score that fires (= the budget's tail)
    anomaly_clear: float = 0.5          # a fired sensor re-arms below this (hysteresis)
    anomaly_critical: float = 0.99      # anomaly score of a "critical" alert
    anomaly_cooldown_steps: int = 24    # steps after an anomaly alert on a sensor
    drift_cooldown_steps: int = 24      # steps after a drift alert on a sensor
    drift_incident_steps: int = 24      # a drift on sensors linked to an incident (shared
    #                                     sensor, graph neighbour, both network-wide) with the
    #                                     same change this many steps after it joins it as an
    #                                     info alert instead of a new incident (0: off)
    merge_hops: int = 1                 # firing graph neighbours merge into one regional alert
    common_mode_min: int = 3            # this many sensors firing in one step: one alert
    #                                     (a network-wide change, e.g. the first rush hour; 0 off)
    event_window_steps: int = 2         # alerts name events this close on their sensors

    def validate(self) -> None:
        if not 0 <= self.anomaly_clear <= self.anomaly_threshold < 1:
            raise ConfigError("alerts needs 0 <= anomaly_clear <= anomaly_threshold < 1")
        if not 0 < self.max_per_10k < 10_000:
            raise ConfigError("alerts.max_per_10k must be in (0, 10000)")
        for k in ("anomaly_cooldown_steps", "drift_cooldown_steps", "drift_incident_steps",
                  "merge_hops",
                  "event_window_steps", "common_mode_min"):
            if getattr(self, k) < 0:
                raise ConfigError(f"alerts.{k} must be >= 0")


@dataclass
class DataQualityConfig:
    """Data-quality alerts per sensor (``streaming.alerts.quality``); 0 turns a check off."""

    silence_readings: int = 24          # grid points without a reading while others report
    flat_readings: int = 36             # identical consecutive readings: a flat line
    suppress: bool = True               # no drift/anomaly alerts on a sensor while it has one

    def validate(self) -> None:
        for k in ("silence_readings", "flat_readings"):
            if getattr(self, k) < 0:
                raise ConfigError(f"data_quality.{k} must be >= 0 (0: off)")
        if self.flat_readings == 1:
            raise ConfigError("data_quality.flat_readings must be 0 (off) or >= 2")


SEASON_NAMES = ("seasonal_day", "seasonal_week", "seasonal_year")


@dataclass
class BaselinesConfig:
    """The simple forecasters beside the model (``streaming.forecast.baselines``)."""

    seasons: str = "auto"               # auto, or '+'-joined of seasonal_day, seasonal_week,
    #                                     seasonal_year (whole only on a calendar grid)
    ma_points: int = 0                  # moving average over this many observed points (0:
    #                                     max(patch_len, 12))
    max_season_points: int = 2016       # a season longer than this many grid points is off
    hw_alpha: float = 0.5               # Holt-Winters smoothing of the level,
    hw_beta: float = 0.01               # the trend
    hw_gamma: float = 0.1               # and the season (daily; yearly on a month grid)

    def validate(self) -> None:
        if self.seasons != "auto":
            bad = [x for x in self.seasons.split("+") if x not in (*SEASON_NAMES, "")]
            if bad:
                raise ConfigError(f"baselines.seasons must be auto or '+'-joined of "
                                  f"{', '.join(SEASON_NAMES)}; got {self.seasons!r}")
        if self.ma_points < 0:
            raise ConfigError("baselines.ma_points must be >= 0")
        _positive(self, "baselines", "max_season_points")
        for k in ("hw_alpha", "hw_beta", "hw_gamma"):
            if not 0 <= getattr(self, k) <= 1:
                raise ConfigError(f"baselines.{k} must be in [0, 1], got {getattr(self, k)!r}")


EXPERTS = ("model", "frozen", "persistence", "moving_average", *SEASON_NAMES, "holt_winters")


@dataclass
class ServeConfig:
    """The served forecast: experts weighted online (``streaming.forecast.experts``), then
    bounded."""

    experts: str = "+".join(EXPERTS)    # '+'-joined; seasons absent from [baselines] are off
    combine: str = "auto"               # mix: the mean weighted by each expert's loss;
    #                                     convex: by the mix's (exponentiated gradient);
    #                                     auto: the best of those two, the network's mix
    #                                     (losses pooled over the sensors) and its top
    #                                     expert; leader: the top expert's
    #                                     (streaming.forecast.experts)
    network_weights: bool = True        # auto also weighs the network's mix and top expert
    #                                     (losses pooled over the sensors this worker owns;
    #                                     false: per-sensor weights only, so that halo
    #                                     regions forecast exactly as one region)
    eta: float = 0.0                    # learning rate of the exponential weights; 0: tuned
    #                                     online per sensor and horizon point (AdaHedge)
    share: float = 0.001                # fixed share at the current rate: weight every
    #                                     expert keeps, to recover when the best one changes
    loss: str = "absolute"              # what the weights learn from: the absolute or the
    #                                     squared error in units of the sensor's scale
    loss_clip: float = 9.0              # squared normalized error is clipped here (3 std;
    #                                     the absolute one at its root)
    bounds: dict[str, list[float]] = field(default_factory=dict)
    # ^ per-sensor [min, max] of served forecasts; keys are sensor ids or globs ("pm25/*")
    impute: bool = True                 # fill gaps in the model's context with its masked-
    #                                     patch head (a window-normalized backbone only)
    interval_rate: float = 0.5          # adaptive-conformal step of the p10/p90 bounds
    #                                     width (streaming.forecast.intervals; 0 = uncalibrated)
    frozen_sleep_steps: int = 48        # after this many steps with the frozen copy's weight
    #                                     below 2 % at every horizon point of a sensor, it
    #                                     forecasts that sensor on one step in 8 (its weights
    #                                     and the guard learn there); a drift alert or its
    #                                     weight back above 2 % wakes it (0: always)
    observed_margin: float = 0.25       # also within the observed range widened by this
    #                                     share of it (a negative value: off); a sensor never
    #                                     seen below 0 is not forecast below 0

    def validate(self) -> None:
        bad = [e for e in self.experts.split("+") if e not in EXPERTS]
        if bad or not self.experts:
            raise ConfigError(f"serve.experts: unknown expert {bad[0] if bad else ''!r} "
                              f"(known: {'+'.join(EXPERTS)})")
        if self.combine not in ("auto", "mix", "convex", "leader"):
            raise ConfigError(f"serve.combine must be auto, mix, convex or leader, not "
                              f"{self.combine!r}")
        if self.loss not in ("absolute", "squared"):
            raise ConfigError(f"serve.loss must be absolute or squared, not {self.loss!r}")
        _positive(self, "serve", "loss_clip")
        if not self.eta >= 0:
            raise ConfigError(f"serve.eta must be >= 0 (0: tuned online), got {self.eta!r}")
        if self.interval_rate < 0:
            raise ConfigError(f"serve.interval_rate must be >= 0, got {self.interval_rate!r}")
        if not 0 <= self.share < 1:
            raise ConfigError(f"serve.share must be in [0, 1), got {self.share!r}")
        if self.frozen_sleep_steps < 0:
            raise ConfigError(f"serve.frozen_sleep_steps must be >= 0 (0: never), got "
                              f"{self.frozen_sleep_steps!r}")
        for key, b in self.bounds.items():
            if (not isinstance(b, list | tuple) or len(b) != 2 or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in b)
                    or not b[0] <= b[1]):
                raise ConfigError(f"serve.bounds.{key} must be [min, max] with min <= max, "
                                  f"got {b!r}")


ADAPT_GROUPS = ("heads", "norms", "adapters")


@dataclass
class AdaptConfig:
    """Online adaptation (DESIGN.md "Online adaptation")."""

    params: str = "all"                 # "all", or '+'-joined groups: heads+norms+adapters
    adapter_dim: int = 8                # bottleneck of the adapter added for "adapters"
    supervised: bool = True             # a step on the forecast loss when truth arrives
    contrastive_weight: float = 0.1     # InfoNCE step on the newest window (0 = off)
    contrastive_every: int = 1          # take that step on every k-th realized window
    checkpoint_lr: float = 3e-4         # learning rate of a model served from a checkpoint
    #                                     (pretrained weights move less; 0 = model.lr)
    replay_size: int = 256              # reservoir of past windows (0 = no replay)
    replay_k: int = 1                   # replayed windows mixed into each supervised step
    penalty: str = "l2sp"               # pull toward the pretrained weights: none|l2sp|ewc
    penalty_weight: float = 1e-3        # weight of that pull
    ewc_decay: float = 0.99             # EMA of squared gradients for the online Fisher
    normalization: str = "running"      # running: all-time stats; checkpoint: its frozen stats
    boost_lr: float = 3.0               # learning-rate factor right after a drift alert
    boost_updates: int = 1              # extra update passes per step while boosted
    boost_steps: int = 48               # steps over which a boost decays back to 1
    rollback_factor: float = 50.0       # loss > factor x running median loss = exploding
    guard: bool = True                  # undo adaptation that makes the model worse than its
    #                                     frozen start: roll back and halve the learning rate
    guard_window: int = 48              # realized forecasts per judgement of the guard (and
    #                                     the memory of its per-sensor comparison)
    guard_tolerance: float = 0.05       # harm: worse than the start by this share of its error
    #                                     over a window (over k windows since the last good
    #                                     weights: this / sqrt(k)); also a sensor's switch band
    guard_sensors: bool = True          # a sensor the adapted weights serve worse than the
    #                                     frozen start is served the start's forecast
    snapshot_every: int = 20            # good updates between snapshots of adapted weights

    def validate(self) -> None:
        if self.params != "all":
            bad = [g for g in self.params.split("+") if g not in ADAPT_GROUPS]
            if bad or not self.params:
                raise ConfigError(f"adapt.params must be 'all' or '+'-joined of "
                                  f"{', '.join(ADAPT_GROUPS)}; got {self.params!r}")
        if self.penalty not in ("none", "l2sp", "ewc"):
            raise ConfigError(f"adapt.penalty must be none, l2sp or ewc, not {self.penalty!r}")
        if self.normalization not in ("running", "checkpoint"):
            raise ConfigError("adapt.normalization must be running or checkpoint, "
                              f"not {self.normalization!r}")
        for k in ("contrastive_weight", "checkpoint_lr", "replay_size", "replay_k",
                  "penalty_weight",
                  "boost_updates", "boost_steps", "guard_tolerance"):
            if getattr(self, k) < 0:
                raise ConfigError(f"adapt.{k} must be >= 0, got {getattr(self, k)!r}")
        _positive(self, "adapt", "adapter_dim", "snapshot_every", "rollback_factor",
                  "contrastive_every", "guard_window")
        if self.boost_lr < 1:
            raise ConfigError(f"adapt.boost_lr must be >= 1, got {self.boost_lr!r}")
        if not self.guard_tolerance < 1:
            raise ConfigError(f"adapt.guard_tolerance must be in [0, 1), got "
                              f"{self.guard_tolerance!r}")
        if not 0 < self.ewc_decay < 1:
            raise ConfigError(f"adapt.ewc_decay must be in (0, 1), got {self.ewc_decay!r}")


PROCESSING_GUARANTEES = ("at_least_once", "exactly_once")   # kafka.processing_guarantee


@dataclass
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"  # Kafka brokers (host:port,...)
    group_id: str = "stfm-worker"       # consumer group of the workers
    readings_topic: str = Topics.readings   # sensor readings in (one partition = a region)
    events_topic: str = Topics.events   # events in (incidents, maintenance, ...)
    forecasts_topic: str = Topics.forecasts  # forecasts out, one message per sensor and step
    alerts_topic: str = Topics.alerts   # drift, anomaly and data-quality alerts out
    dead_letter_topic: str = Topics.dead_letter  # unusable input, with the reason
    partitions: int = 1                 # for topics the worker creates
    partition_map: str | None = None    # sensor -> partition map (`stfm partition`): the
    #                                     regions' layout and events' routing follow it
    boundary_topic: str = "boundary"    # halo exchange between regions (same partitions as
    #                                     readings; used with a partition map and a graph)
    halo: bool = True                   # forward boundary sensors' readings to the regions
    #                                     that have them as graph neighbours (ghosts)
    halo_hops: int = 2                  # graph hops a region's ghosts reach (forecast +
    #                                     imputation pass: 2 graph layers)
    halo_wait_s: float = 30.0           # a region waits for its ghosts' readings while their
    #                                     regions sent something within this many seconds
    max_batch: int = 20_000             # records per fetch
    fetch_timeout_ms: int = 200         # longest wait of one fetch for new records
    fetch_max_wait_ms: int = 10         # broker-side wait of a fetch; 500 (default) stalls
    session_timeout_ms: int = 6000      # a worker silent this long leaves the group
    heartbeat_interval_ms: int = 1000   # heartbeats to the group coordinator
    max_poll_interval_ms: int = 60_000  # longest time between fetches before a rebalance
    connect_timeout_s: float = 60.0     # broker unreachable at start: retry this long, then exit
    retry_backoff_max_s: float = 8.0    # longest wait between retries (doubles from 0.25 s)
    offset_out_of_range: str = "earliest"   # a resume offset past a partition's end or before
    #                                     its start (topic recreated, broker restarted empty,
    #                                     retention): logged as an error, counted, then
    #                                     earliest (re-read what is there), latest or fail
    processing_guarantee: str = "at_least_once"  # or exactly_once: each region's outputs
    #                                     and input offsets commit in one Kafka transaction
    #                                     (read_committed consumers see each output once;
    #                                     aiokafka engine only)
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL
    #                                     (SASL over TLS): every Kafka client of every command
    ssl_cafile: str | None = None       # CA certificates (PEM) the brokers are verified with
    #                                     (None: the system's)
    ssl_certfile: str | None = None     # client certificate (PEM), for brokers that ask for
    #                                     one (mutual TLS)
    ssl_keyfile: str | None = None      # its private key (PEM; None: inside ssl_certfile)
    ssl_check_hostname: bool = True     # a broker's certificate must name the host dialled
    sasl_mechanism: str | None = None   # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)
    sasl_username: str | None = None    # SASL user name (SASL_* only)
    sasl_password_env: str = DEFAULT_PASSWORD_ENV  # environment variable that holds the SASL
    #                                     password (it is never a configuration value)
    sasl_password_file: str | None = None  # or a file that holds it (trailing newline
    #                                     dropped); used instead of the variable when set

    def topics(self) -> Topics:
        """The five topic names as configured."""
        return Topics(self.readings_topic, self.events_topic, self.forecasts_topic,
                      self.alerts_topic, self.dead_letter_topic)

    def validate(self) -> None:
        _positive(self, "kafka", "partitions", "max_batch", "fetch_timeout_ms", "fetch_max_wait_ms",
                  "session_timeout_ms", "heartbeat_interval_ms", "max_poll_interval_ms",
                  "connect_timeout_s", "retry_backoff_max_s")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConfigError("kafka.heartbeat_interval_ms must be < kafka.session_timeout_ms")
        if self.halo_hops < 0:
            raise ConfigError(f"kafka.halo_hops must be >= 0, got {self.halo_hops}")
        if self.offset_out_of_range not in ("earliest", "latest", "fail"):
            raise ConfigError("kafka.offset_out_of_range must be earliest, latest or fail, got "
                              f"{self.offset_out_of_range!r}")
        if self.halo_wait_s < 0:
            raise ConfigError(f"kafka.halo_wait_s must be >= 0, got {self.halo_wait_s}")
        if self.processing_guarantee not in PROCESSING_GUARANTEES:
            raise ConfigError("kafka.processing_guarantee must be at_least_once or "
                              f"exactly_once, got {self.processing_guarantee!r}")
        names = [self.readings_topic, self.events_topic, self.boundary_topic]
        if len(set(names)) != len(names):
            raise ConfigError("kafka.boundary_topic must differ from kafka.readings_topic and "
                              "kafka.events_topic")
        try:
            check_security(self, "kafka")
        except SecurityError as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class CheckpointConfig:
    """Worker checkpoints: all online state + the input offsets it reflects."""

    dir: str | None = None              # checkpoint store (shared by a group's workers)
    every_steps: int = 24               # closed steps between periodic checkpoints
    keep: int = 3                       # checkpoints kept per store

    def validate(self) -> None:
        _positive(self, "checkpoint", "every_steps", "keep")


@dataclass
class ObserveConfig:
    """The live worker's views: Prometheus ``/metrics`` and the live page (port 0: off)."""

    host: str = "127.0.0.1"             # address both listen on ("0.0.0.0": every interface)
    metrics_port: int = 0               # serve Prometheus /metrics here (`--metrics-port`)
    ui_port: int = 0                    # serve the live page here (`stfm run --ui PORT`)
    history_steps: int = 96             # closed steps per sensor the live page keeps
    lag_every_s: float = 2.0            # consumer lag is measured this often
    http_token_env: str = "STFM_HTTP_TOKEN"  # env variable whose value, when set, every
    #                                     request must send as `Authorization: Bearer`;
    #                                     needed when host is beyond loopback
    allowed_hosts: str = ""             # Host names both answer besides loopback and host,
    #                                     comma separated (e.g. the name a proxy forwards)

    def validate(self) -> None:
        env = self.http_token_env
        if not env or "=" in env or "\0" in env or env.strip() != env:
            raise ConfigError(f"observe.http_token_env must name an environment variable, "
                              f"got {env!r}")
        for name in self.allowed_hosts.split(","):
            if any(c in name.strip() for c in " /:@") and not name.strip().startswith("["):
                raise ConfigError(f"observe.allowed_hosts: {name.strip()!r} is not a host name "
                                  f"or address (no port, no scheme; IPv6 in brackets)")
        for key in ("metrics_port", "ui_port"):
            port = getattr(self, key)
            if not 0 <= port <= 65535:
                raise ConfigError(f"observe.{key} must be a TCP port (1-65535) or 0 (off), "
                                  f"got {port!r}")
        if self.metrics_port and self.metrics_port == self.ui_port:
            raise ConfigError(f"observe.metrics_port and observe.ui_port must differ, both "
                              f"are {self.ui_port}")
        _positive(self, "observe", "history_steps", "lag_every_s")


@dataclass
class StreamConfig:
    """Everything the online core and the live worker need."""

    patching: PatchingConfig = field(default_factory=PatchingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    data_quality: DataQualityConfig = field(default_factory=DataQualityConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    graph: str | None = None            # sensor-graph file; fixes the sensor set when given

    def validate(self) -> StreamConfig:
        self.patching.validate()
        self.model.validate()
        self.drift.validate()
        self.adapt.validate()
        self.anomaly.validate()
        self.alerts.validate()
        self.data_quality.validate()
        self.baselines.validate()
        self.serve.validate()
        self.kafka.validate()
        self.checkpoint.validate()
        self.observe.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary_lines(self) -> list[str]:
        """The effective configuration, one line per section (``patching: interval_ms=...``),
        for commands to print at start."""
        return [summary_line(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]


    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamConfig:
        return _build(cls, data, "").validate()

    @classmethod
    def load(cls, path: str | Path | None = None,
             overrides: dict[str, Any] | None = None) -> StreamConfig:
        """Read ``path`` (TOML; optional), apply ``{"section.key": value}`` overrides, validate."""
        return cls.from_dict(read_toml(path, overrides))


def read_toml(path: str | Path | None, overrides: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """The tables of a TOML file (none: empty) with ``{"section.key": value}`` overrides
    applied on top (``None`` values skipped); errors name the file."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {part} is a value, not a table")
        node[last] = value
    return data


def build_section(cls: type, data: Any, section: str) -> Any:
    """A config dataclass from a table, every key type-checked; errors name ``section.key``."""
    return _build(cls, data, f"{section}." if section else "")


def _positive(obj: object, section: str, *names: str) -> None:
    for n in names:
        if getattr(obj, n) <= 0:
            raise ConfigError(f"{section}.{n} must be > 0, got {getattr(obj, n)!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    for name in unknown:
        if f"{prefix}{name}" in REFUSED_KEYS:       # no value in the message: it is a secret
            raise ConfigError(refused_key_message(f"{prefix}{name}"))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        typ = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value, key + ".")
        else:
            kwargs[name] = _coerce(typ, value, key)
    return cls(**kwargs)


def _coerce(typ: Any, value: Any, key: str) -> Any:
    args = typing.get_args(typ)
    if args and type(None) in args:
        if value is None:
            return None
        typ = next(a for a in args if a is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(typ) is dict:
        if isinstance(value, dict):       # --set patching.value_ranges.s1=[0,5] gives a str
            import json

            out = {}
            for k, v in value.items():
                try:
                    out[k] = json.loads(v) if isinstance(v, str) else v
                except ValueError:
                    raise ConfigError(f"{key}.{k} must be JSON/TOML, got {v!r}") from None
            return out
        if isinstance(value, str):        # --set patching.value_ranges='{"s1": [0, 5]}'
            import json

            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                return parsed
        raise ConfigError(f"{key} must be a table, got {value!r}")
    else:  # pragma: no cover - only the types above are used
        return value
    raise ConfigError(f"{key} must be {typ.__name__}, got {value!r}")


def changed_from_defaults(cfg: Any, section: str | None = None) -> list[str]:
    """``section.key=value`` of every key that differs from its default (secrets masked), in
    field order; ``section``: ``cfg`` is that one section."""
    if section is not None:
        pairs = [(section, cfg, type(cfg)())]
    else:
        base = type(cfg)()
        pairs = [(f.name, getattr(cfg, f.name), getattr(base, f.name))
                 for f in dataclasses.fields(cfg)]
    out = []
    for name, value, default in pairs:
        if not dataclasses.is_dataclass(value):
            if value != default:
                out.append(f"{name}={value!r}".replace("'", ""))
            continue
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v != getattr(default, f.name):
                out.append(f"{name}.{f.name}={_shown(f.name, v)!r}".replace("'", ""))
    return out


def summary_line(section: str, value: Any) -> str:
    """``section: key=value ...`` of a config dataclass (or ``section: value``)."""
    if not dataclasses.is_dataclass(value):
        return f"{section}: {value}"
    items = " ".join(f"{f.name}={_shown(f.name, getattr(value, f.name))!r}".replace("'", "")
                     for f in dataclasses.fields(value))
    return f"{section}: {items}"


# keys that would hold a password: refused with a pointer to the environment variable / file
REFUSED_KEYS = frozenset(f"kafka.{k}" for k in PASSWORD_KEYS)
_SECRET_NAME = ("password", "secret", "token")


def _shown(name: str, value: Any) -> Any:
    """A field's value as printed: masked when its name says it holds a secret (not when it
    names where one is kept: ``*_env``, ``*_file``)."""
    if (value is not None and any(w in name for w in _SECRET_NAME)
            and not name.endswith(("_env", "_file"))):
        return "***"
    return value
