"""Training throughput against the compute-bound limit, in one interleaved run.

For each model of `MODELS` (the demo's V1 0.5 small-input, the seed's CIFAR model: V1 1.0 with
ImageNet strides, and V2 1.0 small-input; all 10 classes at 32x32) and each batch size:
* a plain eager NCHW loop, what a tutorial writes: tensors already in memory, no augmentation (so it
  does strictly less work than our trainer), in a fresh process of its own with the allocator's
  defaults (our trainer sets the process's allocator, `mobilenet.train.memory`, which would otherwise
  speed up the plain loops run after it);
* our trainer: `mobilenet train`'s own epoch loop on the digits, loader, augmentation and
  bookkeeping included, with its defaults (channels_last, `--amp auto`), or a variant;
* the compute-bound limit: 3 x the forward FLOPs of an image (forward, and backward's two products)
  at the fp32 matrix-multiply throughput measured in the same run (`MatmulProbe`, best seen).
Every figure is also given as a share of that limit. Repeats alternate, and medians are reported.

    .venv/bin/python benchmarks/train_throughput.py         # writes benchmarks/results/train_throughput-<cpu>.json
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
from mobilenet.data import load_dataset
from mobilenet.train import Run, TrainConfig
from mobilenet.files import write_json


def plain_loop(model_name: str, width: float, small_input: bool, batch: int, steps: int) -> float:
    """Images per second of a plain eager NCHW loop: forward, loss, backward, SGD step."""
    data = load_dataset("digits", "train")
    images = (data.images[: batch * 4].float() / 255 - 0.3) / 0.3
    labels = data.labels[: batch * 4]
    torch.manual_seed(0)
    model = create_model(model_name, width_mult=width, num_classes=10, small_input=small_input).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()

    def step(i: int) -> None:
        x, y = images[(i % 4) * batch:(i % 4 + 1) * batch], labels[(i % 4) * batch:(i % 4 + 1) * batch]
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    for i in range(3):  # warm-up
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * batch / (time.perf_counter() - start)


def plain_loop_alone(model_name: str, width: float, small_input: bool, batch: int, steps: int) -> float:
    """`plain_loop` in a new Python process, as a user's script would run it."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from train_throughput import plain_loop; "
            f"print(plain_loop({model_name!r}, {width!r}, {small_input!r}, {batch!r}, {steps!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def our_trainer(model_name: str, width: float, small_input: bool, batch: int, **options) -> float:
    """Images per second of `mobilenet train`'s own epoch loop on the digits (1,437 images at 32x32)."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(out=out, model=model_name, width=width, small_input=small_input, data="digits",
                             batch_size=batch, epochs=3, lr=0.01, **options)
        run = Run(config, progress=False)
        run.train_epoch()  # warm-up (and compilation, if asked)
        run.epoch += 1
        return run.train_epoch()["images_per_s"]


MODELS = {"demo (V1 0.5 small-input)": ("mobilenet_v1", 0.5, True),
          "seed CIFAR (V1 1.0)": ("mobilenet_v1", 1.0, False),
          "V2 1.0 small-input": ("mobilenet_v2", 1.0, True)}
VARIANTS = {"default": {}, "unfused": {"fused_bn": False}, "nchw": {"channels_last": False}, "amp": {"amp": "on"},
            "fp32": {"amp": "off"}, "compile": {"compile": True}}


def main() -> None:
    from mobilenet.machine import MatmulProbe, cpu_slug, forward_flops

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated keys of MODELS")
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="default",
                        help="our trainer's variants: default (channels_last, fused BatchNorm, --amp auto), "
                             "unfused (PyTorch's BatchNorm), nchw, amp (bf16 autocast on), fp32 (autocast off), "
                             "compile")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/train_throughput-<cpu>.json")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",")]
    variants = args.variants.split(",")
    probe = MatmulProbe()
    rows = []
    for key in models:
        name, width, small_input = MODELS[key]
        flops = forward_flops(create_model(name, width_mult=width, num_classes=10, small_input=small_input).eval(), 1, 32)
        for batch in map(int, args.batches.split(",")):
            runs: dict[str, list[float]] = {"plain eager NCHW": [], **{f"ours ({v})": [] for v in variants}}
            steps = max(3, 1437 // batch)  # about one digits epoch
            for _ in range(args.repeats):
                runs["plain eager NCHW"].append(plain_loop_alone(name, width, small_input, batch, steps))
                probe.time(2)
                for v in variants:
                    runs[f"ours ({v})"].append(our_trainer(name, width, small_input, batch, **VARIANTS[v]))
                    probe.time(2)
            base = statistics.median(runs["plain eager NCHW"])
            row = {"model": key, "batch": batch, "forward_mflops": flops / 1e6,
                   "results": {k: {"images_per_s": statistics.median(v), "runs": v, "vs_plain": statistics.median(v) / base}
                               for k, v in runs.items()}}
            rows.append(row)
            print(f"{key}, batch {batch}: " + ", ".join(f"{k} {r['images_per_s']:.0f}" for k, r in row["results"].items())
                  + f", bound so far {probe.gflops * 1e9 / (3 * flops):.0f}", flush=True)
    for row in rows:  # the bound: the best product seen over the whole run
        row["bound_images_per_s"] = probe.gflops * 1e9 / (3 * row["forward_mflops"] * 1e6)
        for result in row["results"].values():
            result["of_bound"] = result["images_per_s"] / row["bound_images_per_s"]
    report = {"benchmark": "train_throughput", "resolution": 32, "repeats": args.repeats,
              "matmul_gflops": probe.gflops, "environment": environment(torch.get_num_threads()), "rows": rows}
    print(f"\nimages/s (share of the compute-bound limit; fp32 matrix peak {probe.gflops:.0f} GFLOP/s)")
    print("| model | batch | " + " | ".join(rows[0]["results"]) + " | vs plain | bound |")
    for row in rows:
        cells = " | ".join(f"{r['images_per_s']:.0f} ({100 * r['of_bound']:.0f}%)" for r in row["results"].values())
        ours = row["results"][f"ours ({variants[0]})"]["vs_plain"]
        print(f"| {row['model']} | {row['batch']} | {cells} | {ours:.2f}x | {row['bound_images_per_s']:.0f} |")
    output = write_json(args.output or Path(__file__).parent / "results" / f"train_throughput-{cpu_slug()}.json",
                        report)
    print(f"written to {output}")


if __name__ == "__main__":
    main()
