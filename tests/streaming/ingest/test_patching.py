import numpy as np
import pytest

from connectors.schemas import ReadingBatch
from streaming.config import PatchingConfig
from streaming.forecast.normalization import OnlineNormalizer
from streaming.ingest.patching import IncrementalPatcher
from streaming.ingest.registry import SensorRegistry

IV = 1000  # interval (ms)
P = 4     # patch length


def batch(rows):
    s = [r[0] for r in rows]
    return ReadingBatch(s, np.array([r[1] for r in rows], np.int64),
                        np.array([np.nan if r[2] is None else r[2] for r in rows], float),
                        np.arange(len(rows)))


def patcher(lateness=0, sensors=None, **extra):
    cfg = PatchingConfig(interval_ms=IV, patch_len=P, lateness_ms=lateness, **extra)
    return IncrementalPatcher(cfg, SensorRegistry(sensors, fixed=sensors is not None))


def test_patch_boundaries_close_when_watermark_passes():
    p = patcher()
    closed, rej = p.update(batch([("a", t * IV, float(t)) for t in range(4)]))
    assert closed == [] and rej == []
    # the reading at grid point 4 starts step 1; its time passes the end of step 0
    closed, _ = p.update(batch([("a", 4 * IV, 4.0)]))
    assert [c.step for c in closed] == [0]
    np.testing.assert_array_equal(closed[0].values, [[0, 1, 2, 3]])
    assert closed[0].start_ts == 0 and closed[0].end_ts == 4 * IV


def test_alignment_to_nearest_grid_point():
    p = patcher()
    p.update(batch([("a", 0 * IV + 400, 1.0), ("a", 2 * IV - 300, 2.0)]))
    closed, _ = p.update(batch([("a", 10 * IV, 0.0)]))
    np.testing.assert_array_equal(closed[0].values[0, :3], [1.0, np.nan, 2.0][:3])


def test_gaps_are_masked_and_empty_steps_skipped():
    p = patcher()
    closed, _ = p.update(batch([("a", 0, 1.0), ("a", 3 * IV, 4.0), ("a", 13 * IV, 9.0)]))
    # step 0 closed with two gaps; steps 1 and 2 saw no reading at all: nothing to close
    assert [c.step for c in closed] == [0]
    assert np.isnan(closed[0].values[0, 1]) and np.isnan(closed[0].values[0, 2])
    assert p.next_open == 3


def test_out_of_order_within_lateness_is_accepted_and_late_rejected():
    p = patcher(lateness=2 * IV)
    rows = [("a", t * IV, float(t)) for t in range(6)] + [("a", 3 * IV - 10, 33.0)]
    closed, rej = p.update(batch(rows))
    assert closed == []  # watermark = 5 - 2 = grid 3: step 0 not past yet (end 4, half 0.5)
    # 6.9 is within lateness; then 7 moves the watermark to 5: step 0 closes, and a reading
    # for step 0 that arrives after that (even in the same batch) is late
    closed, rej = p.update(batch([("a", 2 * IV, 22.0), ("a", 7 * IV, 7.0), ("a", 1 * IV, 11.0)]))
    assert [c.step for c in closed] == [0]
    assert closed[0].values[0].tolist() == [0.0, 1.0, 22.0, 33.0]
    assert len(rej) == 1 and rej[0][0] == 2 and rej[0][1].startswith("late")
    assert p.stats.late == 1


def test_duplicates_last_wins_and_null_never_overwrites():
    p = patcher()
    p.update(batch([("a", 0, 1.0), ("a", 0, 2.0), ("a", IV, 5.0), ("a", IV, None)]))
    closed, _ = p.update(batch([("a", 8 * IV, 0.0)]))
    assert closed[0].values[0, 0] == 2.0 and closed[0].values[0, 1] == 5.0
    assert p.stats.duplicates == 1 and p.stats.null_values == 1


def test_result_independent_of_batching():
    rng = np.random.default_rng(3)
    rows = [(f"s{s}", int(t * IV + rng.integers(-300, 300)), float(rng.normal()))
            for t in range(200) for s in range(3)]
    rng.shuffle(rows[:50])
    a, b = patcher(lateness=3 * IV), patcher(lateness=3 * IV)
    ca, ra = a.update(batch(rows))
    cb, rb_all = [], []
    for i in range(0, len(rows), 7):
        c, r = b.update(batch(rows[i:i + 7]))
        cb += c
        rb_all += [(j + i, why) for j, why in r]
    assert [c.step for c in ca] == [c.step for c in cb]
    for x, y in zip(ca, cb, strict=True):
        np.testing.assert_array_equal(x.values[: y.values.shape[0]], y.values)
    assert [r[0] for r in ra] == [r[0] for r in rb_all]


