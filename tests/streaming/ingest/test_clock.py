"""The event-time clock: a quorum of sensors moves it, one sensor cannot (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest

from connectors.schemas import ReadingBatch
from streaming.config import ConfigError, PatchingConfig
from streaming.ingest.clock import INT_MIN, mth_largest, running_quorum_clock
from streaming.ingest.patching import IncrementalPatcher

IV = 300_000
P = 12
T0 = 1_767_225_600_000
DAY = 86_400_000


def _batch(rows, parts=None, start: int = 0) -> ReadingBatch:
    b = ReadingBatch([r[0] for r in rows], np.array([r[1] for r in rows], np.int64),
                     np.array([np.nan if r[2] is None else r[2] for r in rows], float),
                     np.arange(len(rows)))
    if parts is not None:
        b.partition = np.asarray(parts, np.int64)
    b.refs = lambda i: start + i          # handle = the reading's global index
    return b


def _feed(rows, *, sizes=(500,), fast=True, parts=None, iv=IV, p=P, lateness=600_000,
          now_ms=None, arrival=None, dead_steps=2):
    """Feed ``rows`` in batches of the given sizes (cycled); the patcher and what came out:
    closed steps, rejected reading indices with reasons, flagged sensors. ``arrival``: a
    function of a batch's rows giving when it arrived (None: unknown)."""
    pt = IncrementalPatcher(PatchingConfig(interval_ms=iv, patch_len=p, lateness_ms=lateness,
                                           clock_dead_steps=dead_steps))
    pt.clock.fast_path = fast
    closed, rejected, flags = [], {}, []
    i = k = 0
    while i < len(rows):
        n = sizes[k % len(sizes)]
        k += 1
        b = _batch(rows[i:i + n], None if parts is None else parts[i:i + n], start=i)
        c, rej = pt.update(b, now_ms, None if arrival is None else arrival(rows[i:i + n]))
        closed += [(x.step, x.values.copy()) for x in c]
        rejected.update({i + j: why for j, why in rej})
        rejected.update({h: why for h, why in pt.last_admission.rejected_held})
        flags += [f.sensor for f in pt.last_admission.flags]
        i += n
    return pt, closed, rejected, flags


def _network(n_sensors: int, n_rows: int, t0: int = T0) -> list[tuple[str, int, float]]:
    return [(f"s{s:02d}", t0 + t * IV, float(t % 50 + s)) for t in range(n_rows)
            for s in range(n_sensors)]


def test_running_quorum_clock_equals_the_reading_by_reading_definition():
    rng = np.random.default_rng(0)
    for _ in range(800):
        s, n, m = int(rng.integers(1, 8)), int(rng.integers(1, 40)), int(rng.integers(1, 4))
        init = np.where(rng.random(s) < 0.3, INT_MIN, rng.integers(0, 20, s)).astype(np.int64)
        c0 = INT_MIN if rng.random() < 0.3 else int(rng.integers(0, 15))
        g, slot = rng.integers(0, 30, n), rng.integers(0, s, n)
        t, c, want = init.copy(), c0, []
        for i in range(n):
            t[slot[i]] = max(t[slot[i]], g[i])
            c = max(c, mth_largest(t, m))
            want.append(c)
        assert running_quorum_clock(g, slot, init, c0, m).tolist() == want


def test_a_reading_stamped_a_day_ahead_costs_no_valid_reading():
    rows = _network(20, 600)
    bad_at = 20 * 300 + 7
    rows.insert(bad_at, ("s07", T0 + 300 * IV + DAY, 5.0))
    pt, closed, rejected, flags = _feed(rows)
    assert pt.stats.accepted == len(rows) - 1          # every valid reading was accepted
    assert list(rejected) == [bad_at] and rejected[bad_at].startswith("future")
    assert flags == ["s07"]                             # flagged once
    assert [c[0] for c in closed] == list(range(closed[0][0], closed[0][0] + len(closed)))
    assert len(closed) == 49 and all(np.isfinite(v).all() for _, v in closed)


def test_a_sensor_with_a_wrong_clock_is_flagged_once_and_cannot_close_steps():
    rows = _network(20, 600)
    rows = [(s, t + DAY, v) if s == "s03" else (s, t, v) for s, t, v in rows]
    pt, closed, rejected, flags = _feed(rows)
    assert flags == ["s03"]
    assert all(rows[i][0] == "s03" and why.startswith("future") for i, why in rejected.items())
    assert pt.stats.accepted == 19 * 600 and len(closed) == 49


