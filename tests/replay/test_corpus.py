"""Corpus pretraining: sources, the mixing rule, the inductive backbone it produces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from connectors.recordings import Recording
from models.checkpoint import load_checkpoint
from replay.corpus import (
    SHARED,
    MixingSampler,
    index_windows,
    recording_source,
    shared_source,
    synthetic_series,
    synthetic_sources,
)
from replay.foundation import FoundationConfig, pretrain_corpus
from streaming.config import ConfigError, StreamConfig
from streaming.forecast.online import OnlineModel
from streaming.pipeline.core import StreamCore

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
P, K, H = 4, 3, 4
SPAN = P * K + H


def _rec(n: int, rows: int, interval: int, seed: int, graph: bool = False) -> Recording:
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    v = (np.sin(2 * np.pi * t / (86_400_000 / interval))[:, None] * rng.uniform(1, 3, n)
         + rng.normal(0, 0.2, (rows, n)) + rng.uniform(-5, 50, n))
    rec = Recording(timestamps=1_700_000_000_000 + t * interval,
                    sensors=[f"x{seed}-{i}" for i in range(n)], values=v, interval_ms=interval)
    if graph:
        src = np.arange(n)
        rec.edge_index = np.stack([src, (src + 1) % n])
        rec.edge_weight = np.ones(n, np.float32)
    return rec


def _sources() -> list:
    return [recording_source(_rec(3, 300, 3_600_000, 1), "hourly"),
            recording_source(_rec(7, 200, 300_000, 2, graph=True), "five-min-graph",
                             lap_pe_dim=2),
            recording_source(_rec(1, 120, 86_400_000, 3), "daily")]


def _cfg(**kw) -> FoundationConfig:
    base = dict(patch_len=P, context_patches=K, horizon=H, d_model=16, n_heads=2, n_layers=1,
                lap_pe_dim=2, max_steps=12, eval_every=6, batch_size=8, val_batches=2,
                threads=1, synthetic_series=0, synthetic_networks=0)
    base.update(kw)
    return FoundationConfig(**base)


def test_sampling_covers_every_source_by_the_stated_rule() -> None:
    srcs = index_windows(_sources(), SPAN, H, 2)
    srcs[0].synthetic = True
    sampler = MixingSampler(srcs, patch_len=P, context_patches=K, horizon=H, batch=8,
                            temperature=0.5, synthetic_share=0.25, seed=0)
    probs = dict((n, p) for n, _, p in sampler.mixing_table())
    assert probs["hourly"] == pytest.approx(0.25)          # the synthetic share
    n = {s.name: s.n_windows() for s in srcs[1:]}
    assert probs["five-min-graph"] / probs["daily"] == pytest.approx(
        np.sqrt(n["five-min-graph"] / n["daily"]))         # windows ** temperature
    seen: dict[str, int] = {}
    for _ in range(200):
        src, b = sampler.draw()
        seen[src.name] = seen.get(src.name, 0) + 1
        assert b["x"].shape[2:] == (K, P) and b["y"].shape[-1] == H
        if src.has_graph:                                  # whole networks, with the graph
            assert b["x"].shape[1] == 7 and "edge_index" in b and b["lap_pe"].shape == (7, 2)
        else:                                              # one-series samples
            assert b["x"].shape[1] == 1 and "edge_index" not in b
    assert set(seen) == {"hourly", "five-min-graph", "daily"}


def test_a_source_too_short_for_one_window_is_left_out(caplog) -> None:
    srcs = _sources() + [recording_source(_rec(2, 10, 60_000, 4), "tiny")]
    kept = index_windows(srcs, SPAN, H, 2)
    assert "tiny" not in {s.name for s in kept}
    assert "tiny has no window" in caplog.text


def test_synthetic_series_are_finite_and_varied() -> None:
    rng = np.random.default_rng(0)
    ys = [synthetic_series(rng, 500, 300_000) for _ in range(20)]
    assert all(np.isfinite(y).all() for y in ys)
    assert len({round(float(np.std(y)), 3) for y in ys}) == 20
    srcs = synthetic_sources(0, n_series=5, n_networks=1, lap_pe_dim=2)
    assert [s.synthetic for s in srcs] == [True, True] and srcs[1].has_graph


def test_pretrained_on_one_corpus_serves_another_network(tmp_path: Path) -> None:
    """No per-sensor weights: a checkpoint serves sensors it never saw, in another count and
    at another interval; p10 <= p50 <= p90."""
    res = pretrain_corpus(_sources(), tmp_path / "fm", _cfg(), progress=False)
    assert res.steps == 12 and Path(res.checkpoint, "weights.pt").exists()
    net, meta = load_checkpoint(res.checkpoint)
    assert meta["config"]["num_nodes"] == 0 and meta["extra"]["inductive"]
    assert not any("node" in k for k in net.state_dict())
    cfg = StreamConfig.from_dict({"patching": {"interval_ms": 600_000, "patch_len": P,
                                               "lateness_ms": 0},
                                  "model": {"context_patches": K, "horizon": H}})
    model = OnlineModel.from_checkpoint(res.checkpoint, cfg.patching, cfg.model, cfg.adapt)
    other = _rec(11, 80, 600_000, 9)
    other.sensors = [f"new-{i}" for i in range(11)]
    core = StreamCore(cfg, model, sensors=list(other.sensors))
    from replay.backtest import backtest

    out = backtest(other, core, progress=False)
    ok = ~np.isnan(out.yhat)
    assert ok.any()
    lo, hi = out.quantiles["0.1"], out.quantiles["0.9"]
    assert (lo[ok] <= out.yhat[ok] + 1e-9).all() and (out.yhat[ok] <= hi[ok] + 1e-9).all()
    assert core.model.n_updates > 0                     # adapting online


def test_corpus_pretraining_is_deterministic(tmp_path: Path) -> None:
    a = pretrain_corpus(_sources(), tmp_path / "a", _cfg(max_steps=6), progress=False)
    b = pretrain_corpus(_sources(), tmp_path / "b", _cfg(max_steps=6), progress=False)
    wa = torch.load(Path(a.checkpoint, "weights.pt"), weights_only=True)
    wb = torch.load(Path(b.checkpoint, "weights.pt"), weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="foundation.synthetic_share"):
        FoundationConfig.load(None, {"foundation.synthetic_share": 1.5})
    with pytest.raises(ConfigError, match="foundation.max_steps"):
        FoundationConfig.load(None, {"foundation.max_steps": 0})


@pytest.mark.skipif(not (DATA / "corpus").exists(),
                    reason=f"the shared data folder is not at {DATA}")
def test_every_shared_set_reads_with_its_pretraining_rows() -> None:
    for name in SHARED:
        src = shared_source(DATA, name)
        for b in src.blocks:
            assert b.values.shape[0] == b.val >= b.train > 0, name
            assert np.isfinite(b.values).any(), name
    assert shared_source(DATA, "los_loop").has_graph
    assert shared_source(DATA, "m4_hourly").blocks[0].ts is None


def test_the_network_graph_is_used_only_when_asked(tmp_path: Path) -> None:
    res = pretrain_corpus(_sources(), tmp_path / "fm", _cfg(max_steps=2), progress=False)
    rec = _rec(5, 50, 300_000, 7, graph=True)
    for live, spatial in ((False, False), (True, True)):
        cfg = StreamConfig.from_dict({"patching": {"patch_len": P},
                                      "model": {"context_patches": K, "horizon": H,
                                                "live_graph": live}})
        m = OnlineModel.from_checkpoint(res.checkpoint, cfg.patching, cfg.model, cfg.adapt)
        m.set_graph(list(rec.sensors), rec.edge_index, rec.edge_weight)
        assert m.is_spatial is spatial
        assert m.frozen_copy().is_spatial is spatial       # the frozen expert: same graph


def test_corpus_pretraining_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Two budgeted sessions (``session_steps``) end with the model of one uninterrupted run;
    a resume under another configuration is refused."""
    whole = pretrain_corpus(_sources(), tmp_path / "whole", _cfg(max_steps=8, eval_every=2),
                            progress=False)
    first = pretrain_corpus(_sources(), tmp_path / "split",
                            _cfg(max_steps=8, eval_every=2, session_steps=5), progress=False)
    assert first.steps == 5
    second = pretrain_corpus(_sources(), tmp_path / "split",
                             _cfg(max_steps=8, eval_every=2, session_steps=5), progress=False,
                             resume=True)
    assert second.steps == 8
    a = torch.load(tmp_path / "whole" / "last" / "state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "last" / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second.best_score == whole.best_score
    # (the first session also evaluated where it stopped)
    assert [h["step"] for h in second.history] == [2, 4, 5, 6, 8]
    assert [h["score"] for h in second.history if h["step"] != 5] == [
        h["score"] for h in whole.history]
    with pytest.raises(ValueError, match="another \\[foundation\\] configuration"):
        pretrain_corpus(_sources(), tmp_path / "split", _cfg(max_steps=8, eval_every=2, lr=0.1),
                        progress=False, resume=True)


def test_kernel_mixup_and_lagged_network_sources() -> None:
    from replay.corpus import training_pool
    from replay.synthetic import kernel_synth, lagged_network, ts_mixup

    rng = np.random.default_rng(0)
    for n in (300, 1500):
        y = kernel_synth(rng, n, 3_600_000)
        assert y.shape == (n,) and np.isfinite(y).all() and y.std() > 0
    real = _sources()
    pool = training_pool(real)
    assert pool and all(p.ndim == 1 for p in pool)
    mixed = ts_mixup(rng, pool, 100)
    assert mixed is not None and mixed.shape == (100,) and np.isfinite(mixed).all()
    assert ts_mixup(rng, pool, 10_000) is None          # no series that long
    values, ei, ew = lagged_network(rng, 12, 800, 300_000)
    assert values.shape == (800, 12) and np.isfinite(values).all()
    assert ei.shape[0] == 2 and ei.shape[1] == len(ew) and ei.max() < 12
    assert np.abs(values).max() < 100                   # stable
    # a sensor follows its neighbours' past: its own past plus theirs (lags 1-6) explains
    # it clearly better than its own past alone
    ratios = []
    for i in range(12):
        nb = sorted(set(ei[1][ei[0] == i].tolist()))
        y = values[6:, i]
        own = np.c_[np.ones(len(y)), values[5:-1, i]]
        both = np.c_[own, *[values[6 - lag:len(values) - lag, j] for j in nb
                             for lag in range(1, 7)]]
        res = [np.var(y - x @ np.linalg.lstsq(x, y, rcond=None)[0]) for x in (own, both)]
        ratios.append(res[1] / res[0])
    assert np.mean(ratios) < 0.9, ratios
    src = synthetic_sources(1, n_series=0, n_networks=0, lap_pe_dim=2, kernel_series=3,
                            mixup_series=3, lagged_networks=1, pool=pool)
    assert [s.name for s in src] == ["kernel_synth", "ts_mixup", "lagged0"]
    assert all(s.synthetic for s in src) and src[2].has_graph
    assert src[1].blocks[0].ts is None                  # a mixture has no clock
    windows = index_windows(src, SPAN, H, 2)
    assert len(windows) == 3
