"""What a measurement must say about the machine it ran on (CPU model and flags, threads, library
versions, load), and what this machine can compute: the fp32 matrix-multiply throughput measured
beside the runtimes, and a model's compute-bound limit at that throughput."""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import json
import os
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenet.optional import available

MATMUL_SIZE = 2048  # square fp32 matrices for the throughput behind the compute-bound limit
MATMUL_CALLS = 2  # timed products per round


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_slug() -> str:
    """The CPU model as a file-name part ("intel-r-xeon-r-processor"): results are kept per CPU."""
    return re.sub(r"[^a-z0-9]+", "-", cpu_name().lower()).strip("-")


def cpu_flags() -> list[str]:
    """The CPU features that decide which kernels run (AVX-512, VNNI for INT8, BF16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    have = set(line.split(":", 1)[-1].split())
    return [flag for flag in wanted if flag in have]


def environment(threads: int) -> dict:
    """What a latency figure depends on: machine, threads, versions and how busy the machine was."""
    versions = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}
    for name in ("onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "executorch", "torchao", "litert_torch",
                 "ai_edge_litert", "coremltools"):
        if available(name):
            versions[name] = importlib.metadata.version(name)
    return {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "threads": threads,
            "machine": platform.machine(), "system": platform.platform(), "versions": versions,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


class MatmulProbe:
    """The fp32 matrix-multiply throughput of this machine: products of two `size` x `size` random
    matrices, timed one by one; `gflops` is the best seen, since load only ever slows a product down.
    ONNX Runtime's MLAS and NumPy's OpenBLAS reach the same figure within a few percent here.
    Run it on the thread count being measured (`torch.set_num_threads`)."""

    def __init__(self, size: int = MATMUL_SIZE) -> None:
        self.size = size
        generator = torch.Generator().manual_seed(0)  # its own: a training run's generators stay untouched
        self.a, self.b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
        self.best_s = float("inf")
        self.a @ self.b  # untimed: first-call allocation

    def time(self, calls: int = 1) -> None:
        for _ in range(calls):
            start = time.perf_counter()
            self.a @ self.b
            self.best_s = min(self.best_s, time.perf_counter() - start)

    @property
    def gflops(self) -> float:
        return 2 * self.size**3 / self.best_s / 1e9


PEAK_VARIABLE = "MOBILENET_MATMUL_GFLOPS"


class KnownPeak(MatmulProbe):
    """The fp32 matrix peak given rather than measured ($MOBILENET_MATMUL_GFLOPS, GFLOP/s): the probe
    as if its best product had taken that long, timing nothing. For processes started by one that
    measured it (the test suite's commands, where the products cost more than the tiny runs they put
    in proportion) and for runs that should report against one agreed peak."""

    def __init__(self, gflops: float) -> None:
        self.size = MATMUL_SIZE
        self.best_s = 2 * self.size**3 / (gflops * 1e9)

    def time(self, calls: int = 1) -> None:
        pass


@functools.cache
def matmul_probe() -> MatmulProbe:
    """This process's MatmulProbe, shared by every run in it: its best product is the machine's, whichever
    run timed it, and its matrices are made (and the first product paid) once. $MOBILENET_MATMUL_GFLOPS,
    a positive number, stands for it (`KnownPeak`); anything else there is an error, not ignored."""
    given = os.environ.get(PEAK_VARIABLE)
    if given is None:
        return MatmulProbe()
    try:
        gflops = float(given)
    except ValueError:
        gflops = float("nan")
    if not 0 < gflops < float("inf"):
        raise ValueError(f"${PEAK_VARIABLE} must be a positive number of GFLOP/s, got {given!r}")
    return KnownPeak(gflops)


_FLOPS: dict[tuple, int] = {}  # forward_flops of our models by (config, batch, resolution), this process's


def forward_flops(model: nn.Module, batch: int, resolution: int) -> int:
    """Floating-point operations (2 per mult-add) of one forward pass, counted on a meta-device copy
    so that nothing is computed; once per process for each configuration of our models (their
    `config` rebuilds them)."""
    key = (json.dumps(model.config.to_dict(), sort_keys=True), batch, resolution)
    if key not in _FLOPS:
        _FLOPS[key] = _counted_flops(model, batch, resolution)
    return _FLOPS[key]


def _counted_flops(model: nn.Module, batch: int, resolution: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    shadow = copy.deepcopy(model).to("meta").eval()  # eval: a batch of one is fine for BatchNorm
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        shadow(torch.empty(model.config.input_shape(batch, resolution), device="meta"))
    return int(counter.get_total_flops())


def compute_bound(model: nn.Module, batch: int, resolution: int, gflops: float) -> dict:
    """The least time an fp32 forward pass can take at `gflops`: its FLOPs at that throughput."""
    flops = forward_flops(model, batch, resolution)
    return {"flops": flops, "matmul_gflops": gflops, "limit_ms": flops / gflops / 1e6}

