"""The forecaster stage: the served forecast of every sensor, on the input scale, and the
learning from realized forecasts.

Experts forecast the horizon (``streaming.forecast.experts``): the adapting model (a correction of
persistence: a fresh model *is* persistence), a frozen copy of the starting model, and the
baselines (``streaming.forecast.baselines``). Online exponential weights per sensor and
horizon point pick the mix; the served forecast stays within the sensor's bounds
(``serve.bounds`` and the observed range widened by ``serve.observed_margin``; never below 0
for a sensor never seen below 0). A non-finite forecast is never served: the sensor gets its
last observed value and the core reports it. Where the frozen copy's weight has been
negligible on a sensor for ``serve.frozen_sleep_steps`` steps, it forecasts that sensor on one
step in 8 only (the others: it sleeps, charged the mix's loss), until its weight or a drift
alert wakes it (the two models' forward passes are about half a step's CPU).

Model inputs are z-scored per sensor with the running normalizer (or, with
``adapt.normalization = checkpoint``, the pretraining statistics of the sensors the
checkpoint knows). When the truth of an earlier forecast arrives, the served forecast's and
every expert's errors go into the metrics, the weights learn, and the model takes a
supervised step (a seeded sample of sensors for a per-sensor model; the whole region for the
graph model) and the newest window a contrastive step.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.config import StreamConfig
from streaming.forecast.adaptation import AdaptationGuard
from streaming.forecast.experts import ExpertWeights
from streaming.forecast.intervals import IntervalCalibrator
from streaming.forecast.metrics import OnlineMetrics
from streaming.forecast.normalization import OnlineNormalizer
from streaming.forecast.online import OnlineModel
from streaming.ingest.window import ContextWindow, Pending

FROZEN_NEGLIGIBLE = 0.02   # a frozen-copy weight below this everywhere is negligible
FROZEN_PROBE = 8           # an asleep frozen copy runs on one step in this many


@dataclass
class Inputs:
    """The model's inputs for the first ``n`` sensors at one step."""

    x: np.ndarray                # float32 [N, K, P] z-scored, 0 where masked
    mask: np.ndarray             # bool [N, K, P]
    side: np.ndarray             # float32 [N, K, 1] log(1 + event count)
    steps: np.ndarray            # int64 [K]
    loc: np.ndarray              # float64 [N]
    scale: np.ndarray            # float64 [N]
    imputed: np.ndarray | None = None   # bool [N, K, P]: points filled by the model

    def newest_imputed(self) -> np.ndarray | None:
        """``[N, P]`` imputed values of the newest token on the input scale (NaN: observed
        or not filled); None when nothing of it was filled."""
        if self.imputed is None or not self.imputed[:, -1].any():
            return None
        v = self.x[:, -1].astype(np.float64) * self.scale[:, None] + self.loc[:, None]
        return np.where(self.imputed[:, -1], v, np.nan)


