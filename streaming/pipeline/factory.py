"""Assembling a region's core from the configuration: the model (fresh or from a checkpoint)
and, when a sensor graph is configured, the fixed sensor set and positions."""

from __future__ import annotations

import logging
from collections.abc import Collection

import numpy as np

from streaming.config import StreamConfig
from streaming.forecast.online import OnlineModel, shape_mismatch
from streaming.pipeline.core import StreamCore

log = logging.getLogger(__name__)


def resolve_checkpoint(cfg: StreamConfig, checkpoint: str | None, fresh: bool) -> str | None:
    """What to serve: ``checkpoint`` when given, nothing (a fresh model) with ``fresh``, else
    the package's default checkpoint (``models.pretrained``) when its shape fits the
    configuration; otherwise a fresh model, said in a warning that names the keys."""
    if checkpoint or fresh:
        return checkpoint
    from models.checkpoint import read_meta
    from models.pretrained import default_checkpoint

    path = default_checkpoint()
    if not (path / "weights.pt").exists():
        log.warning("no default checkpoint in the package (%s): serving a fresh model", path)
        return None
    bad = shape_mismatch(read_meta(path)["config"], cfg.patching, cfg.model)
    if bad:
        log.warning("the default checkpoint %s is made for %s; the configuration asks for %s: "
                    "serving a fresh model (pretrain one for this shape with `stfm replay "
                    "pretrain --corpus`, or pass --fresh to silence this)", path.name,
                    {k: have for k, (have, _) in bad.items()},
                    {k: want for k, (_, want) in bad.items()})
        return None
    return str(path)


def build_model(cfg: StreamConfig, checkpoint: str | None) -> OnlineModel:
    """A fresh online model for ``cfg``, or one loaded from ``checkpoint``."""
    if checkpoint:
        return OnlineModel.from_checkpoint(checkpoint, cfg.patching, cfg.model, cfg.adapt)
    return OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt)


def build_core(cfg: StreamConfig, checkpoint: str | None,
               keep: Collection[str] | None = None) -> StreamCore:
    """The online core for ``cfg``: a fresh model, or one loaded from ``checkpoint``; the
    graph recording (``graph``), when given, fixes the sensors and places events by
    position. ``keep``: the core holds only these of the graph's sensors (a region's own
    sensors and ghosts, ``streaming.ingest.halo``), while its model keeps the whole graph for the
    graph layer's normalization and the Laplacian encodings."""
    sensors = positions = rec = None
    if cfg.graph:
        from connectors.recordings import read_recording

        rec = read_recording(cfg.graph)
        rows = (np.arange(rec.n_sensors) if keep is None else
                np.array([i for i, s in enumerate(rec.sensors) if s in keep], np.int64))
        sensors = [rec.sensors[i] for i in rows]
        if rec.lat is not None and rec.lon is not None:
            positions = np.stack([rec.lat, rec.lon], axis=1)[rows]
    model = build_model(cfg, checkpoint)
    if keep is None:            # said once, not per region
        for d in model.checkpoint_differences(cfg.patching.interval_ms, sensors):
            log.warning("checkpoint %s does not match the data: %s", model.name, d)
    if rec is not None and rec.edge_index is not None and rec.edge_index.shape[1] > 0:
        model.set_graph(list(rec.sensors), rec.edge_index, rec.edge_weight)  # inductive only
    return StreamCore(cfg, model, sensors=sensors, positions=positions)
