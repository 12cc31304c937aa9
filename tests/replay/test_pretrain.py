"""Offline pretraining: it learns, it is deterministic, it resumes exactly, the CLI works."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from replay.pretrain import PretrainConfig, batch_of, prepare, pretrain
from replay.simulator import SimConfig, simulate, write_simulation


@pytest.fixture(scope="module")
def rec():
    return simulate(SimConfig(n_sensors=8, n_days=6, seed=2))[0]


def _cfg(**kw) -> PretrainConfig:
    base = dict(epochs=3, d_model=16, n_heads=2, n_layers=1, batch_size=8, patience=5)
    base.update(kw)
    return PretrainConfig(**base)


def test_windows_and_targets_line_up(rec):
    cfg = _cfg()
    data = prepare(rec, cfg)
    b = batch_of(data, data.starts["train"][:2], cfg, torch.device("cpu"))
    k, p, h = cfg.context_patches, cfg.patch_len, cfg.horizon
    assert b["x"].shape == (2, 8, k, p) and b["y"].shape == (2, 8, k, h)
    s0 = int(data.starts["train"][0])
    # the target of token t starts right after its patch
    assert torch.equal(b["y"][0, :, 0, :], data.x[s0 + p:s0 + p + h].T)
    assert data.starts["train"].max() + data.span <= int(0.8 * rec.n_steps)
    assert data.starts["val"].min() >= int(0.8 * rec.n_steps) - data.span + h


def test_pretraining_lowers_validation_loss_and_is_deterministic(rec, tmp_path):
    a = pretrain(rec, tmp_path / "a", _cfg(), progress=False)
    b = pretrain(rec, tmp_path / "b", _cfg(), progress=False)
    vals = [h["val_total"] for h in a.history]
    assert vals[-1] < vals[0]
    assert [h["val_total"] for h in b.history] == vals
    ma, meta = load_checkpoint(tmp_path / "a" / "best")
    mb, _ = load_checkpoint(tmp_path / "b" / "best")
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert meta["extra"]["sensors"] == list(rec.sensors) and ma.cfg.graph


def test_resume_continues_exactly(rec, tmp_path):
    full = pretrain(rec, tmp_path / "full", _cfg(epochs=3), progress=False)
    pretrain(rec, tmp_path / "cut", _cfg(epochs=2), progress=False)   # "interrupted" here
    resumed = pretrain(rec, tmp_path / "cut", _cfg(epochs=3), resume=True, progress=False)
    assert resumed.epochs_run == 3
    assert np.allclose([h["val_total"] for h in resumed.history],
                       [h["val_total"] for h in full.history])


def test_cli_pretrain(rec, tmp_path):
    data = tmp_path / "net.npz"
    write_simulation(rec, [], data)
    r = subprocess.run([sys.executable, "-m", "stfm.cli", "replay", "pretrain", str(data),
                        "--out", str(tmp_path / "ck"), "--epochs", "1", "--d-model", "16",
                        "--n-heads", "2", "--n-layers", "1", "--no-graph", "--quiet"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["epochs"] == 1 and out["samples_per_s"] > 0
    model, _ = load_checkpoint(out["checkpoint"])
    assert not model.cfg.graph


def test_pretrained_checkpoint_serves_in_the_online_core(rec, tmp_path):
    """The live core loads a pretrained backbone (graph included) and it beats random init."""
    from connectors.schemas import ReadingBatch
    from models.backbone import STBackbone
    from streaming.config import StreamConfig
    from streaming.forecast.online import OnlineModel
    from streaming.pipeline.core import StreamCore

    pretrain(rec, tmp_path / "pt", _cfg(epochs=4), progress=False)
    cfg = StreamConfig.from_dict({"model": {"lr": 0.0}})   # frozen: compare the weights only

    def run(model: OnlineModel) -> float:
        core = StreamCore(cfg, model, sensors=list(rec.sensors))
        t, n = rec.values.shape
        core.process(ReadingBatch(list(rec.sensors) * t, np.repeat(rec.timestamps, n),
                                  rec.values.reshape(-1), np.arange(t * n)))
        assert core.forecasts_made > 0 and np.isfinite(core.metrics.mae)
        return core.forecaster.expert_metrics["model"].mae   # the model's own forecasts

    loaded = OnlineModel.from_checkpoint(tmp_path / "pt" / "best", cfg.patching, cfg.model)
    assert isinstance(loaded.model, STBackbone) and loaded._graph is not None
    assert loaded._graph._for(list(rec.sensors))[2] is not None  # edges mapped to live ids
    torch.manual_seed(0)
    random_init = OnlineModel(STBackbone(loaded.model.cfg), cfg.model, meta={
        "extra": {"sensors": list(rec.sensors)}})
    # a random head on a persistence-based backbone is zero: random init *is* persistence,
    # which the tiny model pretrained for 4 epochs beats (~4 %)
    assert run(loaded) < 0.98 * run(random_init)


def test_torchrun_data_parallel(rec, tmp_path):
    """Two ranks (gloo on CPU) train one model: gradients are averaged, rank 0 saves it."""
    data = tmp_path / "net.npz"
    write_simulation(rec, [], data)
    # --standalone: the rendezvous takes a port of its own choosing (no port picked here that
    # another process could take first)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]
    r = subprocess.run([*torchrun, "-m", "stfm.cli", "replay", "pretrain", str(data),
                        "--out", str(tmp_path / "ddp"), "--epochs", "2", "--d-model", "16",
                        "--n-heads", "2", "--n-layers", "1", "--quiet"],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    # both ranks print a JSON summary to the same pipe, possibly on one line
    dec = json.JSONDecoder()
    results, text, i = [], r.stdout, r.stdout.find("{")
    while i >= 0:
        obj, end = dec.raw_decode(text, i)
        results.append(obj)
        i = text.find("{", end)
    assert len(results) == 2 and results[0]["best_val"] == results[1]["best_val"]
    load_checkpoint(tmp_path / "ddp" / "best")


def test_explicit_test_border_and_bad_split(rec):
    cfg = _cfg(train_rows=800, val_rows=200, test_rows=400)
    data = prepare(rec, cfg)
    assert data.starts["test"].max() + data.span <= 1400
    assert data.starts["test"].min() >= 1000 - data.span + cfg.horizon
    with pytest.raises(ValueError, match="exceeds the recording"):
        prepare(rec, _cfg(train_rows=800, val_rows=200, test_rows=rec.n_steps))
    with pytest.raises(ValueError, match="test_rows"):
        _cfg(test_rows=-1).validate()


def test_fine_tuning_checkpoint_must_know_the_sensors(rec, tmp_path):
    from dataclasses import replace

    res = pretrain(rec, tmp_path / "pt", _cfg(epochs=1), progress=False)
    renamed = replace(rec, sensors=[f"x{i}" for i in range(rec.n_sensors)])
    with pytest.raises(ValueError, match="other sensors"):
        pretrain(renamed, tmp_path / "ft", _cfg(epochs=1, init_checkpoint=res.checkpoint),
                 progress=False)


def test_select_on_a_single_objective(rec, tmp_path):
    res = pretrain(rec, tmp_path / "sel", _cfg(epochs=2, select_on="forecast"), progress=False)
    assert res.best_val == min(h["val_forecast"] for h in res.history)
    with pytest.raises(ValueError, match="select_on"):
        _cfg(select_on="masked", w_masked=0.0).validate()


def test_no_graph_is_said_and_the_checkpoint_has_one_truth(rec, tmp_path, caplog):
    import dataclasses

    flat = dataclasses.replace(rec, edge_index=None, edge_weight=None)
    res = pretrain(flat, tmp_path / "ng", _cfg(epochs=1), progress=False)
    assert "without the graph layer" in caplog.text
    _, meta = load_checkpoint(res.checkpoint)
    assert meta["config"]["graph"] is False and meta["extra"]["pretrain"]["graph"] is False


def test_a_network_without_a_graph_trains_on_its_comovement_graph(rec, tmp_path, caplog):
    """``graph_from = comovement``: the graph comes from the training rows only (changing
    the later rows does not change it) and the checkpoint keeps it for serving."""
    import dataclasses
    import logging

    from replay.pretrain import with_graph

    caplog.set_level(logging.INFO, logger="replay.pretrain")
    flat = dataclasses.replace(rec, edge_index=None, edge_weight=None)
    cfg = _cfg(epochs=1, graph_from="comovement", graph_k=3)
    res = pretrain(flat, tmp_path / "cg", cfg, progress=False)
    assert "comovement graph" in caplog.text
    model, meta = load_checkpoint(res.checkpoint)
    assert meta["config"]["graph"] is True and model.graph_layer is not None
    ei = np.asarray(meta["extra"]["edge_index"])
    assert ei.shape[0] == 2 and ei.shape[1] > 0 and (ei[0] != ei[1]).all()
    later = flat.values.copy()
    train = int(0.8 * flat.n_steps)
    later[train:] = np.random.default_rng(0).standard_normal(later[train:].shape)
    again = with_graph(dataclasses.replace(flat, values=later), cfg)
    assert np.array_equal(again.edge_index, ei)                    # training rows only
    assert with_graph(rec, _cfg(graph_from="auto")) is rec          # a given graph is kept
    with pytest.raises(Exception, match="graph_from"):
        _cfg(graph_from="learned").validate()


def test_torch_threads_come_from_the_config(tmp_path, monkeypatch):
    rec = simulate(SimConfig(n_sensors=3, n_days=3, seed=2))[0]     # small: threads only
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    before = torch.get_num_threads()
    pretrain(rec, tmp_path / "t", _cfg(epochs=1), progress=False)
    assert seen[0] == PretrainConfig().threads == 1     # one thread by default
    assert torch.get_num_threads() == before            # and put back afterwards
    seen.clear()
    pretrain(rec, tmp_path / "t2", _cfg(epochs=1, threads=2), progress=False)
    assert seen[0] == 2
    with pytest.raises(ValueError, match="pretrain.threads"):
        _cfg(threads=-1).validate()


def test_a_checkpoint_from_another_network_is_said_with_each_difference(rec, tmp_path,
                                                                        caplog):
    """Pretrained on 8 sensors at 5 minutes, served on 4 of them plus a new one at 10
    minutes: one warning per difference, naming it."""
    import logging

    from streaming.config import StreamConfig
    from streaming.pipeline.factory import build_core

    res = pretrain(rec, tmp_path / "pt", _cfg(epochs=1), progress=False)
    from connectors.recordings import Recording, write_recording

    net = Recording(timestamps=rec.timestamps[0] + 600_000 * np.arange(10),
                    sensors=[*rec.sensors[:4], "elsewhere"],
                    values=rec.values[:10, :5], interval_ms=600_000)
    write_recording(net, tmp_path / "net.npz")
    cfg = StreamConfig.load(None, {"patching.interval_ms": 600_000,
                                   "graph": str(tmp_path / "net.npz")})
    with caplog.at_level(logging.WARNING, logger="streaming.pipeline.factory"):
        build_core(cfg, res.checkpoint)
    said = [r.getMessage() for r in caplog.records if "does not match the data" in r.getMessage()]
    assert len(said) == 2, said
    assert "trained at a 5 min interval, served at 10 min" in said[0]
    assert ("trained on 8 sensors, served 5: 1 served sensors it never saw (e.g. 'elsewhere')"
            ", 4 of its sensors not served") in said[1]
    with caplog.at_level(logging.WARNING, logger="streaming.pipeline.factory"):
        caplog.clear()
        build_core(StreamConfig.load(None, {}), res.checkpoint)
    assert not [r for r in caplog.records if "does not match" in r.getMessage()]
