#!/usr/bin/env python
"""Self-supervised pretraining versus random initialization of the spatio-temporal backbone.

Two data sets from ``--data-dir`` (the shared data folder):

* ETTh1 (``ett/ETTh1.csv``): the 7 channels are the sensors, no graph; the long-horizon split
  of its README (train/val/test rows [0, 8640) / [8640, 11520) / [11520, 14400); z-score on the
  train rows; lookback 96; horizons 96 (and more with ``--ett-horizons``); MSE/MAE on the
  normalized values, test windows with stride 1 starting ``lookback`` rows before the border).
* Los-loop (``los_loop/los_speed.csv`` + ``los_adj.csv``): 207 METR-LA sensors with their road
  graph; the T-GCN protocol of its README (80 % train / 20 % test = rows [0, 1612) / [1612,
  2016); inputs 12 steps; horizons 3/6/9/12 steps; RMSE/MAE in mph). The protocol has no
  validation split, so the last ~10 % of the train rows are held out for early stopping.

For each: (1) self-supervised pretraining (masked patch modeling + InfoNCE, no forecasting
loss) with ``replay.pretrain.pretrain``; (2) the masked reconstruction loss on the validation
split of the pretrained model and of a random-init model of the same architecture (same masks);
(3) a linear probe (only the forecast head is trained) on the frozen pretrained encoder and on a
frozen random encoder; (4) full fine-tuning from the pretrained weights and training from random
init with the same epoch budget, each starting from its own linear probe (LP-FT, Kumar et al.
2022: the head is fitted before the encoder moves, on both sides); on Los-loop also (5) the
same model without the graph layer (pretrained and fine-tuned the same way, and from random
init). Forecasts are those of the last token of each window (whose lookback is the whole
context). Training throughput is the ``samples_per_s`` of ``pretrain`` (windows per second;
each window holds every sensor).

    python benchmarks/pretrain.py --data-dir ../shared/data [--quick] [--epochs N]
                                  [--results benchmarks/RESULTS.md] [--no-record]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from connectors.recordings import Recording, load_graph, read_recording  # noqa: E402
from models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from replay.pretrain import (  # noqa: E402
    PretrainConfig,
    WindowData,
    batch_of,
    build_model,
    evaluate,
    prepare,
    pretrain,
)


@dataclass
class Budget:
    pre_epochs: int
    probe_epochs: int
    ft_epochs: int
    d_model: int
    n_layers: int


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------


def load_ett(data_dir: Path) -> Recording:
    path = data_dir / "ett" / "ETTh1.csv"
    if not path.exists():
        sys.exit(f"ETTh1 not found: {path} (pass the shared data folder with --data-dir)")
    return read_recording(path)


def load_los(data_dir: Path) -> Recording:
    speed = data_dir / "los_loop" / "los_speed.csv"
    adj = data_dir / "los_loop" / "los_adj.csv"
    for p in (speed, adj):
        if not p.exists():
            sys.exit(f"Los-loop not found: {p} (pass the shared data folder with --data-dir)")
    rec = read_recording(speed, start="2012-03-01T00:00:00", interval_ms=300_000)
    ei, ew = load_graph(adj, rec.sensors)
    return replace(rec, edge_index=ei, edge_weight=ew)


def stride1_test(data: WindowData, cfg: PretrainConfig, border: int, end: int) -> np.ndarray:
    """Test windows with stride 1: the last token's lookback starts ``lookback`` rows before
    the border and its horizon ends inside ``[border, end)``."""
    lookback = cfg.context_patches * cfg.patch_len
    return np.arange(border - lookback, end - data.span + 1, dtype=np.int64)


# ------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def last_token_forecasts(model: torch.nn.Module, data: WindowData, starts: np.ndarray,
                         cfg: PretrainConfig, graph: dict[str, Any]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Forecast of the last token of each window and its target, both ``[W, N, H]``."""
    model.eval()
    dev = torch.device("cpu")
    preds, ys = [], []
    for i in range(0, len(starts), 64):
        b = batch_of(data, starts[i:i + 64], cfg, dev)
        pred = model(b["x"], b["mask"], b["steps"], **graph)
        preds.append(pred[:, :, -1].numpy())
        ys.append(b["y"][:, :, -1].numpy())
    return np.concatenate(preds), np.concatenate(ys)


