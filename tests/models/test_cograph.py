"""The co-movement graph: each sensor linked to the sensors that move with it."""

import numpy as np
import pytest

from models.cograph import comovement_graph


def _two_groups(rows: int = 400, seed: int = 0) -> np.ndarray:
    """Sensors 0-3 follow one signal, 4-7 another, plus noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((2, rows)).cumsum(1)
    noise = 0.3 * rng.standard_normal((rows, 8))
    return np.stack([a] * 4 + [b] * 4, 1) + noise


def test_links_sensors_that_move_together_and_only_those() -> None:
    ei, ew = comovement_graph(_two_groups(), k=3, min_corr=0.5)
    assert ei.shape[0] == 2 and ei.shape[1] == len(ew) > 0
    group = ei // 4
    assert (group[0] == group[1]).all()                  # no edge across the groups
    assert (ei[0] != ei[1]).all()                        # no self-loops
    assert (ew >= 0.5).all() and ew.dtype == np.float32
    pairs = set(map(tuple, ei.T.tolist()))
    assert all((d, s) in pairs for s, d in pairs)        # symmetric
    assert len(pairs) == ei.shape[1]                     # no duplicate edges
    assert {s for s, _ in pairs} == set(range(8))        # everyone has neighbours


def test_missing_values_and_blocks_give_the_same_graph() -> None:
    v = _two_groups(seed=1)
    v[np.random.default_rng(2).random(v.shape) < 0.1] = np.nan
    whole = comovement_graph(v, k=3)
    blocked = comovement_graph(v, k=3, block=3)
    assert np.array_equal(whole[0], blocked[0]) and np.allclose(whole[1], blocked[1])


def test_unrelated_or_too_short_series_give_no_edges() -> None:
    rng = np.random.default_rng(3)
    ei, ew = comovement_graph(rng.standard_normal((2000, 6)), k=2, min_corr=0.3)
    assert ei.shape == (2, 0) and ew.shape == (0,)
    ei, _ = comovement_graph(_two_groups(rows=10), k=2, min_rows=24)
    assert ei.shape == (2, 0)


@pytest.mark.parametrize(("values", "kw"), [(np.zeros(5), {}), (np.zeros((5, 3)), {"k": 0}),
                                            (np.zeros((5, 3)), {"min_corr": 1.0})])
def test_bad_input_is_rejected(values, kw) -> None:
    with pytest.raises(ValueError, match="comovement graph"):
        comovement_graph(values, **kw)
