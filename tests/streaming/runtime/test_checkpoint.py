"""Worker checkpoints: exact state round trip of the core, atomic store, corrupt fallback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from connectors.kafka_async import TP
from streaming.runtime.checkpoint import (
    CheckpointError,
    CheckpointStore,
    decode_state,
    encode_state,
)


def _core(rec, **over):
    from streaming.config import StreamConfig
    from streaming.forecast.online import OnlineModel
    from streaming.pipeline.core import StreamCore

    cfg = StreamConfig.load(None, {"patching.interval_ms": rec.interval_ms, **over})
    return StreamCore(cfg, OnlineModel.fresh(cfg.patching, cfg.model, cfg.adapt),
                      sensors=list(rec.sensors))


def _outputs(core, rec, lo, hi):
    from replay.backtest import backtest

    res = backtest(rec, core, start_row=lo, end_row=hi, progress=False)
    fc = list(zip(res.steps.tolist(), res.versions, res.yhat, strict=True))
    return fc, [a["id"] for a in res.alerts], list(res.scores)


@pytest.mark.parametrize("detector", ["page_hinkley", "adwin", "kswin"])
def test_core_state_round_trips_through_a_checkpoint(tmp_path: Path, detector: str) -> None:
    from replay.simulator import SimConfig, simulate

    rec, _ = simulate(SimConfig(n_sensors=4, n_days=4, seed=5, n_events=4))
    cut = 3 * 288
    a = _core(rec, **{"drift.detector": detector})
    _outputs(a, rec, 0, cut)
    store = CheckpointStore(tmp_path, "core")
    store.save(a.state_dict(), {TP("readings", 0): cut})
    ck = store.load_latest()
    assert ck is not None and ck.offsets == {TP("readings", 0): cut}
    b = _core(rec, **{"drift.detector": detector})
    b.load_state_dict(ck.state)
    fa, aa, sa = _outputs(a, rec, cut, rec.n_steps)
    fb, ab, sb = _outputs(b, rec, cut, rec.n_steps)
    assert [(s, v) for s, v, _ in fa] == [(s, v) for s, v, _ in fb]
    for (_, _, ya), (_, _, yb) in zip(fa, fb, strict=True):
        np.testing.assert_array_equal(ya, yb)
    assert aa == ab
    np.testing.assert_array_equal(np.stack(sa), np.stack(sb))
    for (k, va), (_, vb) in zip(a.model.model.state_dict().items(),
                                b.model.model.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def test_encode_refuses_objects_it_cannot_load_safely() -> None:
    state = {"a": np.arange(3), "b": [np.float32(1.5), (1, "x", None)], "c": {1: True}}
    back = decode_state(encode_state(state))
    np.testing.assert_array_equal(back["a"], np.arange(3))
    assert back["b"][0] == 1.5 and back["b"][1] == (1, "x", None) and back["c"] == {1: True}
    with pytest.raises(TypeError, match=r"state\['x'\]: cannot checkpoint a set"):
        encode_state({"x": {1, 2}})
    with pytest.raises(TypeError, match="object arrays"):
        encode_state(np.array([object()]))


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path, caplog) -> None:
    store = CheckpointStore(tmp_path, "w", keep=3)
    for i in range(4):
        store.save({"i": i, "arr": np.full(3, i)}, {TP("readings", 0): 10 * i})
    assert [p.name for p in store.paths()] == ["ckpt-00000002", "ckpt-00000003",
                                               "ckpt-00000004"]
    newest = store.paths()[-1]
    blob = bytearray((newest / "state.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF                           # one flipped byte
    (newest / "state.pt").write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING):
        ck = store.load_latest()
    assert ck.state["i"] == 2 and ck.offsets == {TP("readings", 0): 20}
    assert "checksum mismatch" in caplog.text and "ckpt-00000004" in caplog.text
    # half-written: a directory without its manifest, and a stray temporary directory
    (store.paths()[-2] / "manifest.json").unlink()         # ckpt 3 loses its manifest
    (store.dir / ".tmp-ckpt-00000009-1").mkdir()
    assert store.load_latest().state["i"] == 1


def test_wrong_version_and_tampering_are_named(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "w")
    p = store.save({"i": 1}, {})
    m = json.loads((p / "manifest.json").read_text())
    m["version"] = 99
    (p / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="version 99 is not supported"):
        CheckpointStore.read(p)
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        store.load_latest()
    # a pickle that would run code: rejected by the safe loader even with a valid checksum
    import hashlib
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = pickle.dumps({"i": Evil()}, protocol=2)
    q = CheckpointStore(tmp_path, "evil").save({"i": 1}, {})
    (q / "state.pt").write_bytes(evil)
    m = json.loads((q / "manifest.json").read_text())
    m["files"]["state.pt"] = {"sha256": hashlib.sha256(evil).hexdigest(), "bytes": len(evil)}
    (q / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        CheckpointStore.read(q)
    assert CheckpointStore(tmp_path, "empty").load_latest() is None
