import json

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.patch_transformer import PatchTransformer, PatchTransformerConfig


def _model(**kw) -> PatchTransformer:
    torch.manual_seed(0)
    return PatchTransformer(PatchTransformerConfig(**kw))


def test_shapes_and_fresh_model_forecasts_window_mean():
    m = _model(patch_len=4, context_patches=3, horizon=5)
    x = torch.randn(7, 3, 4) * 3 + 10
    mask = torch.rand(7, 3, 4) > 0.2
    y = m(x, mask)
    assert y.shape == (7, 5)
    mean = (x * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2))
    torch.testing.assert_close(y, mean[:, None].expand(7, 5), rtol=1e-5, atol=1e-4)


def test_masked_values_do_not_change_the_output():
    m = _model(patch_len=4, context_patches=3, horizon=2)
    with torch.no_grad():
        m.head.weight.normal_()
    x = torch.randn(2, 3, 4)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[:, 1, 2] = False
    x2 = x.clone()
    x2[:, 1, 2] = 1e6
    torch.testing.assert_close(m(x, mask), m(x2, mask))


def test_causal_last_token_ignores_nothing_but_earlier_tokens_ignore_later():
    m = _model(patch_len=2, context_patches=4, horizon=1)
    with torch.no_grad():
        m.head.weight.normal_()
    x = torch.randn(1, 4, 2)
    mask = torch.ones(1, 4, 2, dtype=torch.bool)
    z, _, _ = m.revin(x, mask)
    h1 = m.encoder(m.embed(z, mask) + m.pos, mask=m.causal_mask)
    x2 = x.clone()
    x2[:, -1] += 5.0
    z2, _, _ = m.revin(x2, mask)
    h2 = m.encoder(m.embed(z2, mask) + m.pos, mask=m.causal_mask)
    assert not torch.allclose(h1[:, -1], h2[:, -1])


@pytest.mark.parametrize(("layers", "k"), [(1, 4), (2, 4), (2, 1)])
def test_the_last_token_alone_equals_the_whole_encoder(layers, k):
    """The forecast reads the last token: the last layer computes it alone, same outputs as
    the whole encoder read at the last token (one or two layers, a one-patch window)."""
    m = _model(patch_len=3, context_patches=4, horizon=2, n_layers=layers, d_model=16).eval()
    with torch.no_grad():
        m.head.weight.normal_()
        x = torch.randn(5, k, 3)
        mask = torch.rand(5, k, 3) > 0.2
        y, emb = m.forecast_and_embed(x, mask)
        z, loc, scale = m.revin(x, mask)
        h = m.encoder(m.embed(z, mask) + m.pos[-k:], mask=m.causal_mask[:k, :k])
        ref = m.norm(h[:, -1])
    assert (emb - ref).abs().max().item() < 1e-5
    assert (y - m.forward(x, mask)).abs().max().item() < 1e-5


def test_learns_a_sine():
    torch.manual_seed(0)
    m = _model(patch_len=6, context_patches=4, horizon=6, d_model=16)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    t = np.arange(4000)
    s = np.sin(2 * np.pi * t / 48).astype(np.float32)
    idx = np.arange(0, 3900 - 30, 7)
    xs = torch.from_numpy(np.stack([s[i:i + 24] for i in idx]).reshape(-1, 4, 6))
    ys = torch.from_numpy(np.stack([s[i + 24:i + 30] for i in idx]))
    mask = torch.ones_like(xs, dtype=torch.bool)
    before = torch.mean((m(xs, mask) - ys) ** 2).item()
    for _ in range(150):
        opt.zero_grad()
        loss = torch.mean((m(xs, mask) - ys) ** 2)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * before


def test_checkpoint_round_trip(tmp_path):
    m = _model(patch_len=4, context_patches=3, horizon=5)
    with torch.no_grad():
        m.head.weight.normal_()
    path = save_checkpoint(tmp_path / "ck", m, architecture="patch_transformer",
                           config=m.cfg.to_dict())
    m2, meta = load_checkpoint(path)
    x = torch.randn(2, 3, 4)
    mask = torch.ones_like(x, dtype=torch.bool)
    torch.testing.assert_close(m(x, mask), m2(x, mask))
    assert meta["format_version"] == 1
    # overwriting keeps a valid checkpoint in place
    save_checkpoint(path, m2, architecture="patch_transformer", config=m.cfg.to_dict())
    load_checkpoint(path)


def test_bad_checkpoints_fail_clearly(tmp_path):
    m = _model()
    path = save_checkpoint(tmp_path / "ck", m, architecture="patch_transformer",
                           config=m.cfg.to_dict())
    meta = json.loads((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "missing")
    (path / "weights.pt").write_bytes((path / "weights.pt").read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    meta["format_version"] = 99
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        load_checkpoint(path)
    (path / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
