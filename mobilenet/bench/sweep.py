"""The V1 paper's grid (Figure 4): `measure` over widths x resolutions, with each model's
analytic mult-adds, written as JSON, a markdown table and a plot."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mobilenet.cost import cost
from mobilenet.files import check_output_path, write_text
from mobilenet.machine import environment
from mobilenet.bench.latency import build, is_checkpoint, measure
from mobilenet.bench.report import fastest, sweep_table

SWEEP_WIDTHS = (1.0, 0.75, 0.5, 0.25)  # V1 paper, Figure 4 / Tables 6 and 7
SWEEP_RESOLUTIONS = (224, 192, 160, 128)


def sweep(model: str = "mobilenet_v1", *, widths: Sequence[float] = SWEEP_WIDTHS,
          resolutions: Sequence[int] = SWEEP_RESOLUTIONS, progress: Callable[[str], None] | None = None,
          **options) -> dict:
    """`measure` over the width x resolution grid of the V1 paper's Figure 4 (16 models by default),
    each row with its analytic mult-adds and parameters, and one compute bound for all (`one_bound`).
    `options` go to `measure`."""
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
    one_bound(rows)
    return {"model": model, "batch": options.get("batch", 1), "rows": rows,
            "environment": environment(options.get("threads") or torch.get_num_threads())}


def one_bound(rows: list[dict]) -> None:
    """Give every row the compute bound at the best matrix throughput measured in the whole sweep
    (each model's run measures its own, and a shared machine's noise made the line zigzag), and
    each fp32 result its share of it again."""
    best = max((row["compute_bound"]["matmul_gflops"] for row in rows), default=None)
    for row in rows:
        bound = row["compute_bound"]
        row["compute_bound"] = {**bound, "matmul_gflops": best, "limit_ms": bound["flops"] / best / 1e6}
        for result in row["results"]:
            if "of_compute_bound" in result:
                result["of_compute_bound"] = row["compute_bound"]["limit_ms"] / result["median_ms"]


def sweep_outputs(folder: str | os.PathLike, model: str, batch: int) -> list[Path]:
    """The JSON, table and plot a sweep writes into `folder`, each checked (the folder exists and is
    writable, no path is a folder or a special file): called before the minutes of measuring."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {folder} does not exist")
    stem = folder / f"latency_sweep_{Path(model).name}_batch{batch}"
    return [check_output_path(stem.with_suffix(suffix)) for suffix in (".json", ".md", ".png")]


def write_sweep(result: dict, folder: str | os.PathLike) -> list[Path]:
    """Write the sweep's JSON, markdown table and PNG plot into `folder`, each atomically; returns their paths."""
    from mobilenet.plots import plot_sweep  # here, not at the top: matplotlib takes 0.4 s to import

    paths = sweep_outputs(folder, result["model"], result["batch"])
    write_text(paths[0], json.dumps(result, indent=2) + "\n")
    write_text(paths[1], sweep_table(result) + "\n")
    plot_sweep(result, paths[2])
    return paths
