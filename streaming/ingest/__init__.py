"""Ingest: readings and events onto a fixed sampling grid, closed into time steps.

- ``patching``: the incremental patcher (grid alignment, duplicates, gaps, closed steps);
- ``clock``: the event-time clock (quorum watermark, late, held and future readings);
- ``registry``: the sensor registry and the ingest counters the two share;
- ``window``: the last K closed steps of every sensor, the model's context;
- ``cadence``: the data's reporting interval, inferred from the first readings;
- ``halo``: which readings a region forwards to its neighbours across a partition cut.

May import: streaming.config, connectors.
"""
