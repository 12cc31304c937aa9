"""The served forecast: experts weighted online from their realized errors.

Per sensor and horizon point, over the experts {adapting model, frozen starting model,
persistence, moving average, seasonal naive, ...}. The weights learn only from realized
values (delayed feedback: the forecast made at step j updates them once its horizon has been
observed). Three learners of the same kind (``Hedge``), each per sensor and horizon point:

* ``hedge``: exponential weights on each expert's own loss; its weighted mean (``combine =
  "mix"``) or its top expert (``"leader"``) goes after the best expert;
* ``convex``: exponential weights on the linearized loss of their own mix (exponentiated
  gradient, Kivinen & Warmuth 1997; ``"convex"``) go after the best fixed convex combination
  of the experts: where the experts err differently (long horizons) the mix beats them all;
* ``pool``: exponential weights per horizon point on each expert's loss averaged over the
  sensors: the network's weights. A sensor's own weights learn from one error per step, and
  where experts differ by a few percent (persistence against a model at the first horizon
  points of a random walk) they take hundreds of steps to separate; pooled over N sensors
  the noise falls by sqrt(N);
* ``pick`` (``"auto"``, the default): exponential weights per sensor and horizon point over
  four candidates: the ``hedge`` mix, the ``convex`` mix, the ``pool`` mix and the ``pool``'s
  top expert, so the served forecast is the best candidate's where one is (a single expert
  at the first horizon points, where persistence is hard to beat and any blend costs,
  ``convex`` further out; the network's where a sensor's own weights are still noise).

Loss: the error in units of the sensor's scale, absolute (``loss = "absolute"``, clipped at
``c = sqrt(loss_clip)`` scale units) or squared (clipped at ``c^2 = loss_clip``), divided by
its clip so ``l in [0, 1]`` (the linearized one: ``l_e = sign(mix - y) (f_e - y) / c`` or
``(mix - y)(f_e - y) / c^2``, clipped, in ``[-1, 1]``). An expert without a forecast (a season
not seen yet) "sleeps": it is charged the mixture's loss, which leaves its standing unchanged.

Learning rate: ``eta > 0`` is fixed; ``eta = 0`` (the default) tunes it online per sensor and
horizon point as AdaHedge does (de Rooij, van Erven, Grünwald & Koolen, 2014): ``eta_t =
ln(K) / Delta_t``, ``Delta_t`` the cumulative mixability gap ``sum_s (h_s - m_s)`` of the
weighted loss ``h = w . l`` and the mix loss ``m = -ln(w . exp(-eta l)) / eta``. The rate
follows the losses' actual spread: errors of 0.05 scale units at the first horizon point get
a rate ~20x that of errors of 1 unit at the last, so an expert 5 % worse loses its weight as
fast at either (a fixed rate on the clipped loss cannot tell experts apart at short range).
The weights are re-tempered when the rate changes (``w ~ exp(-eta L)``, ``L`` the cumulative
loss), then a fixed share (Herbster & Warmuth, 1998) at the current rate, ``w <- (1 - share)
w + share / K``, keeps every expert's cumulative loss within ``ln(K / share) / eta`` of the
leader's, so the weights recover after the best expert changes.

Guarantee (per sensor and horizon point, for the clipped loss; T realized forecasts, no
delay): each learner's weighted loss ``sum_t h_t`` is at most its best arm's plus ``ln(K) /
eta_T + Delta_T`` (Hedge with a nonincreasing rate on the cumulative loss), so ``<= 2
Delta_T`` with the tuned rate (AdaHedge's bound: ``O(sqrt(L* (T - L*) ln(K) / T) + ln K)``,
and a constant when one arm is better on average). With a share ``alpha`` and a fixed rate it
stays within ``((m + 1) ln K + m ln(1/alpha) + (T - m - 1) ln(1/(1 - alpha))) / eta +
Delta_T`` of any sequence of arms that switches ``m`` times (Herbster & Warmuth, 1998);
bounds of that form with ``eta_T`` hold for fixed share with nonincreasing rates
(Cesa-Bianchi, Gaillard, Lugosi & Stoltz, 2012), which this re-tempered variant is not proven
here to inherit (the tests check that it recovers). Where no error is clipped the loss is
convex in the forecast: the ``hedge`` mix's loss is at most its weighted loss (Jensen), the
``convex`` mix's is within its linearized regret of the best fixed convex combination's, and
the served one within ``pick``'s regret of the better of the two. The bounds are for
undelayed feedback: with d forecasts pending the weights lag d updates, which costs terms
growing with d (Weinberger & Ordentlich, 2002).
``tests/streaming/forecast/test_experts.py`` checks the consequences on streams with experts
5 % apart, a change of the best and the AdaHedge bound.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LOSSES = ("absolute", "squared")
COMBINE = ("auto", "mix", "convex", "leader")


class Hedge:
    """Exponential weights over ``k`` arms per sensor and horizon point: the rate ``eta`` or,
    ``eta = 0``, AdaHedge's; a fixed ``share`` at the current rate. State: the weights (kept
    arm-first, ``[K, N, H]``, so that sums over the arms are sums of planes) and the
    cumulative mixability gap ``gap`` ``[N, H]``."""

    def __init__(self, k: int, horizon: int, *, eta: float, share: float) -> None:
        self.k, self.h, self.eta, self.share = k, horizon, eta, share
        self.wk = np.full((k, 0, horizon), 1.0 / k)
        self.gap = np.zeros((0, horizon))

    @property
    def w(self) -> np.ndarray:
        """``[N, H, K]`` the weights (a view)."""
        return np.moveaxis(self.wk, 0, -1)

    def grow(self, n: int) -> None:
        if n > self.gap.shape[0]:
            m = n - self.gap.shape[0]
            self.wk = np.concatenate([self.wk, np.full((self.k, m, self.h), 1.0 / self.k)],
                                     axis=1)
            self.gap = np.concatenate([self.gap, np.zeros((m, self.h))])

    def rate(self, gap: np.ndarray | None = None) -> np.ndarray:
        """``[N, H]`` the learning rate (inf: no mixability gap yet, follow the leaders)."""
        gap = self.gap if gap is None else gap
        if self.eta > 0:
            return np.full(gap.shape, float(self.eta))
        with np.errstate(divide="ignore"):
            return np.where(gap > 0, math.log(self.k) / gap, np.inf)

    def mean(self, values: np.ndarray) -> np.ndarray:
        """``[n, H]`` the weighted mean of ``values`` ``[K, n, H]`` over the arms that have
        one (NaN: none has)."""
        return Hedge.mean_with(self.wk[:, :values.shape[1]], values)

    @staticmethod
    def mean_with(w: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``[n, H]`` the mean of ``values`` ``[K, n, H]`` weighted by ``w`` (its shape, or one
        that broadcasts to it) over the arms that have one (NaN: none has)."""
        gone = np.isnan(values)
        per_arm = gone.reshape(values.shape[0], -1)
        some = per_arm.any(axis=1)
        if not some.any():
            return (w * values).sum(axis=0)
        # arm by arm, in the arms' order (the sums of the whole-array form, bit for bit): an
        # arm with every forecast (most) costs one product, one without any (a season not
        # seen yet, on every sensor) nothing
        every = per_arm.all(axis=1)
        num = np.zeros(values.shape[1:])
        tot = np.zeros(values.shape[1:])
        buf = np.empty(values.shape[1:])
        for j in np.flatnonzero(~every).tolist():
            wj = np.broadcast_to(w[j], buf.shape)
            if some[j]:
                keep = ~gone[j]
                wj = np.where(keep, wj, 0.0)
                np.multiply(np.where(keep, values[j], 0.0), wj, out=buf)
            else:
                np.multiply(values[j], wj, out=buf)
            num += buf
            tot += wj
        with np.errstate(invalid="ignore", divide="ignore"):
            out = num / tot
        out[tot == 0] = np.nan
        return out

    def learn(self, loss: np.ndarray, live: np.ndarray) -> None:
        """One round: ``loss`` ``[K, n, H]`` (NaN: the arm sleeps) where ``live`` ``[n, H]``
        (in-place arithmetic: this runs on every sensor at every step)."""
        n = loss.shape[1]
        w, gap = self.wk[:, :n], self.gap[:n]
        gone = np.isnan(loss)
        if gone.any():
            mix = self.mean(loss)
            live = live & ~np.isnan(mix)
            loss = np.where(gone, mix, loss)                # sleeping: the mix's loss
            np.copyto(loss, 0.0, where=~live)
        eta = self.rate(gap)
        fin = np.isfinite(eta)
        # the mixability gap h - m; m = -ln(sum w exp(-eta l)) / eta (eta = inf: the least
        # loss of an arm with weight)
        positive = self.share > 0                           # then every weight is > 0
        lo = (loss if positive else np.where(w > 0, loss, np.inf)).min(axis=0)
        lo[~np.isfinite(lo)] = 0.0
        d = loss - lo
        if not positive:
            np.maximum(d, 0.0, out=d)                       # a weightless arm adds nothing
        d *= -np.where(fin, eta, 0.0)
        np.exp(d, out=d)
        d *= w
        with np.errstate(divide="ignore"):
            m = np.where(fin, lo - np.log(d.sum(axis=0)) / np.where(fin, eta, 1.0), lo)
        d = np.multiply(w, loss, out=d)
        gap = gap + np.where(live, np.maximum(d.sum(axis=0) - m, 0.0), 0.0)
        new = self.rate(gap)
        nfin = np.isfinite(new)
        # re-tempered exponential weights, w ~ exp(-new (L + l)) with L = -ln(w) / eta; at
        # eta = inf the weights are uniform (no loss told the arms apart yet: L = 0)
        z = np.maximum(w, 1e-300)
        np.log(z, out=z)
        z *= np.where(fin, new / np.where(fin, eta, 1.0), 0.0)
        np.multiply(loss, np.where(nfin, new, 0.0), out=d)
        z -= d
        z -= z.max(axis=0)
        np.exp(z, out=z)
        z /= z.sum(axis=0)
        if positive:
            z *= 1.0 - self.share
            z += self.share / self.k
        keep = live & nfin
        np.copyto(w, z, where=keep)
        self.gap[:n] = np.where(live, gap, self.gap[:n])

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.copy(), "gap": self.gap.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wk = np.ascontiguousarray(np.moveaxis(np.array(state["w"], np.float64), -1, 0))
        self.gap = np.array(state["gap"], np.float64)


