"""The online core and the live runtime, in layers that follow the data:

- ``streaming.config`` (and ``config_reference``): the typed configuration every layer reads;
- ``streaming.ingest``: readings and events → a sampling grid → closed time steps;
- ``streaming.forecast``: closed steps → served forecasts, and learning from their truth;
- ``streaming.alerts``: closed steps and forecast errors → drift, anomaly and data-quality
  alerts;
- ``streaming.pipeline``: the stages in order (``StreamCore``), built from the configuration;
- ``streaming.runtime``: what drives pipelines from Kafka: the worker, micro-batches, regions,
  checkpoints with offsets, observers (metrics, the live page).

Each subpackage says in its docstring (``May import:``) what it may import; a subpackage never
imports one that comes after it (``tests/test_layering.py`` checks both). Everything before
``runtime`` is plain synchronous Python/torch with no Kafka client inside, so the live worker
and ``replay backtest`` run the same code.
"""
