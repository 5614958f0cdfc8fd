"""Loss landscapes and sharpness of the global models of finished runs (flcore.analysis).

    python benchmarks/analyze.py RUN_DIR [RUN_DIR ...] --out DIR [--subset 10000] [--grid 21]

Each RUN_DIR is a run folder (``runs/<name>/version_N``) with ``config.yaml`` and
``checkpoints/last.ckpt``; the runs must share their data config. For each run's global model
(the strategy's ``global_model``) it computes, on a fixed seeded subsample of the training set
(``--subset`` samples; the clients' union) and on the test set:

* the loss and accuracy along one filter-normalized random direction (1-D) and on a
  ``--grid`` x ``--grid`` plane of two (2-D), over ``[-range, range]`` (Li et al. 2018);
* the top Hessian eigenvalue (power iteration) and the Hessian trace (Hutchinson) on
  ``--sharpness-subset`` training samples;

and for every pair of runs the loss along the straight line between their global models. It
writes ``analysis.json``, ``landscape_1d.png``, ``landscape_2d.png``, ``interpolation.png`` and
TensorBoard scalars and images under ``--out``. The same seeds give the same directions for
every run (one direction per parameter shape set), so curves compare.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datamodules.base import FederatedDataModule  # noqa: E402
from flcore.analysis import (filter_normalized_direction, hessian_top_eigenvalue, hessian_trace,  # noqa: E402
                             interpolate_curve, loss_curve_1d, loss_surface_2d)
from flcore.checkpoint import load_checkpoint  # noqa: E402
from flcore.strategies.base import Strategy  # noqa: E402
from lightning_modules.client import ClientModule  # noqa: E402


def load_run(run_dir: Path):
    """(label, net, datamodule, global state_dict) of a run folder, built from its config.yaml."""
    from jsonargparse import ArgumentParser

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(ClientModule, "model", fail_untyped=False)
    parser.add_subclass_arguments(FederatedDataModule, "data", fail_untyped=False)
    parser.add_subclass_arguments(Strategy, "strategy", fail_untyped=False)
    cfg = parser.parse_object({"model": config["model"], "data": config["data"],
                               "strategy": config["trainer"]["strategy"]})
    objs = parser.instantiate(cfg)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    state = objs.strategy.global_model(ckpt["strategy_state"])
    label = config["trainer"].get("name") or run_dir.parent.name
    return label, objs.model.net, objs.data, {k: v.clone() for k, v in state.items()}, ckpt["round"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--replot", action="store_true", help="redraw the figures from OUT/analysis.json; compute nothing")
    p.add_argument("--subset", type=int, default=10_000, help="training samples for the landscapes")
    p.add_argument("--sharpness-subset", type=int, default=2_000, help="training samples for the Hessian")
    p.add_argument("--grid", type=int, default=21, help="points per axis of the 2-D plane (and of the 1-D line)")
    p.add_argument("--range", type=float, default=1.0, help="coefficients span [-range, range]")
    p.add_argument("--power-iters", type=int, default=30)
    p.add_argument("--hutchinson", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.replot:
        report = json.loads((args.out / "analysis.json").read_text())
        (args.out / "analysis.md").write_text(analysis_table(report))
        _plots(report, args.out, tensorboard=False)
        return
    if not args.runs:
        p.error("runs: give at least one run folder (or --replot)")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(r) for r in args.runs]
    dm = runs[0][2]
    dm.setup("fit")
    g = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(dm.y_train), generator=g)
    x_tr, y_tr = dm.x_train[pick[: args.subset]], dm.y_train[pick[: args.subset]]
    x_h, y_h = dm.x_train[pick[: args.sharpness_subset]], dm.y_train[pick[: args.sharpness_subset]]
    x_te, y_te = dm.x_test, dm.y_test
    coeffs = np.linspace(-args.range, args.range, args.grid).tolist()
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                           if k != "runs"}, "runs": {}}
    for label, net, _, state, rnd in runs:
        t0 = time.perf_counter()
        d1 = filter_normalized_direction(state, torch.Generator().manual_seed(args.seed + 1))
        d2 = filter_normalized_direction(state, torch.Generator().manual_seed(args.seed + 2))
        entry = {"round": rnd,
                 "train_1d": loss_curve_1d(net, state, d1, coeffs, x_tr, y_tr),
                 "test_1d": loss_curve_1d(net, state, d1, coeffs, x_te, y_te),
                 "train_2d": loss_surface_2d(net, state, d1, d2, coeffs, coeffs, x_tr, y_tr),
                 "top_eigenvalue": hessian_top_eigenvalue(net, state, x_h, y_h, torch.Generator().manual_seed(args.seed),
                                                          iters=args.power_iters, tol=1e-3)}
        trace, stderr = hessian_trace(net, state, x_h, y_h, torch.Generator().manual_seed(args.seed),
                                      samples=args.hutchinson)
        entry["hessian_trace"], entry["hessian_trace_stderr"] = trace, stderr
        entry["seconds"] = time.perf_counter() - t0
        report["runs"][label] = entry
        print(f"{label}: round {rnd}, top eigenvalue {entry['top_eigenvalue']:.3f}, trace {trace:.1f} ± {stderr:.1f}, "
              f"train loss at w {entry['train_1d']['loss'][len(coeffs) // 2]:.4f}, {entry['seconds']:.0f} s", flush=True)
    pairs = {}
    ts = np.linspace(-0.25, 1.25, args.grid).tolist()
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            (la, net, _, sa, _), (lb, _, _, sb, _) = runs[i], runs[j]
            pairs[f"{la} -> {lb}"] = {"train": interpolate_curve(net, sa, sb, ts, x_tr, y_tr),
                                       "test": interpolate_curve(net, sa, sb, ts, x_te, y_te)}
    report["interpolation"] = pairs
    (args.out / "analysis.json").write_text(json.dumps(report, indent=1))
    (args.out / "analysis.md").write_text(analysis_table(report))
    _plots(report, args.out)


def analysis_table(report) -> str:
    """The sharpness figures of an analysis report as a Markdown table: per run, the top Hessian
    eigenvalue, the Hessian trace (± Hutchinson standard error), and the training loss at the
    model and at the ends of the 1-D filter-normalized direction."""
    lines = ["| run | round | top Hessian eigenvalue | Hessian trace | train loss at w | train loss at alpha = -1 / +1 |",
             "|---|---|---|---|---|---|"]
    for label, e in report["runs"].items():
        loss = e["train_1d"]["loss"]
        lines.append(f"| {label} | {e['round']} | {e['top_eigenvalue']:.1f} | {e['hessian_trace']:.0f} ± "
                     f"{e['hessian_trace_stderr']:.0f} | {loss[len(loss) // 2]:.2f} | {loss[0]:.2f} / {loss[-1]:.2f} |")
    return "\n".join(lines) + "\n"


def _plots(report, out: Path, tensorboard: bool = True) -> None:
    """The figures of an analysis report: 1-D curves (legend outside), the 2-D landscapes on
    **shared** contour levels with one colour bar (so panels compare: a flatter model shows
    fewer, wider rings), and the interpolation curves; also TensorBoard figures when asked."""
    from matplotlib.figure import Figure

    from flcore.plotting import legend_outside, method_style

    writer = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    fig = Figure(figsize=(11, 4))
    ax_tr, ax_te = fig.subplots(1, 2)
    for label, e in report["runs"].items():
        color, style = method_style(label)
        ax_tr.plot(e["train_1d"]["alpha"], e["train_1d"]["loss"], label=label, color=color, linestyle=style)
        ax_te.plot(e["test_1d"]["alpha"], e["test_1d"]["loss"], label=label, color=color, linestyle=style)
        if writer:
            writer.add_scalar(f"sharpness/top_eigenvalue/{label}", e["top_eigenvalue"], e["round"])
            writer.add_scalar(f"sharpness/hessian_trace/{label}", e["hessian_trace"], e["round"])
    for ax, name in ((ax_tr, "train"), (ax_te, "test")):
        ax.set(xlabel="alpha (filter-normalized direction)", ylabel=f"{name} loss", yscale="log")
        ax.grid(alpha=0.3)
    legend_outside(fig, ax_te)
    _save(fig, out / "landscape_1d.png", writer, "landscape/1d")
    n = len(report["runs"])
    surfaces = {label: np.log10(np.array(e["train_2d"]["loss"]).T) for label, e in report["runs"].items()}
    lo = min(float(z.min()) for z in surfaces.values())
    hi = max(float(z.max()) for z in surfaces.values())
    levels = np.linspace(lo, hi, 16)
    fig = Figure(figsize=(4.2 * n + 1.2, 4))
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True))
    for ax, (label, e) in zip(axes, report["runs"].items()):
        s = e["train_2d"]
        filled = ax.contourf(s["alpha"], s["beta"], surfaces[label], levels=levels, cmap="viridis")
        ax.contour(s["alpha"], s["beta"], surfaces[label], levels=levels, colors="white", linewidths=0.4)
        ax.set(title=label, xlabel="alpha")
        ax.title.set_fontsize(9)
    axes[0].set_ylabel("beta")
    fig.colorbar(filled, ax=list(axes), label="log10 train loss (levels shared by all panels)")
    _save(fig, out / "landscape_2d.png", writer, "landscape/2d")
    if report["interpolation"]:
        fig = Figure(figsize=(8, 4))
        ax = fig.subplots()
        for pair, e in report["interpolation"].items():
            ax.plot(e["train"]["t"], e["train"]["loss"], label=f"{pair} (train)")
            ax.plot(e["test"]["t"], e["test"]["loss"], "--", label=f"{pair} (test)")
        ax.set(xlabel="t: (1 - t) w_a + t w_b", ylabel="loss", yscale="log")
        ax.grid(alpha=0.3)
        legend_outside(fig, ax)
        _save(fig, out / "interpolation.png", writer, "landscape/interpolation")
    if writer:
        writer.close()


def _save(fig, path: Path, writer, tag: str) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    if writer:
        writer.add_figure(tag, fig)


if __name__ == "__main__":
    main()
