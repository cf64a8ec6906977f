"""Benchmarks of inference, measured in one run on the machine at hand:

* `measure` (latency.py): one model's latency per runtime, interleaved, with the compute-bound limit;
* `environment` (from mobilenet/machine.py): the machine and versions every figure is recorded
  with, and the fp32 matrix throughput behind the limit;
* `sweep` (sweep.py): the V1 paper's width x resolution grid, written as JSON, table and plot;
* `format_report`, `sweep_table` (report.py): the tables people read. Plots live in `mobilenet.plots`.
"""

from mobilenet.bench.latency import (
    RUNTIMES, Timing, build, calibration_images, checkpoint_images, is_checkpoint, measure, parse_runtimes, settle,
)
from mobilenet.bench.report import format_report, sweep_table
from mobilenet.bench.sweep import SWEEP_RESOLUTIONS, SWEEP_WIDTHS, sweep, sweep_outputs, write_sweep
from mobilenet.machine import MatmulProbe, compute_bound, cpu_flags, cpu_name, environment, forward_flops
from mobilenet.optional import available

__all__ = [
    "RUNTIMES", "MatmulProbe", "SWEEP_RESOLUTIONS", "SWEEP_WIDTHS", "Timing", "available", "build",
    "calibration_images", "checkpoint_images", "compute_bound", "cpu_flags", "cpu_name", "environment",
    "format_report", "forward_flops", "is_checkpoint", "measure", "parse_runtimes", "settle", "sweep", "sweep_outputs", "sweep_table", "write_sweep",
]
