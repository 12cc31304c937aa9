"""The context window: the last K closed steps of every sensor, and the forecasts waiting for
their truth.

A ring of ``[N, K, P]`` values and ``[N, K]`` event counts moves one slot per closed step (a
gap of steps moves it further); the forecasts made at each step wait here until the stream has
delivered their whole horizon (``due``), and their truth is read from the same ring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.ingest.patching import ClosedStep


@dataclass
class Pending:
    """A forecast waiting for its truth: the inputs it was made from and its values."""

    x: np.ndarray                # float32 [N, K, P] normalized window
    mask: np.ndarray             # bool [N, K, P]
    side: np.ndarray             # float32 [N, K, 1] event channel
    loc: np.ndarray              # float64 [N] normalization used
    scale: np.ndarray            # float64 [N]
    yhat: np.ndarray             # float64 [N, H] served, input scale; NaN: sensor not there
    steps: np.ndarray            # int64 [K] step of each window token
    experts: np.ndarray          # float64 [N, H, E] each expert's forecast (NaN: none)
    lo: np.ndarray | None = None  # float64 [N, H] p10 of the served forecast
    hi: np.ndarray | None = None  # float64 [N, H] p90


class ContextWindow:
    """Ring of closed steps, pending forecasts and their truth (see module docstring)."""

    def __init__(self, context_patches: int, patch_len: int, horizon: int) -> None:
        self.k, self.p, self.h = context_patches, patch_len, horizon
        self.reach = -(-horizon // patch_len)      # steps a forecast reaches into
        if self.reach > context_patches:
            raise ValueError(f"model.context_patches={context_patches} must cover the horizon "
                             f"({horizon} points = {self.reach} steps)")
        self.values = np.full((0, self.k, self.p), np.nan)   # [N, K, P]
        self.events = np.zeros((0, self.k), np.float32)     # [N, K]
        self.last_step: int | None = None
        self.pending: dict[int, Pending] = {}

    def push(self, step: ClosedStep) -> None:
        """Move the ring to ``step`` (a gap of steps leaves NaN slots) and store it."""
        n = step.values.shape[0]
        if step.values.shape[1:] != (self.p,) or step.events.shape != (n,):
            raise ValueError(f"context window: a closed step must be [N, {self.p}] values and "
                             f"[N] events, got {step.values.shape} and {step.events.shape}")
        if self.values.shape[0] < n:
            grow = n - self.values.shape[0]
            self.values = np.concatenate([self.values,
                                          np.full((grow, self.k, self.p), np.nan)])
            self.events = np.concatenate([self.events, np.zeros((grow, self.k), np.float32)])
        shift = self.k if self.last_step is None else min(step.step - self.last_step, self.k)
        if shift > 0:
            self.values = np.roll(self.values, -shift, axis=1)
            self.values[:, self.k - shift:] = np.nan
            self.events = np.roll(self.events, -shift, axis=1)
            self.events[:, self.k - shift:] = 0.0
        self.values[:, -1] = step.values
        self.events[:, -1] = step.events
        self.last_step = step.step

    def add_event(self, sensor: int, step: int) -> str | None:
        """Count an event into a step that already closed; the reason when it cannot be."""
        age = -1 if self.last_step is None else self.last_step - step
        if not 0 <= age < self.k or sensor >= self.events.shape[0]:
            return "late: its step is older than the model's context"
        self.events[sensor, self.k - 1 - age] += 1.0
        return None

    def steps(self) -> np.ndarray:
        """Step index of each window slot (oldest first)."""
        assert self.last_step is not None
        return np.arange(self.last_step - self.k + 1, self.last_step + 1)

    def remember(self, step: int, pending: Pending) -> None:
        self.pending[step] = pending

    def due(self, step: int) -> list[tuple[int, Pending, np.ndarray]]:
        """The forecasts whose horizon ``step`` completed, with their truth ``[N, H]``; each
        is returned once (those whose truth fell out of the context after a gap: never)."""
        out = []
        for j in sorted(self.pending):
            if j + self.reach > step:
                break
            pend = self.pending.pop(j)
            if step - j <= self.k:           # its first horizon point is still in the ring
                out.append((j, pend, self.truth(j, pend.yhat.shape[0])))
        return out

    def truth(self, j: int, n: int) -> np.ndarray:
        """Realized values of the forecast made at step ``j`` (NaN where unknown)."""
        assert self.last_step is not None
        t = np.arange(self.h)
        slot = self.k - 1 - (self.last_step - (j + 1 + t // self.p))
        y = np.full((n, self.h), np.nan)
        ok = slot >= 0
        y[:, ok] = self.values[:n, slot[ok], (t % self.p)[ok]]
        return y

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values.copy(), "events": self.events.copy(),
                "last_step": self.last_step,
                "pending": {int(j): dict(vars(p)) for j, p in self.pending.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = np.array(state["values"], np.float64)
        self.events = np.array(state["events"], np.float32)
        self.last_step = None if state["last_step"] is None else int(state["last_step"])
        self.pending = {int(j): Pending(**{k: None if v is None else np.asarray(v)
                                          for k, v in p.items()})
                        for j, p in state["pending"].items()}