def model_graph(rec: Recording, cfg: PretrainConfig) -> dict[str, Any]:
    return build_model(rec, cfg)[1]


def test_metrics_ett(ckpt: str, rec: Recording, cfg: PretrainConfig, data: WindowData,
                     starts: np.ndarray) -> dict[str, float]:
    model, _ = load_checkpoint(ckpt)
    pred, y = last_token_forecasts(model, data, starts, cfg, model_graph(rec, cfg))
    return {"mse": float(np.mean((pred - y) ** 2)), "mae": float(np.mean(np.abs(pred - y)))}


def test_metrics_los(ckpt: str, rec: Recording, cfg: PretrainConfig, data: WindowData,
                     starts: np.ndarray, steps: tuple[int, ...]) -> dict[str, float]:
    model, _ = load_checkpoint(ckpt)
    pred, y = last_token_forecasts(model, data, starts, cfg, model_graph(rec, cfg))
    scale = data.scale[None, :, None]
    loc = data.loc[None, :, None]
    pred, y = pred * scale + loc, y * scale + loc          # mph
    out = {}
    for h in steps:
        e = pred[:, :, h - 1] - y[:, :, h - 1]
        out[f"rmse@{h}"] = float(np.sqrt(np.mean(e**2)))
        out[f"mae@{h}"] = float(np.mean(np.abs(e)))
    return out


# ------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------


def random_checkpoint(rec: Recording, cfg: PretrainConfig, path: Path) -> str:
    model, _ = build_model(rec, cfg)
    data = prepare(rec, cfg)
    meta = {"pretrain": vars(cfg).copy(), "loc": data.loc.tolist(),
            "scale": data.scale.tolist(), "sensors": list(rec.sensors),
            "interval_ms": rec.interval_ms}
    save_checkpoint(path, model, architecture="st_backbone", config=model.cfg.to_dict(),
                    extra=meta)
    return str(path)


def masked_val(ckpt: str, rec: Recording, cfg: PretrainConfig) -> float:
    """Masked patch reconstruction MSE on the validation split (fixed masks)."""
    mcfg = replace(cfg, w_forecast=0.0, w_masked=1.0, w_contrastive=0.0)
    model, _ = load_checkpoint(ckpt)
    data = prepare(rec, mcfg)
    graph = model_graph(rec, mcfg)
    return evaluate(model, data, "val", mcfg, graph, torch.device("cpu"))["masked"]


def train(rec: Recording, out: Path, cfg: PretrainConfig, label: str,
          log: list[str]) -> tuple[str, float, float]:
    t0 = time.perf_counter()
    res = pretrain(rec, out, cfg, progress=False)
    wall = time.perf_counter() - t0
    line = (f"  {label}: {res.epochs_run} epochs, best val {res.best_val:.4f}, "
            f"{res.samples_per_s:.1f} windows/s, {wall:.0f} s")
    print(line, flush=True)
    log.append(line)
    return res.checkpoint, res.samples_per_s, wall


