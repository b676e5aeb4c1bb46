"""What the demo, the tests and the benchmarks run, outside the daemon's runtime path:
``live`` (``driftmon demo``: an embedded broker, a synthetic stream with a silent upgrade,
the daemon and a live view), ``synthetic`` (the stream, also ``driftmon generate``) and
``tansu`` (the embedded Kafka-protocol broker; not for production)."""