def test_unknown_sensor_and_far_future_rejected():
    p = patcher(sensors=["a"])
    closed, rej = p.update(batch([("a", 0, 1.0), ("a", IV, 1.5), ("b", 0, 1.0),
                                  ("a", 10**9, 1.0), ("a", 2 * IV, 2.0)]))
    reasons = dict(rej)
    assert "unknown sensor 'b'" in reasons[2]
    # held while it could still be the start of a gap, then its sensor's next reading shows
    # it was stamped ahead: dead-lettered, and the clock never moved
    assert reasons[3].startswith("future") and "later readings" in reasons[3]
    assert p.clock.clock[0] == 2 and p.last_admission.flags[0].sensor == "a"


@pytest.mark.parametrize("value", [1e308, -1e308, 1e13, float(10**301)])
def test_absurd_values_are_out_of_range(value):
    p = patcher()
    closed, rej = p.update(batch([("a", 0, 1.0), ("a", IV, value), ("a", 2 * IV, 2.0)]))
    assert [i for i, _ in rej] == [1] and rej[0][1].startswith("out_of_range")
    assert "patching.value_abs_max" in rej[0][1] and p.stats.out_of_range == 1


def test_value_ranges_per_sensor_and_by_glob():
    p = patcher(value_ranges={"pm25/*": [0, 1000], "t1": [-40.0, 60.0]})
    closed, rej = p.update(batch([("pm25/a", 0, -1.0), ("pm25/a", IV, 12.0),
                                  ("t1", 0, 80.0), ("t1", IV, 20.0), ("other", 0, -1e6),
                                  ("pm25/a", 2 * IV, None)]))
    assert [i for i, _ in rej] == [0, 2]
    assert "[0, 1000]" in rej[0][1] and "'t1'" in rej[1][1]


def test_a_sensor_exists_from_its_first_accepted_reading():
    p = patcher(sensors=["a", "b"])
    p.update(batch([("a", t * IV, 1.0) for t in range(12)] + [("b", 9 * IV, 2.0)]))
    assert p.clock.first_step.tolist() == [0, 2]
    assert p.exists(2, 1).tolist() == [True, False] and p.exists(2, 2).tolist() == [True, True]


def test_state_round_trip():
    p = patcher(lateness=IV)
    p.update(batch([("a", t * IV, float(t)) for t in range(6)]))
    q = patcher()
    q.load_state_dict(p.state_dict())
    rest = batch([("a", t * IV, float(t)) for t in range(6, 12)])
    c1, _ = p.update(rest)
    c2, _ = q.update(rest)
    assert [c.step for c in c1] == [c.step for c in c2]
    for x, y in zip(c1, c2, strict=True):
        np.testing.assert_array_equal(x.values, y.values)


def test_normalizer_matches_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(5, 3, (2, 40))
    data[0, ::7] = np.nan
    n = OnlineNormalizer()
    for i in range(0, 40, 4):
        n.learn_many(data[:, i:i + 4])
    loc, scale = n.loc_scale(2)
    np.testing.assert_allclose(loc, np.nanmean(data, axis=1))
    np.testing.assert_allclose(scale, np.nanstd(data, axis=1, ddof=1))
    z = n.transform(data)
    np.testing.assert_allclose(n.inverse_transform(z), data)


def test_normalizer_unseen_sensor_is_identity_scale():
    n = OnlineNormalizer()
    loc, scale = n.loc_scale(3)
    assert loc.tolist() == [0, 0, 0] and scale.tolist() == [1, 1, 1]


@pytest.mark.parametrize("bad", [{"interval_ms": 0}, {"patch_len": -1}, {"lateness_ms": -5}])
def test_patching_config_rejects_bad_values(bad):
    from streaming.config import ConfigError, StreamConfig

    with pytest.raises(ConfigError, match="patching."):
        StreamConfig.from_dict({"patching": bad})


def test_partitions_read_one_after_the_other_lose_nothing():
    """A backlog read partition by partition: the clock is the slowest partition's."""
    p = patcher()
    rows_a = [("a", t * IV, float(t)) for t in range(40)]
    rows_b = [("b", t * IV, -float(t)) for t in range(40)]
    b1 = batch(rows_a)
    b1.partition = np.zeros(len(rows_a), np.int64)
    closed, rej = p.update(b1)
    assert rej == [] and [c.step for c in closed] == list(range(9))  # only partition 0 known
    b2 = batch(rows_b)
    b2.partition = np.ones(len(rows_b), np.int64)
    closed2, rej2 = p.update(b2)
    # partition 1 starts behind: its readings of already-closed steps are late, the rest not
    assert all(why.startswith("late") for _, why in rej2)
    assert len(rej2) == 9 * P

    q = patcher()
    q.set_partitions({0, 1})
    both = batch(rows_a[:20] + rows_b[:20])
    both.partition = np.array([0] * 20 + [1] * 20)
    closed, rej = q.update(both)
    assert rej == []
    assert [c.step for c in closed] == [0, 1, 2, 3]   # min over partitions: b is at t=19
    rest = batch(rows_b[20:] + rows_a[20:])
    rest.partition = np.array([1] * 20 + [0] * 20)
    closed, rej = q.update(rest)
    assert rej == []
    assert np.isfinite(closed[0].values).all()  # both sensors present in every closed step