def study(rec: Recording, base: PretrainConfig, budget: Budget, work: Path, tag: str,
          log: list[str]) -> dict[str, Any]:
    """Pretrain, masked loss, probes and fine-tuning for one architecture."""
    ssl = replace(base, w_forecast=0.0, w_masked=1.0, w_contrastive=0.1,
                  epochs=budget.pre_epochs)
    fc = replace(base, w_forecast=1.0, w_masked=0.0, w_contrastive=0.0)
    pre_ckpt, pre_sps, pre_wall = train(rec, work / f"{tag}-ssl", ssl, f"{tag} pretrain", log)
    rnd_ckpt = random_checkpoint(rec, base, work / f"{tag}-random")
    out: dict[str, Any] = {"pretrain_sps": pre_sps, "pretrain_wall": pre_wall,
                           "masked": (masked_val(pre_ckpt, rec, base),
                                      masked_val(rnd_ckpt, rec, base))}
    ckpts: dict[tuple[str, str], str] = {}
    start = {"pre": pre_ckpt, "rand": rnd_ckpt}
    for kind, epochs, trainable in (("probe", budget.probe_epochs, "head"),
                                    ("finetune", budget.ft_epochs, "all")):
        for init in ("pre", "rand"):
            # LP-FT: fine-tuning starts from the probe's head on both sides, so the first
            # full-model steps do not push a zero head's large gradients into the encoder
            ck = ckpts[("probe", init)] if kind == "finetune" else start[init]
            cfg = replace(fc, init_checkpoint=ck, trainable=trainable, epochs=epochs)
            best, sps, _ = train(rec, work / f"{tag}-{kind}-{init}", cfg,
                                 f"{tag} {kind} from {init}", log)
            ckpts[(kind, init)] = best
            out[f"{kind}_{init}_sps"] = sps
    out["ckpts"] = ckpts
    return out


# ------------------------------------------------------------------------------------------
# table
# ------------------------------------------------------------------------------------------


def pct(pre: float, rnd: float) -> str:
    """Improvement of pretrained over random (lower is better), in % of random."""
    return f"{(rnd - pre) / rnd * 100:+.1f} %" if rnd else "n/a"


def verdict(pre: float, rnd: float) -> str:
    return "yes" if pre < rnd else "**NO**"


def cmp_row(cells: list[str], a: float, b: float, fmt: str, published: str | None = None
            ) -> str:
    """A table row: ``cells``, then ``a`` and ``b`` in ``fmt``, the improvement of ``a`` over
    ``b`` (lower is better), whether ``a`` is better, and the published figure if given."""
    out = [*cells, format(a, fmt), format(b, fmt), pct(a, b), verdict(a, b)]
    return "| " + " | ".join(out + ([published] if published is not None else [])) + " |"


def run_ett(data_dir: Path, budget: Budget, horizons: list[int], work: Path,
            log: list[str]) -> tuple[list[str], list[str]]:
    rec = load_ett(data_dir)
    rows: list[str] = []
    tput: list[str] = []
    for h in horizons:
        base = PretrainConfig(patch_len=12, context_patches=8, horizon=h, d_model=budget.d_model,
                              n_heads=4, n_layers=budget.n_layers, graph=False,
                              train_rows=8640, val_rows=2880, test_rows=2880, stride=4,
                              batch_size=32,
                              patience=3, seed=0, lr=1e-3)
        print(f"ETTh1 H={h}", flush=True)
        res = study(rec, base, budget, work, f"etth1-h{h}", log)
        data = prepare(rec, base)
        starts = stride1_test(data, base, 11_520, 14_400)
        m_pre, m_rnd = res["masked"]
        rows.append(cmp_row([f"ETTh1 H={h}", "masked recon. MSE (val, z)"], m_pre, m_rnd,
                            ".4f", "—"))
        for kind, name in (("probe", "linear probe"), ("finetune", "full fine-tuning")):
            pre = test_metrics_ett(res["ckpts"][(kind, "pre")], rec, base, data, starts)
            rnd = test_metrics_ett(res["ckpts"][(kind, "rand")], rec, base, data, starts)
            for met in ("mse", "mae"):
                rows.append(cmp_row([f"ETTh1 H={h}", f"{name} test {met.upper()} (z)"],
                                    pre[met], rnd[met], ".4f", "not in README"))
        tput.append(f"| ETTh1 H={h} | {res['pretrain_sps']:.1f} | {res['probe_pre_sps']:.1f} "
                    f"| {res['finetune_pre_sps']:.1f} | {res['finetune_rand_sps']:.1f} | 7 |")
    return rows, tput


