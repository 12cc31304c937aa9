"""Reservoir replay buffer: a uniform sample of every window seen so far (Vitter's
algorithm R), mixed into online updates so the model keeps fitting older regimes."""

from __future__ import annotations

from typing import Any

import numpy as np


class ReservoirBuffer:
    """Holds at most ``capacity`` items; each item seen so far is kept with equal chance."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"reservoir capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.items: list[dict[str, Any]] = []
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: dict[str, Any]) -> None:
        self.seen += 1
        if self.capacity == 0:
            return
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        j = int(self._rng.integers(0, self.seen))
        if j < self.capacity:
            self.items[j] = item

    def sample(self, k: int) -> list[dict[str, Any]]:
        """Up to ``k`` distinct stored items, drawn with the buffer's own seeded generator."""
        if k <= 0 or not self.items:
            return []
        idx = self._rng.choice(len(self.items), size=min(k, len(self.items)), replace=False)
        return [self.items[i] for i in sorted(idx)]

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "items": list(self.items), "seen": self.seen,
                "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.items = list(state["items"])
        self.seen = int(state["seen"])
        self._rng.bit_generator.state = state["rng"]
