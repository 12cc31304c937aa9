"""One contract for every stateful stage of the online core (river's estimator-checks idea).

Each stage gets a driver: how to make it (seeded), the k-th input of a deterministic stream
and what it returns for it, and one bad input. The same checks then run on every stage:

- its state goes through the worker's checkpoint format (``encode_state`` → ``torch.save`` →
  ``torch.load(weights_only=True)`` → ``decode_state``) into a fresh stage, and both give
  identical outputs from then on;
- two stages made and fed alike give identical outputs (determinism under a seed);
- bad input raises ``ValueError`` with a message that names the stage.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from connectors.schemas import Alert, ReadingBatch
from streaming.alerts.alert_gate import AlertGate, Evidence
from streaming.alerts.anomaly import AnomalyScorer
from streaming.alerts.changepoint import ChangeMonitor
from streaming.alerts.detectors import ADWINArray, KSWINArray, PageHinkleyArray
from streaming.alerts.drift import DriftMonitor
from streaming.alerts.quality import DataQuality
from streaming.alerts.signals import Signals
from streaming.config import StreamConfig
from streaming.forecast.baselines import Baselines
from streaming.forecast.forecaster import Forecaster
from streaming.forecast.intervals import IntervalCalibrator
from streaming.forecast.metrics import OnlineMetrics
from streaming.forecast.normalization import OnlineNormalizer
from streaming.forecast.online import OnlineModel
from streaming.ingest.patching import ClosedStep, IncrementalPatcher
from streaming.ingest.registry import SensorRegistry
from streaming.ingest.window import ContextWindow, Pending
from streaming.pipeline.core import StreamCore
from streaming.runtime.checkpoint import decode_state, encode_state

N, P, IV = 6, 4, 300_000
T0 = 1_767_225_600_000
CFG = StreamConfig.from_dict({"patching": {"interval_ms": IV, "patch_len": P, "lateness_ms": 0},
                              "model": {"context_patches": 4, "horizon": 6, "d_model": 8,
                                        "n_heads": 2, "n_layers": 1},
                              "drift": {"warmup_readings": 3 * P, "season_ms": 4 * P * IV},
                              "anomaly": {"probation_readings": 12, "long_window": 50,
                                          "calibration_window": 200}})
NAMES = [f"s{i}" for i in range(N)]


def _values(k: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + k)
    v = 10 + np.sin(np.arange(N)[:, None] + (k * P + np.arange(P))[None] / 5)
    v = v + 0.1 * rng.normal(size=(N, P)) + (3.0 if k in (17, 18) else 0.0)
    v[rng.random((N, P)) < 0.05] = np.nan
    return v


def _closed(k: int) -> ClosedStep:
    ev = np.zeros(N, np.float32)
    ev[k % N] = float(k % 3 == 0)
    return ClosedStep(step=1000 + k, start_ts=0, end_ts=T0 + (k + 1) * P * IV,
                      values=_values(k), events=ev, n_readings=N * P)


def _readings(k: int) -> ReadingBatch:
    v = _values(k)
    rows = [(s, T0 + (k * P + j) * IV, v[i, j]) for j in range(P) for i, s in enumerate(NAMES)]
    if k == 9:
        rows.insert(3, ("s2", T0 + (k * P + 200) * IV, 1.0))     # stamped far ahead
    if k == 11:
        rows.append(("s1", T0, 1.0))                              # late
    return ReadingBatch([r[0] for r in rows], np.array([r[1] for r in rows], np.int64),
                        np.array([r[2] for r in rows]), np.arange(len(rows)))


@dataclass
class Driver:
    make: Callable[[], Any]
    feed: Callable[[Any, int], Any]          # the stage's output for input k
    bad: Callable[[Any], Any]                # one bad input: must raise ValueError
    name: str                                # what the error message names


def _model() -> OnlineModel:
    return OnlineModel.fresh(CFG.patching, CFG.model, CFG.adapt)


def _inductive_model() -> OnlineModel:
    """A tiny corpus-style backbone: window-normalized, Fourier calendar, quantile head."""
    from models.backbone import STBackbone, STBackboneConfig

    torch.manual_seed(0)
    net = STBackbone(STBackboneConfig.inductive(
        patch_len=P, context_patches=4, horizon=6, d_model=8, n_heads=2, n_layers=1,
        lap_pe_dim=0, graph=False))
    with torch.no_grad():
        net.forecast_head.weight.normal_(std=0.1)
    m = OnlineModel(net, CFG.model, name="inductive", adapt=CFG.adapt)
    m.step_ms = IV * P
    return m


def _intervals_feed(ic: IntervalCalibrator, k: int) -> Any:
    rng = np.random.default_rng(k)
    served = rng.normal(size=(N, 6))
    lo, hi = ic.bounds(served, np.ones(N), None if k % 2 else np.ones((N, 2, 6)))
    ic.learn(served + rng.normal(size=(N, 6)), served, lo, hi)
    return lo, hi


class _ForecasterRig:
    """A forecaster with the window and baselines it reads (their state is the rig's)."""

    def __init__(self) -> None:
        self.window = ContextWindow(4, P, 6)
        self.base = Baselines(CFG)
        self.f = Forecaster(CFG, _model(), self.base.names)

    def step(self, k: int) -> Any:
        st = _closed(k)
        self.window.push(st)
        stat = self.f.realize(self.window.due(st.step), st.step, NAMES)
        self.f.observe(st.values)
        self.base.update(st)
        inp = self.f.inputs(self.window, NAMES)
        yhat, emb, bad, pend, leader = self.f.predict(inp, NAMES, np.ones(N, bool),
                                                      self.window.values,
                                                      self.base.forecast(N, st.end_ts))
        self.window.remember(st.step, pend)
        self.f.after_step(inp, st.step, NAMES)
        return yhat, emb, bad, stat, leader, self.f.version

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window.state_dict(), "base": self.base.state_dict(),
                "f": self.f.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.load_state_dict(state["window"])
        self.base.load_state_dict(state["base"])
        self.f.load_state_dict(state["f"])


def _signals_feed(sg: Signals, k: int) -> Any:
    st = _closed(k)
    prev = Pending(*(np.zeros(1),) * 5, yhat=np.full((N, 6), 10.0), steps=np.zeros(4),
                   experts=np.full((N, 6, 1), 10.0))
    prev.scale = np.ones(N)
    emb = np.random.default_rng(k).normal(size=(N, 8))
    return (sg.nowcast(st, prev), sg.seasonal(st, np.ones(N)), sg.embedding_distance(emb, N))


def _quality_feed(q: DataQuality, k: int) -> Any:
    st = _closed(k)
    if 5 <= k < 9 or 14 <= k < 20:
        st.values[0] = np.nan                    # s0 goes silent twice
    if 3 <= k < 16:
        st.values[1] = 7.0                       # s1 flat for a while
    return q.update(st), q.suppressed.copy()


def _gate_feed(g: AlertGate, k: int) -> Any:
    scores = np.clip(np.random.default_rng(k).random(N) * 1.2, 0, 1)
    ev = {s: Evidence(float(v), "anomaly-likelihood", "residual", f"x{k}")
          for s, v in zip(NAMES, scores, strict=True) if v >= 0.9}
    drift = {NAMES[k % N]: Evidence(4.0, "page_hinkley", "abs_residual", "fired")} \
        if k % 4 == 0 else {}
    return (g.update("anomaly", k, T0 + k, ev, NAMES, scores) +
            g.update("drift", k, T0 + k, drift))


def _core_driver(model: Callable[[], OnlineModel]) -> Driver:
    """The whole core around ``model`` (a bad batch: mismatched columns)."""
    return Driver(lambda: StreamCore(CFG, model()), lambda c, k: c.process(_readings(k)),
                  lambda c: c.process(ReadingBatch(["a", "b"], np.zeros(1, np.int64),
                                                   np.zeros(2), np.zeros(2))),
                  "patcher")


DRIVERS = {
    "patcher": Driver(
        lambda: IncrementalPatcher(CFG.patching, SensorRegistry()),
        lambda p, k: (p.update(_readings(k)), p.last_admission),
        lambda p: p.admit(ReadingBatch(["a"], np.zeros(0, np.int64), np.zeros(1), np.zeros(1))),
        "patcher"),
    "window": Driver(
        lambda: ContextWindow(4, P, 6),
        lambda w, k: (w.push(_closed(k)), w.remember(1000 + k, Pending(
            np.zeros((N, 4, P), np.float32), np.ones((N, 4, P), bool),
            np.zeros((N, 4, 1), np.float32), np.zeros(N), np.ones(N), np.full((N, 6), 1.0 * k),
            np.arange(4), np.full((N, 6, 2), 2.0 * k))), w.due(1000 + k), w.values.copy()),
        lambda w: w.push(ClosedStep(1, 0, 1, np.zeros((N, P + 1)), np.zeros(N), 0)),
        "context window"),
    "normalizer": Driver(
        OnlineNormalizer, lambda nz, k: (nz.learn_many(_values(k)), nz.loc_scale(N)),
        lambda nz: nz.learn_many(np.zeros(3)), "normalizer"),
    "forecaster": Driver(_ForecasterRig, lambda r, k: r.step(k),
                         lambda r: r.f.predict(r.f.inputs(r.window, NAMES[:2]), NAMES,
                                               np.ones(N, bool), r.window.values, {}),
                         "forecaster"),
    "baselines": Driver(lambda: Baselines(CFG),
                        lambda b, k: (b.update(_closed(k)), b.forecast(N, _closed(k).end_ts)),
                        lambda b: b.update(ClosedStep(1, 0, 1, np.zeros((N, P + 2)),
                                                      np.zeros(N), 0)),
                        "baselines"),
    "signals": Driver(lambda: Signals(CFG), _signals_feed,
                      lambda sg: sg.seasonal(_closed(0), np.ones(2)), "signals"),
    "scorer": Driver(
        lambda: AnomalyScorer(CFG),
        lambda sc, k: sc.update(k, T0, NAMES, np.abs(_values(k)[:, 0] - 10),
                                np.abs(_values(k)[:, 1] - 10), _values(k), explain_at=0.5),
        lambda sc: sc.update(0, 0, NAMES, np.zeros(2), None, explain_at=0.5),
        "anomaly scorer"),
    "changes": Driver(
        lambda: ChangeMonitor(dataclasses.replace(CFG.drift, min_readings=2 * P), 1.0, IV, P),
        lambda d, k: {s: e.text for s, e in d.update(NAMES, 1000 + k, T0 + k * P * IV,
                                                      _values(k)).items()},
        lambda d: d.update(["a"], 0, 0, np.zeros((2, P))), "change monitor"),
    "drift": Driver(
        lambda: DriftMonitor(CFG.drift, patch_len=P),
        lambda d, k: d.update(NAMES, {"abs_residual": np.abs(_values(k)[:, 0] - 10),
                                      "seasonal_residual": np.abs(_values(k)[:, 2] - 10)}),
        lambda d: d.update(NAMES, {"abs_residual": np.zeros((2, 2))}), "drift monitor"),
    **{f"drift-{det}": Driver(
        lambda det=det: DriftMonitor(dataclasses.replace(CFG.drift, detector=det,
                                                         kswin_window=10, kswin_stat_size=4,
                                                         kswin_alpha=0.05, adwin_delta=0.05),
                                     patch_len=P),
        lambda d, k: d.update(NAMES, {"abs_residual": np.abs(_values(k)[:, 0] - 10)
                                      * (3.0 if k >= 14 else 1.0),
                                      "seasonal_residual": np.abs(_values(k)[:, 2] - 10)}),
        lambda d: d.update(NAMES, {"abs_residual": np.zeros((2, 2))}), "drift monitor")
       for det in ("adwin", "kswin")},
    # the array change detectors alone: one stream per sensor, a level shift at k = 14
    **{name: Driver(make, lambda d, k: d.update(_values(k)[:, 0] + 10.0 * (k >= 14), k),
                    lambda d: d.update(np.zeros((N, 2))), name)
       for name, make in (("Page-Hinkley", lambda: PageHinkleyArray(0.1, 2.0)),
                          ("ADWIN", lambda: ADWINArray(0.05, clock=1, grace_period=4)),
                          ("KSWIN", lambda: KSWINArray(0.05, 10, 4, seed=1)))},
    "quality": Driver(lambda: DataQuality(CFG), _quality_feed,
                      lambda q: q.update(ClosedStep(1, 0, 1, np.zeros(2), np.zeros(2), 0)),
                      "data quality"),
    "gate": Driver(lambda: AlertGate(CFG), _gate_feed,
                   lambda g: g.update("nope", 0, 0, {}), "alert gate"),
    "metrics": Driver(
        OnlineMetrics, lambda m, k: (m.add(_values(k) - 10, _values(k) - 10), m.as_dict()),
        lambda m: m.load_state_dict({"n": "many"}), "metrics"),
    "intervals": Driver(lambda: IntervalCalibrator(6), _intervals_feed,
                        lambda ic: ic.bounds(np.zeros((N, 5)), np.ones(N)), "intervals"),
    "core-inductive": _core_driver(_inductive_model),
    "core": _core_driver(_model),
}


def _same(a: Any, b: Any, where: str = "output") -> None:
    """Recursive exact equality over arrays, tensors, dataclasses, Alerts and containers
    (dataclass fields declared ``compare=False``, such as wall-clock timings, excepted)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, Alert):
        assert a.to_dict() == b.to_dict(), where
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        for f in dataclasses.fields(a):
            if f.compare:
                _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _through_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(encode_state(state), buf)
    buf.seek(0)
    return decode_state(torch.load(buf, weights_only=True))


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_state_round_trips_through_the_checkpoint_format(name: str) -> None:
    d = DRIVERS[name]
    torch.manual_seed(0)
    a = d.make()
    for k in range(12):
        d.feed(a, k)
    torch.manual_seed(0)
    b = d.make()
    b.load_state_dict(_through_checkpoint(a.state_dict()))
    for k in range(12, 24):
        _same(d.feed(a, k), d.feed(b, k), f"{name} input {k}")


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_same_seed_same_outputs(name: str) -> None:
    d = DRIVERS[name]
    torch.manual_seed(0)
    a = d.make()
    torch.manual_seed(0)
    b = d.make()
    for k in range(20):
        _same(d.feed(a, k), d.feed(b, k), f"{name} input {k}")


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_bad_input_is_rejected_with_a_clear_error(name: str) -> None:
    d = DRIVERS[name]
    stage = d.make()
    for k in range(3):
        d.feed(stage, k)
    with pytest.raises(ValueError, match=d.name):
        d.bad(stage)


def test_every_stage_of_the_core_is_covered() -> None:
    from streaming.pipeline.core import STAGES

    assert set(STAGES) - {"forecaster"} <= set(DRIVERS)
    assert "forecaster" in DRIVERS and "core" in DRIVERS