class Forecaster:
    """Serves and trains one ``OnlineModel`` for a region (see module docstring)."""

    def __init__(self, cfg: StreamConfig, model: OnlineModel,
                 baselines: list[str] | None = None) -> None:
        self.cfg = cfg
        self.model = model
        self.normalizer = OnlineNormalizer()
        self.metrics = OnlineMetrics()
        self.forecasts_made = 0
        wanted = cfg.serve.experts.split("+")
        self.experts = [e for e in wanted if e in ("model", "frozen")
                        or e in (baselines or [])]
        if not self.experts:
            raise ValueError(f"forecaster: none of serve.experts={cfg.serve.experts!r} is "
                             "available")
        self.frozen = model.frozen_copy() if "frozen" in self.experts else None
        s = cfg.serve
        self.weights = ExpertWeights(self.experts, cfg.model.horizon, eta=s.eta,
                                     share=s.share, loss_clip=s.loss_clip, combine=s.combine,
                                     loss=s.loss, network=s.network_weights)
        self.expert_metrics = {e: OnlineMetrics() for e in self.experts}
        self.intervals = IntervalCalibrator(cfg.model.horizon, rate=s.interval_rate)
        self.guard = (AdaptationGuard(cfg.adapt, model.adapted_state())
                      if cfg.adapt.guard and "model" in self.experts else None)
        self.obs_min = np.full(0, np.inf)
        self.obs_max = np.full(0, -np.inf)
        self._bounds_cache: dict[str, tuple[float, float]] = {}
        self._rng = np.random.default_rng(cfg.model.seed)
        self._learned_at: int | None = None
        self._feedback_stat: np.ndarray | None = None
        self._newest: Inputs | None = None
        # per sensor, consecutive steps with the frozen expert's weight negligible at every
        # horizon point: past ``serve.frozen_sleep_steps`` it sleeps there (``_frozen_due``)
        self._frozen_low = np.zeros(0, np.int64)
        self.frozen_skipped = 0           # sensor forecasts the frozen copy slept through
        self._pinned: dict[str, tuple[float, float]] = {}
        self._pin_idx: tuple | None = None
        # the region's own sensors (None: all); ghosts (``streaming.ingest.halo``) are not
        # scored or counted
        self.own: np.ndarray | None = None
        extra = model.meta.get("extra", {})
        if cfg.adapt.normalization == "checkpoint":
            if not {"sensors", "loc", "scale"} <= set(extra):
                raise ValueError("adapt.normalization = 'checkpoint' needs a checkpoint with "
                                 "normalization statistics (from `stfm replay pretrain`)")
            self._pinned = {s: (float(m), float(sd)) for s, m, sd in
                            zip(extra["sensors"], extra["loc"], extra["scale"], strict=True)}

    @property
    def version(self) -> str:
        return self.model.version

    # --- serving ------------------------------------------------------------------------

    def scale(self, sensors: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Normalization of ``sensors`` (the first ``len(sensors)`` of the region): the
        running statistics, or the checkpoint's frozen ones for the sensors it knows."""
        n = len(sensors)
        loc, scale = self.normalizer.loc_scale(n)
        if self._pinned:
            if self._pin_idx is None or self._pin_idx[0] != n:   # sensors only ever grow
                rows = [i for i, s in enumerate(sensors) if s in self._pinned]
                self._pin_idx = (n, np.array(rows, np.int64),
                                 np.array([self._pinned[sensors[i]] for i in rows]
                                          ).reshape(-1, 2))
            _, rows, vals = self._pin_idx
            if len(rows):
                loc[rows], scale[rows] = vals[:, 0], vals[:, 1]
        return loc, scale

    def observe(self, values: np.ndarray) -> None:
        """Fold a closed step's values into the running normalization and observed range."""
        self.normalizer.learn_many(values)
        n = values.shape[0]
        if len(self.obs_min) < n:
            pad = n - len(self.obs_min)
            self.obs_min = np.concatenate([self.obs_min, np.full(pad, np.inf)])
            self.obs_max = np.concatenate([self.obs_max, np.full(pad, -np.inf)])
        missing = np.isnan(values)
        lo = np.where(missing, np.inf, values).min(axis=1)
        hi = np.where(missing, -np.inf, values).max(axis=1)
        np.minimum(self.obs_min[:n], lo, out=self.obs_min[:n])
        np.maximum(self.obs_max[:n], hi, out=self.obs_max[:n])

    def bounds(self, sensors: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each sensor's ``[min, max]`` for served forecasts: configured bounds, within the
        observed range widened by ``serve.observed_margin`` of it (a sensor never seen below
        0 gets 0 as its floor)."""
        n = len(sensors)
        lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
        s = self.cfg.serve
        if s.bounds:
            for i, name in enumerate(sensors):
                b = self._bounds_cache.get(name)
                if b is None:
                    b = next(((float(v[0]), float(v[1])) for k, v in s.bounds.items()
                              if k == name or fnmatch.fnmatchcase(name, k)), (-np.inf, np.inf))
                    self._bounds_cache[name] = b
                lo[i], hi[i] = b
        m = s.observed_margin
        if m >= 0 and len(self.obs_min) >= n:
            omin, omax = self.obs_min[:n], self.obs_max[:n]
            seen = np.isfinite(omin)
            span = np.where(seen, omax - omin, 0.0)
            olo = np.where(seen, omin - m * span, -np.inf)
            olo = np.where(seen & (omin >= 0), np.maximum(olo, 0.0), olo)
            ohi = np.where(seen, omax + m * span, np.inf)
            lo, hi = np.maximum(lo, olo), np.minimum(hi, ohi)
        return lo, hi

    def inputs(self, window: ContextWindow, sensors: list[str]) -> Inputs:
        n = len(sensors)
        loc, scale = self.scale(sensors)
        raw = window.values[:n]
        mask = ~np.isnan(raw)
        x = np.where(mask, (raw - loc[:, None, None]) / scale[:, None, None], 0.0)
        side = np.log1p(window.events[:n])[..., None].astype(np.float32)
        x = x.astype(np.float32)
        imputed = None
        if (self.cfg.serve.impute and "model" in self.experts and self.model.can_impute
                and n > 0):
            x, imputed = self.model.impute(x, mask, side, steps=window.steps(),
                                           sensors=sensors)
            mask = mask | imputed
        return Inputs(x, mask, side, window.steps(), loc, scale, imputed)

    def predict(self, inp: Inputs, sensors: list[str], exists: np.ndarray, raw: np.ndarray,
                baselines: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray | None, list[str], Pending, list[str]]:
        """The served forecast ``[N, H]`` on the input scale, the model's window embeddings,
        the sensors whose forecast was not finite (served their last value), what waits for
        truth (with the served forecast's p10/p90 bounds, ``streaming.forecast.intervals``), and
        each sensor's leading expert."""
        n = len(sensors)
        if not len(inp.x) == n == len(exists) <= len(raw):
            raise ValueError(f"forecaster: {len(inp.x)} input windows for {n} sensors, "
                             f"{len(exists)} existence flags and {len(raw)} raw windows")
        h = self.cfg.model.horizon
        cols, emb, offsets = [], None, None
        for e in self.experts:
            if e == "frozen":
                rows = self._frozen_due(int(inp.steps[-1]), n)
                if rows is not None:      # some sensors asleep: charged the mix's loss there
                    col = np.full((n, h), np.nan)
                    if len(rows):
                        z, _ = self.frozen.predict_with_embedding(  # type: ignore[union-attr]
                            inp.x[rows], inp.mask[rows], inp.side[rows], steps=inp.steps,
                            sensors=[sensors[i] for i in rows])
                        col[rows] = (z.astype(np.float64) * inp.scale[rows, None]
                                     + inp.loc[rows, None])
                    self.frozen_skipped += n - len(rows)
                    cols.append(col)
                    continue
            if e in ("model", "frozen"):
                net = self.model if e == "model" else self.frozen
                z, em = net.predict_with_embedding(  # type: ignore[union-attr]
                    inp.x, inp.mask, inp.side, steps=inp.steps, sensors=sensors)
                if e == "model":
                    emb = em
                    q = net.last_quantiles  # type: ignore[union-attr]
                    if q is not None:
                        offsets = q.astype(np.float64) * inp.scale[:, None, None]
                cols.append(z.astype(np.float64) * inp.scale[:, None] + inp.loc[:, None])
            else:
                b = baselines[e]
                if b.shape != (n, h):
                    raise ValueError(f"forecaster: baseline {e} must be [{n}, {h}], "
                                     f"got {b.shape}")
                cols.append(b)
        experts = np.stack(cols, axis=2)                                       # [N, H, E]
        if self.guard is not None:
            self._switch(experts, inp)
        served, leader = self.weights.combine(experts)
        if self.frozen is not None and self.cfg.serve.frozen_sleep_steps:
            low = (self.weights.weight_of("frozen", n) < FROZEN_NEGLIGIBLE).all(axis=1)
            self._frozen_low = np.where(low, _pad(self._frozen_low, n)[:n] + 1, 0)
        blo, bhi = self.bounds(sensors)
        served = np.clip(served, blo[:, None], bhi[:, None])
        bad = exists & ~np.isfinite(served).all(axis=1)
        if bad.any():
            for i in np.flatnonzero(bad):
                seen = raw[i][~np.isnan(raw[i])]
                last = seen[-1] if len(seen) else inp.loc[i]
                served[i] = last if np.isfinite(last) else 0.0
        lo, hi = self.intervals.bounds(served, inp.scale, offsets)
        lo, hi = np.maximum(lo, blo[:, None]), np.minimum(hi, bhi[:, None])
        self.forecasts_made += int((exists if self.own is None or len(self.own) != n
                                    else exists & self.own).sum())
        gone = ~exists[:, None]
        pending = Pending(inp.x, inp.mask, inp.side, inp.loc, inp.scale,
                          np.where(gone, np.nan, served),
                          inp.steps, np.where(gone[..., None], np.nan, experts),
                          np.where(gone, np.nan, lo), np.where(gone, np.nan, hi))
        return (served, emb, [sensors[i] for i in np.flatnonzero(bad)], pending,
                [self.experts[j] for j in leader])

    def _frozen_due(self, step: int, n: int) -> np.ndarray | None:
        """The sensors whose frozen forecast is computed at ``step`` (None: all of them).
        A sensor sleeps when the frozen copy's weight has been negligible there (below
        ``FROZEN_NEGLIGIBLE`` at every horizon point) for ``serve.frozen_sleep_steps``
        steps and the guard does not serve it the frozen forecast; it is still forecast on
        one step in ``FROZEN_PROBE``, where its weights and the guard learn, so a frozen
        copy that becomes useful again wakes up by its weight (or on a drift alert,
        ``boost``). A graph model forecasts the whole region or none of it."""
        s = self.cfg.serve.frozen_sleep_steps
        if not s or step % FROZEN_PROBE == 0:
            return None
        low = _pad(self._frozen_low, n)[:n]
        due = low < s
        if self.guard is not None:
            due |= self.guard.switched(n)
        if due.all():
            return None
        if self.model.is_spatial:
            return None if due.any() else np.zeros(0, np.int64)
        return np.flatnonzero(due)

    # --- learning -----------------------------------------------------------------------

    def realize(self, due: list[tuple[int, Pending, np.ndarray]], now: int,
                sensors: list[str]) -> np.ndarray | None:
        """Score and learn from the forecasts whose truth arrived; the mean absolute
        normalized error per sensor of the newest one (the drift monitors' residual), or
        the one immediate feedback left, or None."""
        stat = None
        for _, pend, y in due:
            stat = self._score_and_learn(pend, y, now, sensors)
        if stat is None and self._feedback_stat is not None:
            stat = self._feedback_stat
        self._feedback_stat = None
        return stat

    def _score_and_learn(self, pend: Pending, y: np.ndarray, now: int,
                         sensors: list[str]) -> np.ndarray:
        """Metrics of the served forecast and of every expert, the weights' update and the
        model's; returns the model's mean absolute normalized error per sensor (the drift
        monitors' residual; the served one's without a model expert)."""
        n = pend.yhat.shape[0]
        y = np.where(np.isnan(pend.yhat), np.nan, y)   # no target for a sensor not yet there
        # scored: the region's own sensors (a ghost is scored by its own region)
        own = (slice(None) if self.own is None or len(self.own) != n
               else np.flatnonzero(self.own))
        err = (y - pend.yhat)[own]
        scale = pend.scale[own, None]
        self.metrics.add(err, err / scale)
        self.metrics.realized_forecasts += len(err)
        for j, e in enumerate(self.experts):
            ej = (y - pend.experts[..., j])[own]
            self.expert_metrics[e].add(ej, ej / scale)
            self.expert_metrics[e].realized_forecasts += len(ej)
        self.weights.update(pend.experts, y, pend.scale,
                            None if isinstance(own, slice) else self.own)
        if pend.lo is not None and pend.hi is not None:
            self.intervals.learn(y, pend.yhat, pend.lo, pend.hi)
        if self.guard is not None:
            self._guard(pend, y, now)
        own = pend.experts[..., self.experts.index("model")] if "model" in self.experts \
            else pend.yhat
        err_norm = (y - own) / pend.scale[:, None]
        ok = ~np.isnan(err_norm)
        cnt = ok.sum(axis=1)
        stat = np.full(n, np.nan)
        np.divide(np.abs(np.where(ok, err_norm, 0.0)).sum(axis=1), cnt, out=stat, where=cnt > 0)
        self._learn(pend, y, now, sensors)
        self._learned_at = now
        return stat

    def _reference(self) -> str | None:
        """What the guard compares the adapting model with: its frozen start, else
        persistence (None: neither is served)."""
        ref = "frozen" if "frozen" in self.experts else "persistence"
        return ref if ref in self.experts else None

    def _switch(self, experts: np.ndarray, inp: Inputs) -> None:
        """Sensors the guard has switched get the reference's forecast as the model's; the
        adapted ones are held for the guard until their truth arrives."""
        assert self.guard is not None
        ref = self._reference()
        sw = self.guard.switched(experts.shape[0]) if ref is not None else None
        if sw is None or not sw.any():
            return
        m, r = self.experts.index("model"), self.experts.index(ref)
        self.guard.hold(int(inp.steps[-1]), experts[..., m].copy())
        rows = sw[:, None] & np.isfinite(experts[..., r])
        experts[..., m] = np.where(rows, experts[..., r], experts[..., m])

    def _guard(self, pend: Pending, y: np.ndarray, now: int) -> None:
        """Adaptation must not leave the model worse than its start (``AdaptationGuard``):
        the adapted forecasts (those the guard held for switched sensors) against the
        reference's, by the absolute error in units of each sensor's scale."""
        assert self.guard is not None
        ref = self._reference()
        if ref is None:
            return
        made_at = int(pend.steps[-1])
        adapted = self.guard.take(made_at)
        if adapted is None:
            adapted = pend.experts[..., self.experts.index("model")]
        reference = pend.experts[..., self.experts.index(ref)]
        scale = pend.scale[:, None]
        lm = np.abs(adapted - y) / scale
        lr = np.abs(reference - y) / scale
        ok = np.isfinite(lm) & np.isfinite(lr)
        if not ok.any():
            return
        cnt = ok.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.guard.observe_sensors(np.where(ok, lm, 0.0).sum(axis=1) / cnt,
                                       np.where(ok, lr, 0.0).sum(axis=1) / cnt)
        restore = self.guard.observe(float(lm[ok].mean()), float(lr[ok].mean()),
                                     self.model.n_updates, made_at=made_at, now=now)
        if restore is not None:
            self.model.restore_adapted(restore)
        else:
            self.guard.remember(self.model.adapted_state, self.model.n_updates)
        self.model.lr_scale = self.guard.lr_scale

    def _learn(self, pend: Pending, y: np.ndarray, now: int, sensors: list[str]) -> None:
        """The supervised update on a realized forecast (shared by both feedback modes)."""
        y_mask = ~np.isnan(y)
        y_norm = ((np.nan_to_num(y) - pend.loc[:, None]) / pend.scale[:, None])
        # the graph layer needs the whole region; a per-sensor model may take a sample
        rows = np.arange(len(y)) if self.model.is_spatial else self._learn_rows(y_mask)
        self.model.learn_many(pend.x[rows], pend.mask[rows], pend.side[rows],
                              y_norm[rows].astype(np.float32), y_mask[rows],
                              steps=pend.steps, sensors=[sensors[i] for i in rows], step=now)

    def _learn_rows(self, y_mask: np.ndarray) -> np.ndarray:
        """Sensors of one online step: all with a target, or a seeded sample of them."""
        rows = np.flatnonzero(y_mask.any(axis=1))
        b = self.cfg.model.learn_batch
        if b and len(rows) > b:
            rows = np.sort(self._rng.choice(rows, size=b, replace=False))
        return rows

    def after_step(self, inp: Inputs, step: int, sensors: list[str]) -> None:
        """Keep the newest window; when truth arrived this step, contrast it too."""
        self._newest = inp
        if self._learned_at == step:
            self._contrast(inp, sensors, step)

    def _contrast(self, inp: Inputs, sensors: list[str], step: int) -> None:
        """The contrastive update on the newest window: like the supervised one, on a seeded
        sample of ``model.learn_batch`` sensors for a per-sensor model (InfoNCE's negatives
        are the sample's other sensors), on the whole region for a graph model."""
        n = min(len(inp.x), len(sensors))
        rows = np.arange(n)
        b = self.cfg.model.learn_batch
        if not self.model.is_spatial and b and n > b:
            rows = np.sort(self._rng.choice(n, size=b, replace=False))
        self.model.contrast_many(inp.x[rows], inp.mask[rows], inp.side[rows], steps=inp.steps,
                                 sensors=[sensors[i] for i in rows], step=step)

    def feedback(self, pend: Pending, y: np.ndarray, step: int, sensors: list[str]) -> None:
        """Immediate feedback (the FSNet/OneNet protocol): learn from a forecast's truth at
        once, then contrast the newest window."""
        y = np.asarray(y, np.float64)[:pend.yhat.shape[0]]
        self._feedback_stat = self._score_and_learn(pend, y, step, sensors)
        inp = self._newest
        if inp is not None:
            self._contrast(inp, sensors, step)

    def expert_mae(self, expert: str) -> float:
        """Cumulative online MAE of one expert's forecasts (NaN when it is not served)."""
        m = self.expert_metrics.get(expert)
        return m.mae if m is not None else math.nan

    def boost(self, sensors: list[str], step: int) -> None:
        """A drift alert on ``sensors``: adapt faster there for a while, and wake the frozen
        copy on every sensor (the adapted weights may no longer fit)."""
        self.model.boost(sensors, step)
        self._frozen_low[:] = 0

    def drain_events(self) -> list[dict[str, Any]]:
        """Rolled-back updates since the last call (for model alerts)."""
        return self.model.drain_alerts()

    # --- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        newest = None if self._newest is None else dict(vars(self._newest))
        return {"normalizer": self.normalizer.state_dict(), "model": self.model.state_dict(),
                "metrics": self.metrics.state_dict(), "forecasts_made": self.forecasts_made,
                "weights": self.weights.state_dict(), "obs_min": self.obs_min.copy(),
                "guard": None if self.guard is None else self.guard.state_dict(),
                "obs_max": self.obs_max.copy(),
                "expert_metrics": {e: m.state_dict() for e, m in self.expert_metrics.items()},
                "rng": self._rng.bit_generator.state, "learned_at": self._learned_at,
                "feedback_stat": self._feedback_stat, "newest": newest,
                "intervals": self.intervals.state_dict(), "frozen_low": self._frozen_low.copy(),
                "frozen_skipped": self.frozen_skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state_dict(state["normalizer"])
        self.model.load_state_dict(state["model"])
        self.metrics.load_state_dict(state["metrics"])
        self.forecasts_made = int(state["forecasts_made"])
        self.weights.load_state_dict(state["weights"])
        if self.guard is not None and state["guard"] is not None:
            self.guard.load_state_dict(state["guard"])
            self.model.lr_scale = self.guard.lr_scale
        self.obs_min = np.array(state["obs_min"], np.float64)
        self.obs_max = np.array(state["obs_max"], np.float64)
        for e, m in state["expert_metrics"].items():
            self.expert_metrics[e].load_state_dict(m)
        self._rng.bit_generator.state = state["rng"]
        la = state["learned_at"]
        self._learned_at = None if la is None else int(la)
        fs = state["feedback_stat"]
        self._feedback_stat = None if fs is None else np.asarray(fs)
        nw = state["newest"]
        self._newest = None if nw is None else Inputs(**{
            k: None if v is None else np.asarray(v) for k, v in nw.items()})
        self._pin_idx = None
        # (earlier versions: all awake)
        self._frozen_low = np.asarray(state.get("frozen_low", np.zeros(0)), np.int64).copy()
        self.frozen_skipped = int(state.get("frozen_skipped", 0))
        if state.get("intervals") is not None:      # absent in an earlier version's state
            self.intervals.load_state_dict(state["intervals"])


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` extended with zeros to at least ``n`` entries."""
    return a if len(a) >= n else np.concatenate([a, np.zeros(n - len(a), a.dtype)])
