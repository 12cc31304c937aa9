"""The pipeline: one region's stages in order, and assembling it from the configuration.

- ``core``: ``StreamCore``, readings → patcher → context window → forecaster → signals →
  detectors → alert gate, with one state contract over all stages;
- ``factory``: a region's core from the configuration (the model fresh or from a checkpoint,
  the sensor graph).

May import: streaming.config, streaming.ingest, streaming.forecast, streaming.alerts,
connectors, models.
"""
