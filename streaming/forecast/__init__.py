"""Forecast: the served forecast of every sensor and the learning from realized values.

- ``forecaster``: the stage (experts weighted per sensor and horizon point, bounds, gap fill);
- ``online``: the torch model served and updated one closed step at a time;
- ``adaptation``: which parameters move, the pull toward the pretrained weights, the rollback
  guard; ``reservoir``: the replay buffer of past windows;
- ``baselines``: persistence, moving average, seasonal naive, Holt-Winters, O(1) a step;
- ``experts``: the online exponential weights (fixed share) over the model and baselines;
- ``intervals``: p10-p90 intervals calibrated online; ``normalization``: running per-sensor
  mean and variance; ``metrics``: cumulative errors of the served forecasts.

May import: streaming.config, streaming.ingest, connectors, models.
"""
