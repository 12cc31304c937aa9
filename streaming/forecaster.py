"""The forecaster stage: the model's forecast of every sensor from the context window, on
the input scale, and its learning from realized forecasts.

Inputs are z-scored per sensor with the running normalizer (or, with ``adapt.normalization =
checkpoint``, the pretraining statistics of the sensors the checkpoint knows); forecasts are
mapped back. A non-finite forecast is never served: the sensor gets its last observed value
and the core reports it. When the truth of an earlier forecast arrives, its errors go into the
metrics and the model takes a supervised step on them (a seeded sample of sensors for a
per-sensor model; the whole region for the graph model), and the newest window a contrastive
step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.config import StreamConfig
from streaming.metrics import OnlineMetrics
from streaming.normalization import OnlineNormalizer
from streaming.online import OnlineModel
from streaming.window import ContextWindow, Pending


@dataclass
class Inputs:
    """The model's inputs for the first ``n`` sensors at one step."""

    x: np.ndarray                # float32 [N, K, P] z-scored, 0 where masked
    mask: np.ndarray             # bool [N, K, P]
    side: np.ndarray             # float32 [N, K, 1] log(1 + event count)
    steps: np.ndarray            # int64 [K]
    loc: np.ndarray              # float64 [N]
    scale: np.ndarray            # float64 [N]


class Forecaster:
    """Serves and trains one ``OnlineModel`` for a region (see module docstring)."""

    def __init__(self, cfg: StreamConfig, model: OnlineModel) -> None:
        self.cfg = cfg
        self.model = model
        self.normalizer = OnlineNormalizer()
        self.metrics = OnlineMetrics()
        self.forecasts_made = 0
        self._rng = np.random.default_rng(cfg.model.seed)
        self._learned_at: int | None = None
        self._feedback_stat: np.ndarray | None = None
        self._newest: Inputs | None = None
        self._pinned: dict[str, tuple[float, float]] = {}
        self._pin_idx: tuple | None = None
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
        """Fold a closed step's values into the running normalization."""
        self.normalizer.learn_many(values)

    def inputs(self, window: ContextWindow, sensors: list[str]) -> Inputs:
        n = len(sensors)
        loc, scale = self.scale(sensors)
        raw = window.values[:n]
        mask = ~np.isnan(raw)
        x = np.where(mask, (raw - loc[:, None, None]) / scale[:, None, None], 0.0)
        side = np.log1p(window.events[:n])[..., None].astype(np.float32)
        return Inputs(x.astype(np.float32), mask, side, window.steps(), loc, scale)

    def predict(self, inp: Inputs, sensors: list[str], exists: np.ndarray,
                raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, list[str], Pending]:
        """Forecasts ``[N, H]`` on the input scale, the windows' embeddings, the sensors
        whose forecast was not finite (served their last value), and what waits for truth."""
        if not len(inp.x) == len(sensors) == len(exists) <= len(raw):
            raise ValueError(f"forecaster: {len(inp.x)} input windows for {len(sensors)} "
                             f"sensors, {len(exists)} existence flags and {len(raw)} raw "
                             "windows")
        z, emb = self.model.predict_with_embedding(inp.x, inp.mask, inp.side, steps=inp.steps,
                                                   sensors=sensors)
        yhat = z.astype(np.float64) * inp.scale[:, None] + inp.loc[:, None]
        bad = exists & ~np.isfinite(yhat).all(axis=1)
        if bad.any():
            yhat = yhat.copy()
            for i in np.flatnonzero(bad):
                seen = raw[i][~np.isnan(raw[i])]
                last = seen[-1] if len(seen) else inp.loc[i]
                yhat[i] = last if np.isfinite(last) else 0.0
        self.forecasts_made += int(exists.sum())
        pending = Pending(inp.x, inp.mask, inp.side, inp.loc, inp.scale,
                          np.where(exists[:, None], yhat, np.nan), inp.steps)
        return yhat, emb, [sensors[i] for i in np.flatnonzero(bad)], pending

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
        n = pend.yhat.shape[0]
        y = np.where(np.isnan(pend.yhat), np.nan, y)   # no target for a sensor not yet there
        err = y - pend.yhat
        err_norm = err / pend.scale[:, None]
        self.metrics.add(err, err_norm)
        self.metrics.realized_forecasts += n
        ok = ~np.isnan(err_norm)
        cnt = ok.sum(axis=1)
        stat = np.full(n, np.nan)
        np.divide(np.abs(np.where(ok, err_norm, 0.0)).sum(axis=1), cnt, out=stat, where=cnt > 0)
        self._learn(pend, y, now, sensors)
        self._learned_at = now
        return stat

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
            self.model.contrast_many(inp.x, inp.mask, inp.side, steps=inp.steps,
                                     sensors=sensors, step=step)

    def feedback(self, pend: Pending, y: np.ndarray, step: int, sensors: list[str]) -> None:
        """Immediate feedback (the FSNet/OneNet protocol): learn from a forecast's truth at
        once, then contrast the newest window."""
        y = np.asarray(y, np.float64)[:pend.yhat.shape[0]]
        self._feedback_stat = self._score_and_learn(pend, y, step, sensors)
        inp = self._newest
        if inp is not None:
            self.model.contrast_many(inp.x, inp.mask, inp.side, steps=inp.steps,
                                     sensors=sensors[:len(inp.x)], step=step)

    def boost(self, sensors: list[str], step: int) -> None:
        """A drift alert on ``sensors``: adapt faster there for a while."""
        self.model.boost(sensors, step)

    def drain_events(self) -> list[dict[str, Any]]:
        """Rolled-back updates since the last call (for data-quality alerts)."""
        return self.model.drain_alerts()

    # --- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        newest = None if self._newest is None else dict(vars(self._newest))
        return {"normalizer": self.normalizer.state_dict(), "model": self.model.state_dict(),
                "metrics": self.metrics.state_dict(), "forecasts_made": self.forecasts_made,
                "rng": self._rng.bit_generator.state, "learned_at": self._learned_at,
                "feedback_stat": self._feedback_stat, "newest": newest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state_dict(state["normalizer"])
        self.model.load_state_dict(state["model"])
        self.metrics.load_state_dict(state["metrics"])
        self.forecasts_made = int(state["forecasts_made"])
        self._rng.bit_generator.state = state["rng"]
        la = state["learned_at"]
        self._learned_at = None if la is None else int(la)
        fs = state["feedback_stat"]
        self._feedback_stat = None if fs is None else np.asarray(fs)
        nw = state["newest"]
        self._newest = None if nw is None else Inputs(**{k: np.asarray(v) for k, v in nw.items()})
        self._pin_idx = None
