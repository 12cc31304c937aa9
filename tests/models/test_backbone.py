"""The spatio-temporal backbone: shapes, masks, incremental = batch, objectives, checkpoints."""

import numpy as np
import pytest
import torch

from models.backbone import STBackbone, STBackboneConfig
from models.checkpoint import load_checkpoint, save_checkpoint
from models.graph import laplacian_pe
from models.objectives import (
    augment,
    contrastive_loss,
    info_nce,
    masked_patch_loss,
    regression_loss,
    token_mask,
)

N, T, P = 6, 10, 4
RING = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])


def _cfg(**kw) -> STBackboneConfig:
    base = dict(patch_len=P, context_patches=3, horizon=5, d_model=16, n_heads=2, n_layers=3,
                num_nodes=N, lap_pe_dim=3, steps_per_day=6)
    base.update(kw)
    return STBackboneConfig(**base)


def _model(**kw) -> STBackbone:
    torch.manual_seed(0)
    m = STBackbone(_cfg(**kw)).eval()
    with torch.no_grad():
        m.forecast_head.weight.normal_()
    return m


def _data(s: int = 1):
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(s, N, T, P, generator=g) > 0.2
    x = torch.randn(s, N, T, P, generator=g) * mask
    steps = torch.arange(100, 100 + T).repeat(s, 1)
    return x, mask, steps


@pytest.mark.parametrize("graph", [True, False])
def test_streaming_step_equals_full_window(graph):
    m = _model(graph=graph)
    x, mask, steps = _data()
    lap = laplacian_pe(RING.numpy(), N, 3)
    kw = dict(node_ids=torch.arange(N), lap_pe=lap, edge_index=RING if graph else None)
    with torch.no_grad():
        full = m(x, mask, steps, **kw)[0]
        caches, outs = None, []
        for t in range(T):  # longer than the window: the caches slide
            y, caches = m.step(x[0, :, t:t + 1], mask[0, :, t:t + 1], steps[0, t], caches, **kw)
            outs.append(y)
    assert full.shape == (N, T, 5)
    assert (full - torch.stack(outs, 1)).abs().max().item() < 1e-5
    assert caches[0][0].shape[2] == 2  # window - 1 cached keys per layer


@pytest.mark.parametrize(("graph", "layers", "window"), [(True, 3, 3), (False, 1, 3),
                                                      (True, 2, 1), (False, 2, 12)])
def test_the_last_token_alone_equals_the_whole_pass(graph, layers, window):
    """Serving reads the last token: ``last_only`` computes it alone (longer windows than
    the attention's, a window of 1, one layer, with and without the graph), same outputs."""
    m = _model(graph=graph, n_layers=layers, context_patches=window, quantiles=True,
               instance_norm=True)
    x, mask, steps = _data(2)
    mask[0, 2, -1] = False                       # a last patch missing: the anchor looks back
    lap = laplacian_pe(RING.numpy(), N, 3)
    kw = dict(node_ids=torch.arange(N), lap_pe=lap, edge_index=RING if graph else None,
              heads=("forecast", "quantiles"))
    with torch.no_grad():
        full = m.run(x * mask, mask, steps, **kw)
        last = m.run(x * mask, mask, steps, last_only=True, **kw)
    for key in ("forecast", "quantiles", "h"):
        assert last[key].shape[2] == 1
        assert (full[key][:, :, -1:] - last[key]).abs().max().item() < 1e-5, key


def test_masked_points_and_the_future_do_not_leak():
    m = _model()
    x, mask, steps = _data()
    with torch.no_grad():
        base = m(x, mask, steps, edge_index=RING)
        x2 = x.clone()
        x2[~mask] = 123.0         # values under the mask are ignored
        x2[:, :, -1] = 7.0        # the last token cannot change earlier forecasts
        other = m(x2, mask, steps, edge_index=RING)
    torch.testing.assert_close(base[:, :, :-1], other[:, :, :-1])


def test_unseen_sensor_gets_a_spatial_embedding():
    m = _model()
    x, mask, steps = _data()
    lap = laplacian_pe(RING.numpy(), N, 3)
    ids = torch.tensor([0, 1, 2, 3, 4, -1])
    with torch.no_grad():
        a = m.tokens(x, mask, steps, node_ids=ids, lap_pe=lap)
        b = m.tokens(x, mask, steps, node_ids=ids, lap_pe=torch.zeros_like(lap))
    assert not torch.allclose(a[:, 5], b[:, 5])
    pe = laplacian_pe(RING.numpy(), N, 3)
    assert torch.equal(pe, lap) and pe.shape == (N, 3)


def test_objectives_are_finite_and_masks_behave():
    m = _model()
    m.train()
    x, mask, steps = _data(s=2)
    g = torch.Generator().manual_seed(0)
    blk = token_mask((2, N, T), 0.3, block=True, generator=g)
    runs = blk.int().diff(dim=-1).clamp_min(0).sum(-1)
    assert (blk.sum(-1) == 3).all() and (runs <= 1).all()
    rnd = token_mask((50, N, T), 0.3, block=False, generator=g)
    assert 0.25 < rnd.float().mean() < 0.35
    xa, ma = augment(x, mask, generator=g)
    assert (xa[~ma] == 0).all() and (ma <= mask).all()
    mp = masked_patch_loss(m, x, mask, steps, generator=g, edge_index=RING)
    cl = contrastive_loss(m, x, mask, steps, generator=g, edge_index=RING)
    pred = m(x, mask, steps, edge_index=RING)
    rg = regression_loss(pred, torch.zeros_like(pred), torch.ones_like(pred, dtype=torch.bool))
    (mp + cl + rg).backward()
    assert all(torch.isfinite(v) for v in (mp, cl, rg))
    assert m.mask_token.grad is not None and m.projection_head[0].weight.grad is not None


def test_info_nce_prefers_matching_pairs():
    z = torch.randn(16, 8)
    assert info_nce(z, z + 0.01 * torch.randn(16, 8)) < info_nce(z, torch.randn(16, 8))


def test_checkpoint_round_trip(tmp_path):
    m = _model()
    path = save_checkpoint(tmp_path / "bb", m, architecture="st_backbone",
                           config=m.cfg.to_dict())
    m2, meta = load_checkpoint(path)
    x, mask, steps = _data()
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask, steps, edge_index=RING),
                                   m2(x, mask, steps, edge_index=RING))
    assert meta["architecture"] == "st_backbone"
    assert np.isclose(meta["config"]["d_model"], 16)


def test_a_gated_graph_layer_starts_as_the_identity_and_learns_its_gate():
    """``graph_gate``: at initialization the graph changes nothing (the gate is 0); one
    training step moves the gate, after which the neighbours count."""
    m = _model(graph=True, graph_gate=True).train()
    x, mask, steps = _data(2)
    kw = dict(node_ids=torch.arange(N))
    with torch.no_grad():
        m.eval()
        with_graph = m(x, mask, steps, edge_index=RING, **kw)
        without = m(x, mask, steps, **kw)
    assert torch.allclose(with_graph, without, atol=1e-6)
    m.train()
    loss = m(x, mask, steps, edge_index=RING, **kw).pow(2).mean()
    loss.backward()
    assert m.graph_layer.gate.grad is not None and m.graph_layer.gate.grad.abs() > 0
    old = STBackbone(_cfg(graph=True))                  # a checkpoint without the gate
    assert old.graph_layer.gate is None and "graph_layer.gate" not in old.state_dict()
