"""The runtime: what drives pipelines from Kafka, keeps their state and shows them.

- ``worker``: the aiokafka worker (fetch, process, produce, commit, rebalance, idle exit);
  ``faust_app``: the Faust engine over the same per-batch function;
- ``microbatch``: one micro-batch through a core (decode, validate, run, encode outputs);
- ``regions``: one core per readings partition; ``watch``: lag and end-of-input;
- ``checkpoint``: the on-disk checkpoint format; ``checkpointing``: state and offsets committed
  together;
- ``observe``: the hooks a worker calls as it works; ``telemetry``: Prometheus metrics;
  ``livefeed``: what the live page shows.

May import: streaming.config, streaming.ingest, streaming.forecast, streaming.alerts,
streaming.pipeline, connectors, models, kafka, aiokafka, faust.
"""
