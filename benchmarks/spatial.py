#!/usr/bin/env python
"""Does the spatial path earn its place? The same backbone pretrained per network with no
graph layer, with a graph inferred from co-movement (``models.cograph``, from the training
rows only) and, where the data set has one, with its given graph (issue 32, item 1).

Variants ``-gated`` put the graph layer's output behind a learned gate that starts at 0
(``pretrain.graph_gate``), so training decides how much the neighbours count.

Per data set (``--data-dir``; the sets' standard splits from ``replay.corpus.SHARED``): each
variant is pretrained with ``stfm replay pretrain``'s code (``replay.pretrain.pretrain``) on
the training rows, early-stopped on the validation rows, with the same seed, shape and
budget; then its forecasts from the last token of every test window (stride one patch) are
scored against the truth, per horizon point, in the training rows' z units. Persistence
(the last observed value) is scored on the same points. The table gives MAE and the ratio
to the variant without a graph.

    python benchmarks/spatial.py --data-dir ../shared/data \
        [--datasets los_loop,sz_taxi,etth2,weather,bike_sharing] [--epochs 8] [--no-record]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

VARIANTS = ("none", "comovement", "given", "comovement-gated", "given-gated")


def recording(data_dir: Path, name: str) -> tuple[Any, int, int]:
    """The set as a ``Recording`` (z-scored by ``replay.corpus``), its train and val ends."""
    from connectors.recordings import Recording
    from replay.corpus import shared_source

    b = shared_source(data_dir, name, online=True).blocks[0]
    n = b.values.shape[1]
    ts = (b.ts if b.ts is not None else
          np.arange(len(b.values), dtype=np.int64) * b.interval_ms)
    ei = ew = None
    if b.graph is not None and "edge_index" in b.graph:
        ei = b.graph["edge_index"].numpy()
        ew = b.graph["edge_weight"].numpy() if "edge_weight" in b.graph else None
    rec = Recording(timestamps=np.asarray(ts, np.int64), sensors=[f"s{i}" for i in range(n)],
                    values=b.values, interval_ms=b.interval_ms, edge_index=ei, edge_weight=ew)
    return rec, b.train, b.val


def score(ckpt: str, rec: Any, cfg: Any) -> np.ndarray:
    """MAE per horizon point of the checkpoint's last-token forecasts on the test windows,
    and of persistence: ``[2, H]``."""
    import torch

    from models.checkpoint import load_checkpoint
    from replay.pretrain import batch_of, prepare

    model, meta = load_checkpoint(ckpt)
    meta = meta.get("extra", meta)          # what pretraining stored (its graph)
    model.eval()
    data = prepare(rec, cfg)
    graph: dict[str, Any] = {"node_ids": torch.arange(rec.n_sensors)}
    if "edge_index" in meta and model.graph_layer is not None:
        graph["edge_index"] = torch.tensor(meta["edge_index"], dtype=torch.long)
        if "edge_weight" in meta:
            graph["edge_weight"] = torch.tensor(meta["edge_weight"], dtype=torch.float32)
        if model.lap is not None:
            from models.graph import laplacian_pe

            graph["lap_pe"] = laplacian_pe(graph["edge_index"].numpy(), rec.n_sensors,
                                           model.cfg.lap_pe_dim,
                                           graph.get("edge_weight", None))
    h = cfg.horizon
    err = np.zeros((2, h))
    cnt = np.zeros(h)
    starts = data.starts["test"]
    with torch.no_grad():
        for i in range(0, len(starts), 16):
            b = batch_of(data, starts[i:i + 16], cfg, torch.device("cpu"))
            pred = model(b["x"], b["mask"], b["steps"], **graph)[:, :, -1]       # [S, N, H]
            y, ym = b["y"][:, :, -1], b["y_mask"][:, :, -1]
            m = b["mask"][:, :, -1]
            last = torch.where(m.any(-1), (b["x"][:, :, -1] * m).gather(
                -1, (m.cumsum(-1).argmax(-1, keepdim=True))).squeeze(-1), 0.0)
            pers = last[..., None].expand_as(y)
            ok = ym.to(torch.float64)
            err[0] += ((pred - y).abs().double() * ok).sum((0, 1)).numpy()
            err[1] += ((pers - y).abs().double() * ok).sum((0, 1)).numpy()
            cnt += ok.sum((0, 1)).numpy()
    return err / np.maximum(cnt, 1)


def run_set(data_dir: Path, name: str, args: Any) -> dict[str, Any]:
    from replay.pretrain import PretrainConfig, pretrain

    rec, train, val = recording(data_dir, name)
    out: dict[str, Any] = {"set": name, "sensors": rec.n_sensors, "rows": rec.n_steps}
    for variant in VARIANTS:
        if variant not in args.variants.split(","):
            continue
        if variant.startswith("given") and rec.edge_index is None:
            continue
        cfg = PretrainConfig(
            patch_len=args.patch_len, context_patches=args.context, horizon=args.horizon,
            d_model=args.d_model, n_heads=4, n_layers=args.layers, epochs=args.epochs,
            patience=2, batch_size=8, train_rows=train, val_rows=val - train,
            test_rows=rec.n_steps - val, graph=variant != "none",
            graph_from="comovement" if variant.startswith("comovement") else "given",
            graph_gate=variant.endswith("-gated"),
            lap_pe_dim=0, w_masked=0.0, w_contrastive=0.0, seed=args.seed, threads=1,
            select_on="forecast").validate()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = pretrain(rec, tmp, cfg, progress=False)
            out[variant] = score(res.checkpoint, rec, cfg)
        out[f"{variant}_s"] = time.perf_counter() - t0
        print(f"[spatial] {name} {variant}: MAE {out[variant][0].mean():.4f} (persistence "
              f"{out[variant][1].mean():.4f}), {out[f'{variant}_s']:.0f} s", flush=True)
    return out


def main() -> int:
    ap = common.parser(__doc__)
    common.add_data_dir(ap)
    ap.add_argument("--datasets", default="los_loop,sz_taxi,etth2,weather,bike_sharing",
                    help="comma-separated sets of replay.corpus.SHARED")
    ap.add_argument("--epochs", type=int, default=8, help="pretraining epochs (patience 2)")
    ap.add_argument("--patch-len", type=int, default=2, help="grid points per patch")
    ap.add_argument("--context", type=int, default=24, help="context patches")
    ap.add_argument("--horizon", type=int, default=12, help="grid points forecast")
    ap.add_argument("--d-model", type=int, default=32, help="backbone width")
    ap.add_argument("--layers", type=int, default=1, help="temporal blocks")
    ap.add_argument("--seed", type=int, default=0, help="seed of every variant")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated graphs to train with: " + ", ".join(VARIANTS)
                    + " (-gated: the graph layer behind a learned gate from 0)")
    args = ap.parse_args()
    rows = []
    for name in args.datasets.split(","):
        rows.append(run_set(Path(args.data_dir), name.strip(), args))
    h = args.horizon
    cells = []
    met = []
    for r in rows:
        base = r["none"][0]
        for v in VARIANTS:
            if v not in r:
                continue
            mae = r[v][0]
            cells.append([r["set"], r["sensors"], v, f"{mae[0]:.4f}", f"{mae[h // 2 - 1]:.4f}",
                          f"{mae[-1]:.4f}", f"{mae.mean():.4f}",
                          f"{mae.mean() / base.mean():.3f}",
                          f"{mae.mean() / r[v][1].mean():.3f}", f"{r[f'{v}_s']:.0f}"])
        best = min((v for v in VARIANTS if v in r and v != "none"),
                   key=lambda v: r[v][0].mean())
        met.append((r["set"], best, r[best][0].mean() < base.mean()))
    body = "\n".join([
        f"Per network: patch {args.patch_len}, context {args.context} patches, H = {h}, "
        f"d_model {args.d_model}, {args.layers} block(s), up to {args.epochs} epochs "
        "(forecast loss, early stop on validation), seed "
        f"{args.seed}; test windows' last-token forecasts, z units.", "",
        *common.md_table(["set", "sensors", "graph", "MAE h=1", f"MAE h={h // 2}",
                          f"MAE h={h}", "MAE mean", "vs no graph", "vs persistence",
                          "seconds"], cells, align="lrlrrrrrrr"), "",
        "- Goal (issue 32) the spatial path better than the same model without it: "
        + "; ".join(f"{s} {'**met**' if ok else 'not met'} (best graph: {b})"
                    for s, b, ok in met) + ".",
        "- One seed per variant: differences of a few per cent are within what another seed "
        "may give."])
    n_ok = sum(ok for *_, ok in met)
    common.publish(common.Section(
        key="spatial", part="Forecasting accuracy",
        title="The spatial path (benchmarks/spatial.py)", body=body,
        summary=common.Summary(
            name="spatial.py", what="per-network backbone: no graph / comovement / given",
            headline=f"a graph helps on {n_ok} of {len(met)} sets",
            goal="better than without a graph on every set",
            met="**met**" if n_ok == len(met) else "not met")), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
