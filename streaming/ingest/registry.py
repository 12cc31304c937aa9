"""What the ingest stage knows about its sensors and what it counted, shared by the patcher
(``streaming.ingest.patching``) and its event clock (``streaming.ingest.clock``).

``SensorRegistry`` maps sensor ids to dense row indices; ``PatcherStats`` counts every
reading's verdict (accepted, late, future, held, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class SensorRegistry:
    """Sensor id ↔ dense index. Fixed (e.g. by a sensor graph) or growing."""

    def __init__(self, sensors: list[str] | None = None, *, fixed: bool = False) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.fixed = fixed
        for s in sensors or []:
            self.add(s)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, sensor: str) -> int:
        i = self.index.get(sensor)
        if i is None:
            i = len(self.ids)
            self.index[sensor] = i
            self.ids.append(sensor)
        return i

    def find(self, sensors: list[str]) -> np.ndarray:
        """Indices of ``sensors`` (-1 for those not registered), adding none."""
        get = self.index.get
        return np.fromiter((get(s, -1) for s in sensors), np.int64, len(sensors))


@dataclass
class PatcherStats:
    accepted: int = 0
    late: int = 0
    future: int = 0
    out_of_range: int = 0
    unknown_sensor: int = 0
    duplicates: int = 0
    null_values: int = 0
    closed_steps: int = 0
    events: int = 0
    late_events: int = 0
    future_events: int = 0
    held: int = 0             # readings held right now (ahead of the clock)
    released: int = 0         # held readings accepted later
    clock_jumps: int = 0
    ghost_accepted: int = 0   # of ``accepted``: readings of ghosts (``streaming.ingest.halo``)
    capacity: int = 0         # readings of new sensors beyond ``patching.max_sensors``
    long_ids: int = 0         # readings whose sensor id is beyond ``max_sensor_id_bytes``
