"""The V1 paper's grid (Figure 4): `measure` over widths x resolutions, with each model's
analytic mult-adds, written as JSON, a markdown table and a plot."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mobilenet.bench.machine import environment
from mobilenet.bench.latency import build, is_checkpoint, measure
from mobilenet.bench.report import fastest, sweep_table

SWEEP_WIDTHS = (1.0, 0.75, 0.5, 0.25)  # V1 paper, Figure 4 / Tables 6 and 7
SWEEP_RESOLUTIONS = (224, 192, 160, 128)


def sweep(model: str = "mobilenet_v1", *, widths: Sequence[float] = SWEEP_WIDTHS,
          resolutions: Sequence[int] = SWEEP_RESOLUTIONS, progress: Callable[[str], None] | None = None,
          **options) -> dict:
    """`measure` over the width x resolution grid of the V1 paper's Figure 4 (16 models by default),
    each row with its analytic mult-adds and parameters. `options` go to `measure`."""
    from mobilenet.cost import cost

    if is_checkpoint(model):
        raise ValueError(f"the sweep builds the grid's models by name; {model} is a checkpoint")
    say = progress or (lambda message: None)
    rows = []
    for width in widths:
        for resolution in resolutions:
            net, _ = build(model, width=width)
            report = measure(net, resolution=resolution, **options)
            analytic = cost(model, resolution, width_mult=width)
            rows.append({"width": width, "resolution": resolution, "macs": analytic.macs, "params": analytic.params,
                         "compute_bound": report["compute_bound"],
                         "results": report["results"], "skipped": report["skipped"]})
            best = fastest(report)
            say(f"{model} {width:g}-{resolution}: {analytic.macs / 1e6:.0f}M mult-adds"
                + (f", fastest {best[0]} {best[1]:.2f} ms" if best else ""))
    return {"model": model, "batch": options.get("batch", 1), "rows": rows,
            "environment": environment(options.get("threads") or torch.get_num_threads())}


def write_sweep(result: dict, folder: str | os.PathLike) -> list[Path]:
    """Write the sweep's JSON, markdown table and PNG plot into `folder`; returns their paths."""
    from mobilenet.plots import plot_sweep

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {folder} does not exist")
    stem = folder / f"latency_sweep_{result['model']}_batch{result['batch']}"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(sweep_table(result) + "\n")
    plot_sweep(result, paths[2])
    return paths


