"""Assembling a region's core from the configuration: the model (fresh or from a checkpoint)
and, when a sensor graph is configured, the fixed sensor set and positions."""

from __future__ import annotations

import numpy as np

from streaming.config import StreamConfig
from streaming.core import StreamCore
from streaming.online import OnlineModel


def build_model(cfg: StreamConfig, checkpoint: str | None) -> OnlineModel:
    """A fresh online model for ``cfg``, or one loaded from ``checkpoint``."""
    if checkpoint:
        return OnlineModel.from_checkpoint(checkpoint, cfg.patching, cfg.model, cfg.adapt)
    return OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt)


def build_core(cfg: StreamConfig, checkpoint: str | None) -> StreamCore:
    """The online core for ``cfg``: a fresh model, or one loaded from ``checkpoint``; the
    graph recording (``graph``), when given, fixes the sensors and places events by
    position."""
    sensors = positions = None
    if cfg.graph:
        from connectors.recordings import read_recording

        rec = read_recording(cfg.graph)
        sensors = list(rec.sensors)
        if rec.lat is not None and rec.lon is not None:
            positions = np.stack([rec.lat, rec.lon], axis=1)
    return StreamCore(cfg, build_model(cfg, checkpoint), sensors=sensors, positions=positions)