PICK_ARMS = ("hedge", "convex", "pool", "pool leader")   # what ``pick`` chooses among
#                                                          (the first two without ``network``)


class ExpertWeights:
    """The served mix of ``names`` per sensor and horizon point (see the module docstring)."""

    def __init__(self, names: list[str], horizon: int, *, eta: float, share: float,
                 loss_clip: float, combine: str = "auto", loss: str = "absolute",
                 network: bool = True) -> None:
        if not names:
            raise ValueError("experts: at least one expert is needed")
        if loss not in LOSSES:
            raise ValueError(f"experts: loss must be one of {LOSSES}, not {loss!r}")
        if combine not in COMBINE:
            raise ValueError(f"experts: combine must be one of {COMBINE}, not {combine!r}")
        self.names = list(names)
        self.h = horizon
        self.eta, self.share, self.loss_clip, self.combine_rule = eta, share, loss_clip, combine
        self.loss = loss
        self.network = network
        self.hedge, self.convex, self.pick, self.pool = self._learners()
        self.updates = 0

    def _learners(self) -> tuple[Hedge, Hedge, Hedge, Hedge]:
        e, kw = len(self.names), {"eta": self.eta, "share": self.share}
        pool = Hedge(e, self.h, **kw)
        pool.grow(1)                            # one row: the network
        return (Hedge(e, self.h, **kw), Hedge(e, self.h, **kw),
                Hedge(len(PICK_ARMS) if self.network else 2, self.h, **kw), pool)

    @property
    def w(self) -> np.ndarray:
        """``[N, H, E]`` each expert's weight in the served forecast (``auto``: the two
        mixes' weights blended by ``pick``'s)."""
        return np.moveaxis(self._weights(self.hedge.gap.shape[0]), 0, -1)

    def _weights(self, n: int, j: int | slice = slice(None)) -> np.ndarray:
        """``[E, n, H]`` the served weights of the first ``n`` sensors (``[n, H]`` of expert
        ``j`` alone)."""
        if self.combine_rule == "convex":
            return self.convex.wk[j, :n]
        if self.combine_rule != "auto":
            return self.hedge.wk[j, :n]
        p = self.pick.wk[:, :n]
        w = p[0] * self.hedge.wk[j, :n] + p[1] * self.convex.wk[j, :n]
        if not self.network:
            return w
        return w + p[2] * self.pool.wk[j, :1] + p[3] * self._leader_weights()[j]

    def _leader_weights(self) -> np.ndarray:
        """``[E, 1, H]`` the pool's top expert per horizon point as weights: one-hot, or the
        pool's own weights where no expert leads yet (a tie: nothing learnt)."""
        pool = self.pool.wk[:, :1]
        if len(pool) < 2:
            return pool
        top = (np.arange(len(pool))[:, None, None] == np.argmax(pool, axis=0)[None])
        order = np.sort(pool, axis=0)
        return np.where(order[-1] - order[-2] <= 1e-12, pool, top.astype(np.float64))

    def weight_of(self, name: str, n: int) -> np.ndarray:
        """``[n, H]`` expert ``name``'s weight in the served forecast of the first ``n``
        sensors (``w`` for one expert, without the others')."""
        self._grow(n)
        return self._weights(n, self.names.index(name))

    def _grow(self, n: int) -> None:
        for x in (self.hedge, self.convex, self.pick):
            x.grow(n)

    def _arms(self, forecasts: np.ndarray) -> np.ndarray:
        """``[E, N, H]`` (contiguous) from the experts' ``[N, H, E]``, checked."""
        if forecasts.ndim != 3 or forecasts.shape[1:] != (self.h, len(self.names)):
            raise ValueError(f"experts: forecasts must be [N, {self.h}, {len(self.names)}] "
                             f"({', '.join(self.names)}), got {forecasts.shape}")
        self._grow(forecasts.shape[0])
        return np.ascontiguousarray(np.moveaxis(forecasts, -1, 0), dtype=np.float64)

    def combine(self, forecasts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The served forecast ``[N, H]`` from the experts' ``[N, H, E]`` (NaN: no forecast)
        and each sensor's leader (the expert with the largest mean weight)."""
        fk = self._arms(forecasts)
        n = fk.shape[1]
        rule = self.combine_rule
        if rule == "leader":
            ww = np.where(np.isnan(fk), 0.0, self.hedge.wk[:, :n])
            top = np.argmax(ww, axis=0)
            served = np.take_along_axis(fk, top[None], axis=0)[0]
            served[ww.sum(axis=0) == 0] = np.nan
        elif rule == "mix":
            served = self.hedge.mean(fk)
        elif rule == "convex":
            served = self.convex.mean(fk)
        else:
            served = self.pick.mean(self._candidates(fk))
        leader = np.argmax(self._weights(n).mean(axis=2), axis=0)
        return served, leader

    def _candidates(self, fk: np.ndarray) -> np.ndarray:
        """``[4, n, H]`` what ``pick`` chooses among (``PICK_ARMS``), as they stand
        (``[2, n, H]`` without ``network``)."""
        if not self.network:
            return np.stack([self.hedge.mean(fk), self.convex.mean(fk)])
        mix = Hedge.mean_with(np.broadcast_to(self.pool.wk[:, :1], fk.shape), fk)
        top = Hedge.mean_with(np.broadcast_to(self._leader_weights(), fk.shape), fk)
        return np.stack([self.hedge.mean(fk), self.convex.mean(fk), mix, top])

    def clipped_loss(self, forecasts: np.ndarray, truth: np.ndarray, scale: np.ndarray
                     ) -> np.ndarray:
        """``[N, H, E]`` squared errors in units of each sensor's scale, clipped at
        ``loss_clip`` (NaN where there is no forecast or no truth)."""
        err = (forecasts - truth[..., None]) / scale[:, None, None]
        return np.minimum(err * err, self.loss_clip)

    def _loss(self, fk: np.ndarray, truth: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """``[K, n, H]`` the clipped loss of forecasts ``[K, n, H]`` over its clip, in
        ``[0, 1]`` (NaN where there is no forecast or no truth)."""
        err = np.abs(fk - truth) / scale[:, None]
        if self.loss == "squared":
            return np.minimum(err * err, self.loss_clip) / self.loss_clip
        c = math.sqrt(self.loss_clip)
        return np.minimum(err, c) / c

    def _linear_loss(self, fk: np.ndarray, mix: np.ndarray, truth: np.ndarray,
                     scale: np.ndarray) -> np.ndarray:
        """``[E, n, H]`` the loss of ``mix`` linearized at ``convex``'s weights, in
        ``[-1, 1]``: the gradient of the mix's loss along each expert."""
        c = math.sqrt(self.loss_clip)
        sc = scale[:, None]
        r = (mix - truth) / sc
        d = np.clip((fk - truth) / sc, -c, c)
        if self.loss == "squared":
            return np.clip(r, -c, c) * d / (c * c)
        return np.sign(r) * d / c

    def update(self, forecasts: np.ndarray, truth: np.ndarray, scale: np.ndarray,
               pooled: np.ndarray | None = None) -> None:
        """Learn from one realized forecast: the experts' ``[N, H, E]``, the truth ``[N, H]``
        (NaN: not observed, no update there) and each sensor's scale ``[N]``; ``pooled``
        ``[N]``: the sensors whose losses the network's weights average (default: all; a
        halo region's own sensors, not its ghosts)."""
        n = forecasts.shape[0]
        if truth.shape != forecasts.shape[:2] or scale.shape != (n,):
            raise ValueError(f"experts: truth {truth.shape} and scale {scale.shape} must "
                             f"match the forecasts {forecasts.shape}")
        fk = self._arms(forecasts)
        live = ~np.isnan(truth)
        rule = self.combine_rule
        if rule == "auto":          # the candidates as they stand, before any learns
            cand = self._candidates(fk)
            self.pick.learn(self._loss(cand, truth, scale), live)
            cm = cand[1]
        elif rule == "convex":
            cm = self.convex.mean(fk)
        if rule in ("auto", "convex"):
            self.convex.learn(self._linear_loss(fk, cm, truth, scale), live)
        if rule != "convex":
            loss = self._loss(fk, truth, scale)
            self.hedge.learn(loss, live)
            if rule == "auto" and self.network:   # each expert's mean loss over the sensors
                ok = live[None] & ~np.isnan(loss)
                if pooled is not None:
                    ok &= np.asarray(pooled, bool)[None, :n, None]
                cnt = ok.sum(axis=1)
                mean = np.where(ok, loss, 0.0).sum(axis=1) / np.maximum(cnt, 1)
                self.pool.learn(np.where(cnt > 0, mean, np.nan)[:, None],
                                (cnt > 0).any(axis=0)[None])
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "updates": self.updates,
                **self.hedge.state_dict(), "convex": self.convex.state_dict(),
                "pick": self.pick.state_dict(), "pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(f"experts: the state weighs {state['names']}, the configuration "
                             f"{self.names}")
        self.updates = int(state["updates"])
        self.hedge, self.convex, self.pick, self.pool = self._learners()
        self._grow(np.shape(state["w"])[0])
        # an earlier version's state (weights of another loss and rate, no gap) starts fresh
        if "gap" in state:
            self.hedge.load_state_dict(state)
        for name in ("convex", "pick", "pool"):
            # (a pick over other candidates, or no pool yet: those start fresh)
            sub = state.get(name)
            if sub is not None and np.shape(sub["w"])[-1] == getattr(self, name).k:
                getattr(self, name).load_state_dict(sub)
