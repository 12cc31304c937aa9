"""What the person on call reads: an alert's magnitude next to the sensor's usual range, and
one short suggested check per kind of alert.

The detectors' numbers stay in ``detail``; this module adds to the sentence only what helps
someone decide what to do: where the sensor usually sits (``detail.usual_range``, the 5th to
95th percentile of its recent readings before the alert) and what to look at first
(``detail.check``).
"""

from __future__ import annotations

import numpy as np

from connectors.schemas import Alert

MIN_USUAL = 8          # readings needed for a usual range

# the first thing to look at, by kind and what changed (drift) or which part scored (anomaly)
CHECKS: dict[tuple[str, str], str] = {
    ("drift", "level"): "check for a recalibration, a moved or replaced sensor, or a real "
                        "change in what it measures",
    ("drift", "trend"): "check for sensor ageing or fouling (a slow calibration drift), or a "
                        "gradual real change",
    ("drift", "variance:up"): "check the sensor's mounting and wiring for interference, or "
                              "a failing sensor",
    ("drift", "variance:down"): "check whether the sensor is damped, averaged upstream or "
                                "partly stuck",
    ("drift", "season"): "check for a changed schedule or operating pattern",
    ("drift", "shape"): "check for a changed schedule or operating pattern",
    ("drift", ""): "check what changed on the sensor or in the process around that time",
    ("anomaly", ""): "compare with its neighbours and the event log; a single spike that "
                     "comes and goes is often a transmission glitch",
    ("model", "rollback"): "nothing to do if it is rare; if it repeats, look for extreme or "
                           "mis-scaled readings in the input",
    ("model", "forecast"): "look for extreme or mis-scaled readings of these sensors; their "
                           "forecast is the last reading until the model recovers",
    ("data-quality", "silence"): "check the sensor's power and its link",
    ("data-quality", "flat_line"): "check whether the sensor is stuck or its value is held "
                                   "upstream",
}


def check_for(alert: Alert) -> str | None:
    """The suggested check for ``alert`` (None: the alert already says what to do)."""
    d = alert.detail
    if alert.kind == "drift" and d.get("recovered"):
        return None                     # back where it was: nothing to check
    if alert.kind == "drift":
        change = str(d.get("change") or "")
        if change == "variance":
            change += ":" + ("down" if d.get("value_direction") == "down" else "up")
        return CHECKS.get(("drift", change), CHECKS[("drift", "")])
    if alert.kind == "anomaly":
        return CHECKS[("anomaly", "")]
    if alert.kind == "model":
        return CHECKS[("model", "forecast" if alert.statistic == "forecast" else "rollback")]
    if alert.kind == "data-quality" and d.get("state") == "raised":
        return CHECKS.get(("data-quality", alert.statistic))
    return None


def usual_range(values: np.ndarray) -> tuple[float, float] | None:
    """The 5th and 95th percentile of the finite ``values`` (None with fewer than
    ``MIN_USUAL``)."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) < MIN_USUAL:
        return None
    lo, hi = np.percentile(v, [5, 95])
    return float(lo), float(hi)


def finish(alert: Alert, usual: tuple[float, float] | None = None) -> Alert:
    """Add the usual range (anomaly and drift alerts, when known) and the suggested check to
    the alert's text and ``detail`` (once: an alert that has a ``check`` is left as it is)."""
    if "check" in alert.detail:
        return alert
    back = bool(alert.detail.get("recovered"))     # a recovery says where it was itself
    if usual is not None and alert.kind in ("anomaly", "drift") and not back:
        lo, hi = usual
        alert.detail["usual_range"] = [round(lo, 6), round(hi, 6)]
        when = "before the change" if alert.kind == "drift" else "recently"
        alert.text += f"; its readings were {lo:.4g} to {hi:.4g} {when}"
    check = check_for(alert)
    if check is not None:
        alert.detail["check"] = check
        if check not in alert.text:
            alert.text += f"; {check}"
    return alert
