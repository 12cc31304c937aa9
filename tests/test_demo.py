"""`make demo`'s job, small: the packaged pretrained model serves the simulated network live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stfm.demo import run_demo

pytestmark = pytest.mark.broker


def test_demo_runs_on_the_packaged_checkpoint(tmp_path: Path, capsys) -> None:
    assert run_demo(tmp_path, n_sensors=6, days=2.0, seed=1) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model_version"].startswith("stfm-tiny+")
    assert summary["forecasts"] > 0 and summary["readings_accepted"] > 0
    assert 0.5 < summary["interval_coverage_p10_p90"] <= 1.0
    assert summary["experts_mae"]["frozen"] > 0
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "stfm-tiny" in capsys.readouterr().out
