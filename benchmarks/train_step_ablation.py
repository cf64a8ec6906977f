"""Where the training step's speed comes from: each change of `mobilenet.fused` and autocast added
in turn, timed interleaved in one process.

The step is forward, loss, backward and an SGD update (`foreach`; PyTorch's fused kernel in the last
row, as the trainer uses it) on one random batch already in memory
(no loader: the trainer's whole pipeline is in train_throughput.py). Each row adds one change to the
row above it; one row takes bf16 autocast without our kernels, to show why `--amp auto` turned it
off before them. Rounds alternate between the rows, and the median step is reported.

    .venv/bin/python benchmarks/train_step_ablation.py   # writes benchmarks/results/train_step_ablation-<cpu>.{json,md}
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from mobilenet import create_model
from mobilenet.bench import environment
from mobilenet.fused import fuse
from mobilenet.files import write_json, write_text

# (name, channels_last, mobilenet.fused.KERNELS swapped in, bf16 autocast, fused SGD); each row's
# changes include the rows above it
ALL = ("bn_act", "depthwise", "pointwise")
STEPS = [
    ("plain eager NCHW fp32", False, (), False, False),
    ("+ channels_last", True, (), False, False),
    ("(channels_last + bf16 autocast, PyTorch only)", True, (), True, False),
    ("+ fused BatchNorm + activation", True, ALL[:1], False, False),
    ("+ depthwise convolution kernel", True, ALL[:2], False, False),
    ("+ 1x1 convolutions as mm", True, ALL, False, False),
    ("+ bf16 autocast", True, ALL, True, False),
    ("+ fused SGD update", True, ALL, True, True),
]


def make_step(model_args: tuple[str, float, bool], batch: int, channels_last: bool, kernels: tuple[str, ...],
              bf16: bool, fused_sgd: bool):
    name, width, small_input = model_args
    torch.manual_seed(0)
    model = create_model(name, width_mult=width, num_classes=10, small_input=small_input).train()
    images = torch.randn(batch, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    fuse(model, kernels)
    labels = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                fused=fused_sgd, foreach=not fused_sgd)
    criterion = nn.CrossEntropyLoss()

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = criterion(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def main() -> None:
    from train_throughput import MODELS  # this folder is on the path when run as a script
    from mobilenet.machine import cpu_slug

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated keys of MODELS")
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of 3 steps of each row")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/train_step_ablation-<cpu>")
    args = parser.parse_args()
    tables = []
    for key in (m.strip() for m in args.models.split(",")):
        for batch in map(int, args.batches.split(",")):
            steps = [make_step(MODELS[key], batch, *row[1:]) for row in STEPS]
            for step in steps:  # warm-up: oneDNN's kernels, the C kernels' first call
                step(), step()
            times: list[list[float]] = [[] for _ in STEPS]
            for _ in range(args.rounds):
                for i, step in enumerate(steps):
                    times[i].append(statistics.median(step() for _ in range(3)))
            medians = [statistics.median(t) for t in times]
            rows = [{"step": row[0], "ms": 1e3 * m, "images_per_s": batch / m, "vs_plain": medians[0] / m}
                    for row, m in zip(STEPS, medians)]
            tables.append({"model": key, "batch": batch, "rows": rows})
            print(f"\n{key}, batch {batch}")
            for r in rows:
                print(f"  {r['step']:48s} {r['ms']:7.1f} ms  {r['images_per_s']:6.0f} img/s  {r['vs_plain']:.2f}x")
    report = {"benchmark": "train_step_ablation", "resolution": 32, "rounds": args.rounds,
              "environment": environment(torch.get_num_threads()), "tables": tables}
    output = Path(args.output or Path(__file__).parent / "results" / f"train_step_ablation-{cpu_slug()}")
    write_json(output.with_suffix(".json"), report)
    env = report["environment"]
    lines = [f"# Training step ablation on {env['cpu']} ({env['threads']} threads; "
             f"{', '.join(env['cpu_flags'])}), torch {env['versions']['torch']}", "",
             "Images/s of one training step (median of interleaved rounds), and the ratio to plain eager NCHW fp32.",
             "Each row adds its change to the rows above; the row in parentheses is bf16 without our kernels.", ""]
    for table in tables:
        lines += [f"## {table['model']}, batch {table['batch']}", "", "| step | ms | images/s | vs plain |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {r['step']} | {r['ms']:.1f} | {r['images_per_s']:.0f} | {r['vs_plain']:.2f}x |"
                  for r in table["rows"]]
        lines.append("")
    write_text(output.with_suffix(".md"), "\n".join(lines))
    print(f"written to {output}.json and .md")


if __name__ == "__main__":
    main()
