"""The checkpoint shipped in the package: found without a path, intact, inductive, served."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.pretrained import DEFAULT_SHA256, default_checkpoint
from streaming.config import StreamConfig
from streaming.pipeline.factory import build_model, resolve_checkpoint


def test_packaged_checkpoint_loads_safely_and_matches_its_checksum() -> None:
    path = default_checkpoint()
    weights = path / "weights.pt"
    assert weights.exists(), f"{path} is missing from the package"
    blob = weights.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == DEFAULT_SHA256
    assert sum(f.stat().st_size for f in path.iterdir()) <= 20 * 2**20
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net, meta = load_checkpoint(path)            # checks config.json's checksum too
    cfg = meta["config"]
    assert cfg["num_nodes"] == 0 and cfg["instance_norm"] and cfg["quantiles"]
    assert cfg["calendar"] == "fourier"
    assert meta["extra"]["inductive"]


def test_run_serves_it_by_default_and_says_why_not_when_the_shape_differs(caplog) -> None:
    cfg = StreamConfig.from_dict({})
    assert resolve_checkpoint(cfg, None, fresh=False) == str(default_checkpoint())
    assert resolve_checkpoint(cfg, None, fresh=True) is None
    assert resolve_checkpoint(cfg, "elsewhere", fresh=False) == "elsewhere"
    other = StreamConfig.from_dict({"model": {"horizon": 6}})
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint(other, None, fresh=False) is None
    assert "horizon" in caplog.text and "fresh" in caplog.text


def test_it_forecasts_an_unseen_network_with_ordered_quantiles() -> None:
    cfg = StreamConfig.from_dict({"patching": {"interval_ms": 3_600_000}})
    model = build_model(cfg, resolve_checkpoint(cfg, None, fresh=False))
    rng = np.random.default_rng(0)
    t = np.arange(96)
    x = (np.sin(2 * np.pi * t / 24)[None] * rng.uniform(1, 2, (5, 1))
         + rng.normal(0, 0.1, (5, 96))).reshape(5, 8, 12).astype(np.float32)
    mask = np.ones_like(x, bool)
    y = model.predict_many(x, mask, np.zeros((5, 8, 1), np.float32),
                           steps=np.arange(8) + 40_000, sensors=[f"n{i}" for i in range(5)])
    assert y.shape == (5, 12) and np.isfinite(y).all()
    q = model.last_quantiles
    assert q is not None and q.shape == (5, 2, 12) and (q >= 0).all()   # p10 <= p50 <= p90
    # the daily cycle continues: the forecast is closer to it than to persistence
    truth = np.sin(2 * np.pi * np.arange(96, 108) / 24)[None] * 1.0
    assert np.corrcoef(y.mean(0), truth[0])[0, 1] > 0.5