def run_los(data_dir: Path, budget: Budget, work: Path, log: list[str]
            ) -> tuple[list[str], list[str], list[str]]:
    rec = load_los(data_dir)
    steps = (3, 6, 9, 12)
    rows: list[str] = []
    tput: list[str] = []
    graph_rows: list[str] = []
    metrics: dict[tuple[bool, str, str], dict[str, float]] = {}
    for use_graph in (True, False):
        base = PretrainConfig(patch_len=3, context_patches=4, horizon=12,
                              d_model=budget.d_model, n_heads=4, n_layers=budget.n_layers,
                              graph=use_graph, train_rows=1451, val_rows=161, stride=1,
                              batch_size=8, patience=3, seed=0, lr=1e-3)
        tag = "los-graph" if use_graph else "los-nograph"
        print(f"Los-loop graph={use_graph}", flush=True)
        res = study(rec, base, budget, work, tag, log)
        data = prepare(rec, base)
        starts = stride1_test(data, base, 1612, 2016)
        for key, ck in res["ckpts"].items():
            metrics[(use_graph, *key)] = test_metrics_los(ck, rec, base, data, starts, steps)
        name = "Los-loop" + ("" if use_graph else " no graph")
        m_pre, m_rnd = res["masked"]
        rows.append(cmp_row([name, "masked recon. MSE (val, z)"], m_pre, m_rnd, ".4f", "—"))
        for kind, label in (("probe", "linear probe"), ("finetune", "full fine-tuning")):
            pre, rnd = metrics[(use_graph, kind, "pre")], metrics[(use_graph, kind, "rand")]
            for h in steps:
                for met in ("rmse", "mae"):
                    k = f"{met}@{h}"
                    rows.append(cmp_row([name, f"{label} test {met.upper()} {h * 5} min (mph)"],
                                        pre[k], rnd[k], ".3f", "not in README"))
        tput.append(f"| {name} | {res['pretrain_sps']:.1f} | {res['probe_pre_sps']:.1f} "
                    f"| {res['finetune_pre_sps']:.1f} | {res['finetune_rand_sps']:.1f} | 207 |")
    for init, label in (("pre", "pretrained + fine-tuned"), ("rand", "random init, trained")):
        g, ng = metrics[(True, "finetune", init)], metrics[(False, "finetune", init)]
        for h in steps:
            for met in ("rmse", "mae"):
                k = f"{met}@{h}"
                graph_rows.append(cmp_row([label, f"{met.upper()} {h * 5} min (mph)"], g[k],
                                          ng[k], ".3f"))
    return rows, tput, graph_rows


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    common.add_data_dir(ap)
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (1-2 epochs)")
    ap.add_argument("--epochs", type=int, default=0,
                    help="fine-tuning / from-scratch epochs (default 8; 2 with --quick)")
    ap.add_argument("--pre-epochs", type=int, default=0,
                    help="pretraining epochs (default 8; 1 with --quick)")
    ap.add_argument("--probe-epochs", type=int, default=0,
                    help="linear-probe epochs (default 5; 1 with --quick)")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ett-horizons", default="96", help="comma-separated, e.g. 96,192")
    ap.add_argument("--skip", default="", help="comma-separated data sets to skip: ett,los")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="where checkpoints go (default: a temporary folder)")
    args = ap.parse_args(argv)
    q = args.quick
    budget = Budget(pre_epochs=args.pre_epochs or (1 if q else 8),
                    probe_epochs=args.probe_epochs or (1 if q else 5),
                    ft_epochs=args.epochs or (2 if q else 8),
                    d_model=args.d_model, n_layers=args.layers)
    horizons = [int(h) for h in args.ett_horizons.split(",") if h]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    data_dir = args.data_dir
    if not data_dir.is_dir():
        sys.exit(f"--data-dir {data_dir}: no such folder")
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    log: list[str] = []
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="stfm-pretrain-bench-")
        work = Path(tmp.name)
    else:
        work = args.work_dir
        work.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    tput: list[str] = []
    graph_rows: list[str] = []
    if "ett" not in skip:
        r, t = run_ett(data_dir, budget, horizons, work, log)
        rows += r
        tput += t
    if "los" not in skip:
        r, t, g = run_los(data_dir, budget, work, log)
        rows += r
        tput += t
        graph_rows += g
    wall = time.perf_counter() - t0
    if tmp is not None:
        tmp.cleanup()

    section, detail = render(rows, tput, graph_rows, log, budget, wall, argv)
    common.publish(section, args, detail=detail)
    return 0


