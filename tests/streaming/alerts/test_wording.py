"""Alert wording: the usual range next to a magnitude, one suggested check per kind, no
detector internals in the sentence."""

import re

import numpy as np
import pytest

from connectors.schemas import Alert, ReadingBatch
from replay.simulator import DriftSpec, SimConfig, simulate
from streaming.alerts.wording import CHECKS, check_for, finish, usual_range
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore


def _alert(kind: str, statistic: str = "level", **detail) -> Alert:
    return Alert(id="x", kind=kind, sensors=["s1"], ts=0, step=1, severity="warning",
                 detector="d", statistic=statistic, text="s1: something", detail=detail)


def test_usual_range_is_the_5th_to_95th_percentile_of_finite_values() -> None:
    v = np.r_[np.arange(101, dtype=float), np.nan, np.inf]
    assert usual_range(v) == pytest.approx((5.0, 95.0))
    assert usual_range(np.array([1.0, 2.0, np.nan])) is None     # too few readings


@pytest.mark.parametrize(("detail", "key"), [
    ({"change": "level", "value_direction": "up"}, ("drift", "level")),
    ({"change": "trend"}, ("drift", "trend")),
    ({"change": "variance", "value_direction": "up"}, ("drift", "variance:up")),
    ({"change": "variance", "value_direction": "down"}, ("drift", "variance:down")),
    ({}, ("drift", "")),
])
def test_each_drift_kind_has_its_own_check(detail, key) -> None:
    assert check_for(_alert("drift", **detail)) == CHECKS[key]


def test_finish_adds_the_usual_range_and_the_check_once() -> None:
    a = finish(_alert("drift", change="level"), (1.5, 3.25))
    assert a.detail["usual_range"] == [1.5, 3.25]
    assert a.detail["check"] == CHECKS[("drift", "level")]
    assert a.text == (f"s1: something; its readings were 1.5 to 3.25 before the change; "
                      f"{CHECKS[('drift', 'level')]}")
    assert finish(a, (0.0, 1.0)).text == a.text            # a finished alert stays as it is


def test_a_check_already_in_the_text_is_not_repeated() -> None:
    a = _alert("data-quality", "silence", state="raised")
    a.text = f"s1 silent since ...; {CHECKS[('data-quality', 'silence')]}"
    before = a.text
    finish(a)
    assert a.text == before and a.detail["check"] == CHECKS[("data-quality", "silence")]
    cleared = finish(_alert("data-quality", "silence", state="cleared"))
    assert "check" not in cleared.detail                   # "reports again": nothing to do


def test_model_alerts_say_what_to_look_at() -> None:
    assert check_for(_alert("model", "forecast")) == CHECKS[("model", "forecast")]
    assert check_for(_alert("model", "supervised loss")) == CHECKS[("model", "rollback")]


@pytest.fixture(scope="module")
def alerts() -> list[Alert]:
    """Alerts of the core over a simulated network with a level shift and a variance rise."""
    rec, _ = simulate(SimConfig(n_sensors=8, n_days=6, seed=5, n_events=0, drifts=[
        DriftSpec("level_shift", 2, 0.6, 3.0), DriftSpec("variance_change", 5, 0.6, 6.0)]))
    cfg = StreamConfig.from_dict({})
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model))
    t, n = rec.values.shape
    ts = np.repeat(rec.timestamps, n)
    ss = list(rec.sensors) * t
    vv = rec.values.reshape(-1)
    out: list[Alert] = []
    for i in range(0, len(vv), 4000):
        out += core.process(ReadingBatch(ss[i:i + 4000], ts[i:i + 4000], vv[i:i + 4000],
                                         np.arange(len(vv[i:i + 4000])))).alerts
    out += core.flush().alerts
    return out


def test_core_alerts_read_as_sentences_with_range_and_check(alerts: list[Alert]) -> None:
    drift = [a for a in alerts if a.kind == "drift"]
    assert drift, "the injected level shift raises a drift alert"
    for a in alerts:
        assert not re.search(r"\bz=|>=|mean z|page_hinkley|bocpd|nan|inf\b", a.text), a.text
        if a.kind in ("drift", "anomaly") or a.detail.get("state") == "raised":
            assert a.detail.get("check") and a.detail["check"] in a.text, a.text
    for a in drift:
        if "usual_range" in a.detail:
            lo, hi = a.detail["usual_range"]
            assert lo <= hi and f"its readings were {lo:.4g} to {hi:.4g} before" in a.text
    assert any("usual_range" in a.detail for a in drift), [a.text for a in drift]
