"""Each pass of the step's C kernels against the memory's speed: for every BatchNorm and depthwise layer
of a model at a batch (their activations collected by hooks), each kernel pass timed over all of the
layers in turn, so that every layer's tensors come from memory rather than the cache, as in a training
step; beside them a copy and a sum of the same activations by PyTorch, which move the same bytes as
simply as they can be moved. Repeats alternate; medians are reported, in ms per step.

    .venv/bin/python benchmarks/kernel_passes.py                    # writes benchmarks/results/kernel_passes-<cpu>.json
    .venv/bin/python benchmarks/kernel_passes.py --against OLD_DIR   # also OLD_DIR's bn_act.c/depthwise.c, interleaved

`--against` builds the kernels from another copy of the sources with the same functions and arguments
(e.g. `git worktree add /tmp/old HEAD~1`, then `--against /tmp/old/mobilenet/fused`) and times both
libraries in the same process, pass by pass,
which is how a kernel change is judged on these shared machines (tables from different runs move by
10-20%).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from mobilenet import create_model
from mobilenet.bench import environment
from mobilenet.files import write_json
from mobilenet.fused import library
from mobilenet.train.memory import keep_freed_memory

SOURCES = Path(library.__file__).parent


def load_from(folder: Path, work: Path, name: str):
    """The kernel library built from `folder`'s sources (the same functions and arguments as ours) with
    the product's flags, loaded as the product loads its own."""
    out = work / f"{name}.so"
    subprocess.run([library._compiler(), *library._flags(), "-I", str(SOURCES), "-o", str(out),
                    *(str(folder / source.name) for source in library.SOURCES)], check=True, capture_output=True)
    return library.opened(out)


def layers(model_name: str, width: float, batch: int, resolution: int) -> tuple[list[dict], list[dict]]:
    """The model's BatchNorm and depthwise layers at this batch, each with random tensors of its shapes."""
    model = create_model(model_name, width_mult=width, num_classes=10, small_input=True)
    norms, depthwise = [], []
    cl = torch.channels_last

    def norm_hook(module, inputs, output):
        x = inputs[0].detach().contiguous(memory_format=cl)
        c = x.shape[1]
        norms.append(dict(c=c, x=x, dy=torch.randn_like(x), y=torch.empty_like(x), dx=torch.empty_like(x),
                          weight=torch.ones(c), bias=torch.zeros(c), running_mean=torch.zeros(c),
                          running_var=torch.ones(c), mean=torch.zeros(c), invstd=torch.ones(c),
                          dgamma=torch.empty(c), dbeta=torch.empty(c)))

    def depthwise_hook(module, inputs, output):
        x, y = inputs[0].detach().contiguous(memory_format=cl), output.detach().contiguous(memory_format=cl)
        c, (kh, kw) = x.shape[1], module.kernel_size
        depthwise.append(dict(x=x, y=torch.empty_like(y), dy=torch.randn_like(y), dx=torch.empty_like(x),
                              taps=torch.randn(kh * kw, c), dtaps=torch.empty(kh * kw, c),
                              shape=(x.shape[0], *x.shape[2:], c, *y.shape[2:], kh, kw, *module.stride,
                                     *module.padding)))

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(norm_hook)
        elif isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            module.register_forward_hook(depthwise_hook)
    with torch.no_grad():
        model.train()(torch.randn(batch, 3, resolution, resolution))
    return norms, depthwise


