"""Report plots people read: date axes in the configured zone, units, the p10-p90 band,
legends off the data, distinct colours, a density strip for many alerts, ``--sensors``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import EventCollection, PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.patches import StepPatch

from connectors.schemas import Alert
from replay.alerts_report import format_table, timeline_figure
from replay.backtest import BacktestResult, backtest, write_report
from replay.backtest_plots import choose_sensors, error_figure, forecasts_figure
from replay.plots import ALERT_COLOURS, date_axis, select_sensors, unit_of, value_label
from replay.simulator import SimConfig, simulate, write_simulation
from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore


@pytest.fixture(scope="module")
def res() -> BacktestResult:
    """A small simulated backtest (3 sensors, 2 days, fresh model) in Europe/Berlin."""
    rec, _ = simulate(SimConfig(n_sensors=3, n_days=2, seed=5, n_events=2))
    cfg = StreamConfig.from_dict({"patching": {"timezone": "Europe/Berlin"}})
    core = StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=list(rec.sensors))
    return backtest(rec, core, progress=False)


def _outside_right(fig, ax) -> bool:
    fig.canvas.draw()
    leg = ax.get_legend()
    return leg is not None and leg.get_window_extent().x0 >= ax.get_window_extent().x1


def _many_alerts(res: BacktestResult, n: int) -> list[dict]:
    lo, hi = int(res.ts[0]), int(res.ts[-1])
    t = np.linspace(lo, hi, n).astype(np.int64)
    return [{"kind": "drift" if k % 5 else "anomaly", "ts": int(x),
             "sensors": [res.sensors[k % len(res.sensors)]]} for k, x in enumerate(t)]


def test_units_and_sensor_choice_by_id_or_glob() -> None:
    assert unit_of("T (degC)") == "degC" and unit_of("wv [m/s]") == "m/s"
    assert unit_of("s001") is None
    assert value_label(["T (degC)", "Tdew (degC)"]) == "value (degC)"
    assert value_label(["T (degC)", "p (mbar)"]) == "value (input units)"
    names = ["s000", "s001", "s010", "T (degC)"]
    assert select_sensors(names, "s00*") == [0, 1]
    assert select_sensors(names, "T (degC), s010") == [2, 3]
    with pytest.raises(ValueError, match="'x\\*' matches no sensor"):
        select_sensors(names, "s000,x*")


@pytest.mark.parametrize("days", [1, 20, 400])
def test_date_axis_shows_the_year_and_the_zone(days: int) -> None:
    plt.switch_backend("Agg")
    fig, ax = plt.subplots()
    start = 1_767_225_600_000 - 86_400_000 * days // 2       # spans new year 2026
    end = start + days * 86_400_000
    ax.plot([0, 1], [0, 1])
    date_axis(ax, "Europe/Berlin", start, end)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert len(labels) >= 2
    assert all(lab[:4] in ("2025", "2026") for lab in labels)      # the year on every tick
    assert isinstance(ax.xaxis.get_major_formatter(), mdates.DateFormatter)
    assert ax.get_xlabel() == "time (Europe/Berlin)"
    plt.close(fig)


def test_forecasts_figure_dates_units_band_and_legend(res: BacktestResult) -> None:
    fig = forecasts_figure(res, title="sim")
    axes = fig.axes
    assert len(axes) == 3                                  # the automatic pick: 3 sensors
    assert "3 sensors" in fig.get_suptitle() and "--sensors" in fig.get_suptitle()
    bottom = axes[-1]
    assert isinstance(bottom.xaxis.get_major_formatter(), mdates.DateFormatter)
    assert bottom.get_xlabel() == "time (Europe/Berlin)"   # the result's patching.timezone
    assert all(ax.get_ylabel() == "value (input units)" for ax in axes)
    assert res.quantiles                                   # the model serves p10/p90 ...
    for ax in axes:                                        # ... drawn as a band
        assert any(isinstance(c, PolyCollection) and "p10-p90" in c.get_label()
                   for c in ax.collections)
    assert _outside_right(fig, axes[0])
    plt.close(fig)


def test_forecasts_without_quantiles_say_so(res: BacktestResult) -> None:
    fig = forecasts_figure(dataclasses.replace(res, quantiles={}), sensors="s001")
    assert [ax.get_title(loc="left").split(":")[0] for ax in fig.axes] == ["s001"]
    assert any("no p10-p90 band" in t.get_text() for t in fig.texts)
    assert not any(isinstance(c, PolyCollection) for c in fig.axes[0].collections)
    plt.close(fig)


def test_sensors_option_selects_and_default_names_why(res: BacktestResult) -> None:
    picks, why = choose_sensors(res, "s00[02]", 3)
    assert [res.sensors[i] for i in picks] == ["s000", "s002"] and "--sensors" in why
    alerts = [{"kind": "drift", "ts": int(res.ts[-1]), "sensors": ["s002"]}] * 2
    picks, why = choose_sensors(dataclasses.replace(res, alerts=alerts), None, 2)
    assert res.sensors[picks[0]] == "s002"
    assert "1 with the most alerts" in why and "1 with the highest MAE" in why


def test_error_figure_colours_legend_and_a_strip_for_many_alerts(res: BacktestResult) -> None:
    many = dataclasses.replace(res, alerts=_many_alerts(res, 300))
    fig = error_figure(many, title="sim")
    main, strip = fig.axes
    colours = [to_rgba(line.get_color()) for line in main.get_lines()]
    assert len(colours) >= 4 and len(set(colours)) == len(colours)
    labels = " ".join(line.get_label() for line in main.get_lines())
    assert all(name in labels for name in res.experts)    # each drawn, or named as the twin
    assert not {to_rgba(c) for c in ALERT_COLOURS.values()} & set(colours)
    assert _outside_right(fig, main)
    # 240 drift alerts: one filled band, not 240 lines; 60 anomalies: one band too
    bands = [p for p in strip.patches if isinstance(p, StepPatch)]
    assert len(bands) == 2
    assert len(strip.lines) + len(strip.collections) + len(strip.patches) <= 4
    assert to_rgba(bands[0].get_facecolor()[:3]) != to_rgba(bands[1].get_facecolor()[:3])
    assert strip.get_xlabel() == "time (Europe/Berlin)"
    assert isinstance(strip.xaxis.get_major_formatter(), mdates.DateFormatter)
    assert main.get_ylabel() == "cumulative MAE (input units)"
    plt.close(fig)
    few = error_figure(dataclasses.replace(res, alerts=_many_alerts(res, 6)))
    rugs = [c for c in few.axes[1].collections if isinstance(c, EventCollection)]
    assert len(rugs) == 2                                  # a rug per kind for a few
    plt.close(few)


def test_mixed_units_are_scaled_per_sensor(res: BacktestResult) -> None:
    named = dataclasses.replace(res, sensors=["T (degC)", "p (mbar)", "rh (%)"], alerts=[])
    fig = error_figure(named)
    ax = fig.axes[0]
    assert "persistence MAE" in ax.get_ylabel()
    assert "units differ" in ax.get_title()
    persistence = next(line for line in ax.get_lines()
                       if line.get_label().startswith("persistence"))
    assert abs(persistence.get_ydata()[-1] - 1.0) < 1e-6   # 1 = persistence's own MAE
    plt.close(fig)
    fig = forecasts_figure(named, sensors="T*")
    assert fig.axes[0].get_ylabel() == "value (degC)"
    plt.close(fig)


def test_write_report_writes_both_pngs(res: BacktestResult, tmp_path: Path) -> None:
    write_report(res, tmp_path, sensors="s001", tz="UTC")
    for png in ("error_over_time.png", "forecasts.png"):
        blob = (tmp_path / png).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000
    with pytest.raises(ValueError, match="--sensors"):
        write_report(res, tmp_path / "x", sensors="nope")


def test_cli_backtest_sensors_option(tmp_path: Path, res: BacktestResult,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import replay.backtest as bt
    from stfm.cli import main

    rec, truths = simulate(SimConfig(n_sensors=3, n_days=1, seed=5, n_events=0))
    data = tmp_path / "sim.npz"
    write_simulation(rec, truths, data)
    ran: list[int] = []
    monkeypatch.setattr(bt, "backtest", lambda *a, **k: ran.append(1) or res)
    chosen: dict = {}
    real = bt.write_report
    monkeypatch.setattr(bt, "write_report",
                        lambda r, out, **k: chosen.update(k) or real(r, out, **k))
    out = tmp_path / "r"
    assert main(["replay", "backtest", str(data), "--fresh", "--out", str(out), "--quiet",
                 "--sensors", "s00[12]"]) == 0
    assert chosen["sensors"] == "s00[12]" and (out / "forecasts.png").exists()
    assert main(["replay", "backtest", str(data), "--fresh", "--out", str(out), "--quiet",
                 "--sensors", "nope*"]) == 2                # said before the run
    assert ran == [1]


T0 = 1_767_225_600_000  # 2026-01-01T00:00Z


def _alert(i: int, kind: str, sensor: str, statistic: str = "level") -> Alert:
    return Alert(id=f"{kind}:{sensor}:{i}", kind=kind, sensors=[sensor],
                 ts=T0 + i * 3_600_000, step=i, severity="warning", detector="bocpd",
                 statistic=statistic, text="x")


def test_alerts_timeline_year_ticks_legend_outside_and_sensors() -> None:
    alerts = [_alert(i, "drift" if i % 3 else "anomaly", f"s{i % 4}") for i in range(60)]
    fig = timeline_figure(alerts, tz="Europe/Berlin")
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(lab.startswith("2026-") for lab in labels)
    assert ax.get_xlabel() == "time (Europe/Berlin)"
    assert _outside_right(fig, ax)
    assert len(ax.collections) == 2                        # one scatter per kind, not per alert
    faces = {tuple(to_rgba(c.get_facecolor()[0])) for c in ax.collections}
    assert len(faces) == 2
    plt.close(fig)
    fig = timeline_figure(alerts, sensors="s1,s3")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["s1", "s3"]
    plt.close(fig)


def test_alerts_table_wraps_between_words() -> None:
    stat = "change from the previous reading (persistence residual)"
    table = format_table([_alert(1, "anomaly", "s1", stat)], max_width=40)
    assert "change from the previous reading" in table
    assert "(persistence residual)" in table            # whole, on the next line
    assert "(pe " not in table and not any(ln.rstrip().endswith("(pe")
                                           for ln in table.splitlines())