def test_fast_and_sequential_paths_agree_and_batching_does_not_matter():
    rng = np.random.default_rng(1)
    for trial in range(120):
        s, t = int(rng.integers(1, 8)), int(rng.integers(10, 80))
        rows = [(f"s{j}", int(T0 + r * IV + rng.integers(-100_000, 100_000)),
                 float(rng.normal())) for r in range(t) for j in range(s) if rng.random() < 0.9]
        k = int(rng.integers(0, len(rows)))
        sub = rows[k:k + 10]
        rng.shuffle(sub)
        rows[k:k + 10] = sub
        for _ in range(int(rng.integers(0, 4))):           # readings stamped ahead
            j = int(rng.integers(0, len(rows)))
            name, ts, _ = rows[j]
            rows.insert(j, (name, ts + int(rng.choice([DAY, 20 * IV, 5 * IV])), 99.0))
        if rng.random() < 0.3:                              # the whole network resumes later
            cut = int(rng.integers(0, len(rows)))
            rows = rows[:cut] + [(a, b + 500 * IV, c) for a, b, c in rows[cut:]]
        parts = rng.integers(0, 2, len(rows)) if rng.random() < 0.2 else None
        sizes = tuple(int(x) for x in rng.integers(1, 60, 4))
        ref = _feed(rows, sizes=(1,), fast=False, parts=parts, p=4, lateness=2 * IV)
        for fast, sz in ((True, sizes), (False, sizes), (True, (len(rows),))):
            got = _feed(rows, sizes=sz, fast=fast, parts=parts, p=4, lateness=2 * IV)
            assert [c[0] for c in got[1]] == [c[0] for c in ref[1]], trial
            for (_, a), (_, b) in zip(got[1], ref[1], strict=True):
                n = min(len(a), len(b))
                np.testing.assert_array_equal(a[:n], b[:n])
            assert got[2] == ref[2], trial
            assert got[0].registry.ids == ref[0].registry.ids


@pytest.mark.parametrize("n_sensors", [1, 20])
def test_a_gap_in_the_whole_stream_loses_nothing(n_sensors):
    rows = _network(n_sensors, 300) + [(s, t + 2004 * IV, v) for s, t, v in
                                       _network(n_sensors, 300, T0 + 300 * IV)]
    pt, closed, rejected, flags = _feed(rows)
    assert pt.stats.accepted == len(rows) and rejected == {} and flags == []
    assert pt.stats.clock_jumps == 1
    assert len(closed) == 49


def test_a_bad_first_reading_does_not_set_the_clock():
    rows = [("bad", T0 + DAY, 1.0)] + _network(20, 120)
    pt, closed, rejected, _ = _feed(rows)
    assert pt.stats.accepted >= 20 * 120 and rejected == {}
    assert len(closed) == 9 and "bad" not in pt.registry.index   # still held, not a sensor
    assert pt.stats.held == 1


def test_processing_time_bounds_the_clock():
    rows = _network(5, 24)
    rows.append(("s01", T0 + 30 * DAY, 1.0))
    pt, _, rejected, flags = _feed(rows, now_ms=T0 + DAY)
    assert list(rejected) == [len(rows) - 1] and "processing time" in rejected[len(rows) - 1]
    assert flags == ["s01"] and pt.stats.held == 0


def test_no_phantom_sensors_from_late_readings():
    rows = _network(20, 300) + [(f"old{s}", T0 - 365 * DAY + t * IV, 1.0)
                                for t in range(10) for s in range(5)]
    pt, _, rejected, _ = _feed(rows)
    assert len(rejected) == 50 and all(w.startswith("late") for w in rejected.values())
    assert len(pt.registry) == 20 and not any(s.startswith("old") for s in pt.registry.ids)


def test_held_readings_survive_a_state_round_trip():
    rows = _network(20, 100)
    rows.insert(20 * 50, ("s05", T0 + 50 * IV + DAY, 5.0))
    a = IncrementalPatcher(PatchingConfig(interval_ms=IV, patch_len=P))
    a.update(_batch(rows[:20 * 50 + 1]))
    assert a.stats.held == 1
    b = IncrementalPatcher(PatchingConfig(interval_ms=IV, patch_len=P))
    b.load_state_dict(a.state_dict())
    rest = _batch(rows[20 * 50 + 1:], start=20 * 50 + 1)
    ca, ra = a.update(rest)
    cb, rb = b.update(rest)
    assert ra == rb == [] and [c.step for c in ca] == [c.step for c in cb]
    # the held reading is rejected in a later batch: by its handle (the global index)
    assert a.last_admission.rejected_held == b.last_admission.rejected_held
    assert [h for h, _ in b.last_admission.rejected_held] == [20 * 50]


def _row_time(rows) -> int:
    """A replay's arrival time: the newest row fed (a sensor's own stamps do not move it)."""
    return max(r[1] for r in rows)