def passes(lib, norms: list[dict], depthwise: list[dict]) -> dict:
    """Each kernel pass over every layer, as a function of no arguments."""
    p = lambda t: t.data_ptr()  # noqa: E731
    none = (None, None, 0.0, 0.0)  # the depthwise kernels' input read as it is
    inf = float("inf")
    return {
        "bn_act forward": lambda: [lib.bn_act_forward_f32(
            p(d["x"]), p(d["y"]), d["x"].numel() // d["c"], d["c"], p(d["weight"]), p(d["bias"]),
            p(d["running_mean"]), p(d["running_var"]), 1, 0.1, 1e-5, 0.0, inf, p(d["mean"]), p(d["invstd"]))
            for d in norms],
        "bn_act backward": lambda: [lib.bn_act_backward_f32(
            p(d["dy"]), p(d["x"]), p(d["dx"]), d["x"].numel() // d["c"], d["c"], p(d["weight"]), p(d["bias"]),
            p(d["mean"]), p(d["invstd"]), 1, 0.0, inf, p(d["dgamma"]), p(d["dbeta"])) for d in norms],
        "depthwise forward": lambda: [lib.dw_forward_f32(p(d["x"]), p(d["taps"]), p(d["y"]), *d["shape"], *none)
                                      for d in depthwise],
        "depthwise input gradient": lambda: [lib.dw_backward_input_f32(p(d["dy"]), p(d["taps"]), p(d["dx"]),
                                                                       *d["shape"]) for d in depthwise],
        "depthwise weight gradient": lambda: [lib.dw_backward_weight_f32(p(d["dy"]), p(d["x"]), p(d["dtaps"]),
                                                                         *d["shape"], *none) for d in depthwise],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v1")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--against", default=None, help="a folder with other bn_act.c and depthwise.c to compare")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/kernel_passes-<cpu>.json")
    args = parser.parse_args(argv)
    from mobilenet.machine import cpu_slug

    keep_freed_memory()  # as the trainer runs
    norms, depthwise = layers(args.model, args.width, args.batch, args.resolution)
    with tempfile.TemporaryDirectory() as work:
        libraries = {"ours": load_from(SOURCES, Path(work), "ours")}
        if args.against:
            libraries["against"] = load_from(Path(args.against), Path(work), "against")
        timed = {f"{name}: {k}": f for name, lib in libraries.items() for k, f in passes(lib, norms, depthwise).items()}
        timed["copy (bn layers)"] = lambda: [d["y"].copy_(d["x"]) for d in norms]
        timed["copy (depthwise inputs)"] = lambda: [d["dx"].copy_(d["x"]) for d in depthwise]
        timed["sum (depthwise inputs and output gradients)"] = lambda: [(d["x"].sum(), d["dy"].sum()) for d in depthwise]
        times: dict[str, list[float]] = {k: [] for k in timed}
        for f in timed.values():
            f()  # untimed: first calls
        for _ in range(args.repeats):
            for k, f in timed.items():
                start = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - start)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    megabytes = {"bn layers": sum(d["x"].numel() for d in norms) * 4 / 1e6,
                 "depthwise inputs": sum(d["x"].numel() for d in depthwise) * 4 / 1e6,
                 "depthwise outputs": sum(d["y"].numel() for d in depthwise) * 4 / 1e6}
    print(f"{args.model} {args.width} at batch {args.batch}, {args.resolution}px: {len(norms)} BatchNorm layers "
          f"({megabytes['bn layers']:.0f} MB), {len(depthwise)} depthwise ({megabytes['depthwise inputs']:.0f} MB in, "
          f"{megabytes['depthwise outputs']:.0f} MB out); ms per step, medians of {args.repeats}")
    for k, v in ms.items():
        line = f"  {k:55} {v:7.2f}"
        if args.against and k.startswith("ours: "):
            line += f"   against {ms['against: ' + k[6:]]:7.2f} ({ms['against: ' + k[6:]] / v:.2f}x)"
        print(line)
    report = {"benchmark": "kernel_passes", "model": args.model, "width": args.width, "batch": args.batch,
              "resolution": args.resolution, "repeats": args.repeats, "megabytes": megabytes, "ms": ms,
              "environment": environment(torch.get_num_threads())}
    output = write_json(args.output or Path(__file__).parent / "results" / f"kernel_passes-{cpu_slug()}.json", report)
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