STAGES = ("masked recon.", "linear probe", "full fine-tuning")


def render(rows: list[str], tput: list[str], graph_rows: list[str], log: list[str],
           budget: Budget, wall: float, argv: list[str] | None) -> tuple[common.Section, str]:
    """The section (wins per data set and stage, goals) and the detail (every row, the graph
    comparison, training throughput, the runs' log)."""
    def cells(row: str) -> list[str]:
        return [c.strip() for c in row.strip().strip("|").split("|")]

    wins = sum(1 for r in rows if cells(r)[5] == "yes")
    data = list(dict.fromkeys(cells(r)[0] for r in rows))
    table = ["| data | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
    for d in data:
        out = []
        for st in STAGES:
            mine = [cells(r) for r in rows if cells(r)[0] == d and cells(r)[1].startswith(st)]
            out.append(f"{sum(c[5] == 'yes' for c in mine)} of {len(mine)}" if mine else "–")
        table.append(f"| {d} | " + " | ".join(out) + " |")
    g_wins = sum(1 for r in graph_rows if cells(r)[5] == "yes")
    body = [f"STBackbone d_model {budget.d_model}, {budget.n_layers} layers; pretraining = "
            f"masked patch MSE + 0.1 x InfoNCE ({budget.pre_epochs} epochs), linear probe "
            f"{budget.probe_epochs}, fine-tuning {budget.ft_epochs} (LP-FT); ETTh1 (7 channels, "
            "no graph; z values), Los-loop (207 sensors, METR-LA graph, mph, horizon 12). "
            f"{wall / 60:.1f} min. Rows where the pretrained model is better than random init "
            "(masked reconstruction on validation, the rest on test; every row: "
            "`history/detail.md`):", "", *table, "", "Goals (issue 3):",
            f"- Pretraining beats random initialization on every row: "
            f"{common.verdict(wins == len(rows))}: {wins} of {len(rows)} rows."]
    if graph_rows:
        body.append(f"- On the spatial data the graph layer beats the same model without it: "
                    f"{common.verdict(g_wins == len(graph_rows))}: better on {g_wins} of "
                    f"{len(graph_rows)} rows.")
    body.append("- Published numbers: none for these protocols in the data READMEs.")
    detail = ["| data | metric | pretrained | random init | improvement | pretrained better? "
              "| published |", "| --- | --- | ---: | ---: | ---: | --- | --- |", *rows, ""]
    if graph_rows:
        detail += ["Graph layer on Los-loop (full fine-tuning / training, test split). "
                   "Improvement = (no graph - graph) / no graph.", "",
                   "| model | metric | with graph | without graph | improvement | graph better? |",
                   "| --- | --- | ---: | ---: | ---: | --- |", *graph_rows, ""]
    detail += ["Training throughput (windows/s on this CPU; a window holds every sensor):", "",
               "| data | pretraining | linear probe | fine-tuning | from scratch "
               "| sensors/window |",
               "| --- | ---: | ---: | ---: | ---: | ---: |", *tput, "",
               "Runs:", "", "```", *log, "```"]
    ok = [wins == len(rows)] + ([g_wins == len(graph_rows)] if graph_rows else [])
    summary = common.Summary("pretrain.py", "pretrained vs random init (" + ", ".join(
        d.split(" ")[0] for d in dict.fromkeys(data)) + ")",
        f"better on {wins} of {len(rows)} rows"
        + (f"; graph better on {g_wins} of {len(graph_rows)}" if graph_rows else ""),
        "every row; graph beats no graph",
        "**met**" if all(ok) else "; ".join(common.index_verdict(x) for x in ok))
    return (common.Section("pretrain", "Forecasting accuracy",
                           "Pretraining (benchmarks/pretrain.py)", "\n".join(body), summary,
                           command=None if argv is None else common.command_line(argv)),
            "\n".join(detail))


if __name__ == "__main__":
    raise SystemExit(main())