def _mostly_silent(n_rows: int = 600, back_at: int | None = None):
    """Two partitions: 5 sensors in partition 0, 3 of which fall silent at row 200 (and
    come back at ``back_at``), and 10 healthy ones in partition 1."""
    rows, parts = [], []
    for t in range(n_rows):
        for s in range(15):
            p = 0 if s < 5 else 1
            if p == 0 and s >= 2 and t >= 200 and (back_at is None or t < back_at):
                continue
            rows.append((f"s{s:02d}", T0 + t * IV, float(t % 50 + s)))
            parts.append(p)
    return rows, parts


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("sizes", [(500,), (37,), (1,)])
def test_a_partition_whose_sensors_mostly_fall_silent_keeps_the_clock(fast, sizes):
    """Three of a partition's five sensors go silent: the two left cannot make the quorum of
    three, so without arrival times the clock stalls (the whole patcher stops closing steps,
    every partition's, and the two are dead-lettered and flagged as stamped ahead). With
    arrival times the silent ones stop counting after ``clock_dead_steps`` and nothing is
    lost, whatever the batching."""
    rows, parts = _mostly_silent()
    _, stalled, _, blamed = _feed(rows, parts=parts, sizes=sizes, fast=fast)
    assert len(stalled) < 20 and blamed                  # the defect, as it was
    pt, closed, rejected, flags = _feed(rows, parts=parts, sizes=sizes, fast=fast,
                                        arrival=_row_time)
    assert rejected == {} and flags == [] and pt.stats.accepted == len(rows)
    assert [c[0] for c in closed] == list(range(closed[0][0], closed[0][0] + 49))


def test_silent_sensors_that_come_back_count_again():
    rows, parts = _mostly_silent(back_at=400)
    pt, closed, rejected, flags = _feed(rows, parts=parts, arrival=_row_time)
    assert rejected == {} and flags == [] and pt.stats.accepted == len(rows)
    assert len(closed) == 49 and pt.clock._n_dead == {}
    # back to a quorum of three: one sensor stamped a day ahead still cannot move the clock
    bad = [("s00", T0 + 600 * IV + DAY + k * IV, 1.0) for k in range(30)]
    more = bad + [(f"s{s:02d}", T0 + t * IV, 1.0) for t in range(600, 640) for s in range(15)]
    pt2, closed2, rejected2, flags2 = _feed(
        rows + more, parts=parts + [0] * 30 + [0 if s < 5 else 1 for t in range(600, 640)
                                              for s in range(15)],
        arrival=lambda rs: min(_row_time(rs), T0 + 640 * IV))
    assert flags2 == ["s00"] and len(closed2) == len(closed) + 4
    assert sorted(rejected2) == list(range(len(rows), len(rows) + 30))


def test_arrival_times_round_trip_and_are_validated():
    rows, parts = _mostly_silent(300)
    a = IncrementalPatcher(PatchingConfig(interval_ms=IV, patch_len=P))
    a.update(_batch(rows[:2000], parts[:2000]), arrival_ms=_row_time(rows[:2000]))
    b = IncrementalPatcher(PatchingConfig(interval_ms=IV, patch_len=P))
    b.load_state_dict(a.state_dict())
    rest = _batch(rows[2000:], parts[2000:], start=2000)
    ca, _ = a.update(rest, arrival_ms=_row_time(rows[2000:]))
    cb, _ = b.update(rest, arrival_ms=_row_time(rows[2000:]))
    assert [c.step for c in ca] == [c.step for c in cb] and len(ca) > 5
    with pytest.raises(ConfigError, match="clock_dead_steps"):
        PatchingConfig(clock_dead_steps=-1).validate()


def test_a_pause_in_arrivals_makes_no_sensor_silent():
    """Silence is judged against the partition's newest arrival, not the wall clock: after
    a worker was down for a day, the first batch (led by a sensor stamped a day ahead) finds
    every sensor still counting, so that sensor cannot move the clock."""
    rows = _network(5, 300)
    bad = [("s01", T0 + 300 * IV + DAY + k * IV, 1.0) for k in range(3)]
    later = bad + _network(5, 60, T0 + 300 * IV)
    stamped_ahead = {id(r) for r in bad}
    pt, closed, rejected, flags = _feed(
        rows + later, sizes=(1500, 303),
        arrival=lambda rs: _row_time([r for r in rs if id(r) not in stamped_ahead])
        + (DAY if rs[0] is bad[0] else 0))
    assert flags == ["s01"] and sorted(rejected) == [1500, 1501, 1502]
    assert pt.stats.accepted == len(rows) + 300 and len(closed) == 29
