"""Alerts: what the detectors see in the closed steps and forecast errors, and the gate that
decides which of it becomes an alert.

- ``signals``: the per-step statistics the detectors watch (nowcast residual, seasonal
  residual, embedding distance);
- ``changepoint``: the default change detector, online Bayesian change-point detection
  (``bocpd``) on each sensor's deseasonalized level and spread;
- ``drift``: drift channels over change detectors (``drift.detector`` = page_hinkley, adwin
  or kswin); ``detectors``: Page-Hinkley, ADWIN and KSWIN as arrays over sensors;
- ``anomaly``: the fused anomaly score; ``novelty``: detectors on the raw values;
  ``calibration``: each surprise calibrated to a false-alarm budget on the sensor's history;
- ``quality``: data-quality checks (silence, flat lines);
- ``alert_gate``: thresholds, warm-up, hysteresis, cooldown and graph merge into typed alerts.

May import: streaming.config, streaming.ingest, connectors.
"""
