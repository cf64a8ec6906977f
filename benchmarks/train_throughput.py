"""Training throughput: our trainer against a plain eager NCHW training loop, in one run.

Both train the same model (by default the seed's: V1 1.0 with ImageNet strides, 10 classes) on
32x32 images at batch 128 with SGD. The plain loop is what a tutorial writes: NCHW tensors already
in memory, no augmentation (so it does strictly less work than our trainer, whose figure includes
its loader, batched augmentation and bookkeeping). The two alternate, `--repeats` times each, so
that the machine's noise falls on both; the median of each is reported.

    .venv/bin/python benchmarks/train_throughput.py            # writes benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from mobilenet import create_model
from mobilenet.bench import environment
from mobilenet.data import load_dataset
from mobilenet.train import Run, TrainConfig


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


def our_trainer(model_name: str, width: float, small_input: bool, batch: int, **options) -> float:
    """Images per second of `mobilenet train`'s own epoch loop on the digits (1,437 images at 32x32)."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(out=out, model=model_name, width=width, small_input=small_input, data="digits",
                             batch_size=batch, epochs=3, lr=0.01, **options)
        run = Run(config, progress=False)
        run.train_epoch()  # warm-up (and compilation, if asked)
        run.epoch += 1
        return run.train_epoch()["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v1")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--small-input", action="store_true")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="default,nchw",
                        help="our trainer's variants: default (channels_last, --amp auto), nchw, amp (bf16 autocast on), "
                             "fp32 (autocast off), compile")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = parser.parse_args()

    options = {"default": {}, "nchw": {"channels_last": False}, "amp": {"amp": "on"}, "fp32": {"amp": "off"},
               "compile": {"compile": True}}
    variants = args.variants.split(",")
    common = (args.model, args.width, args.small_input, args.batch)
    steps = 11  # one digits epoch at batch 128
    runs: dict[str, list[float]] = {"plain eager NCHW": [], **{f"ours ({v})": [] for v in variants}}
    for r in range(args.repeats):
        runs["plain eager NCHW"].append(plain_loop(*common, steps))
        for v in variants:
            runs[f"ours ({v})"].append(our_trainer(*common, **options[v]))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {vals[-1]:.0f}" for k, vals in runs.items()), flush=True)

    base = statistics.median(runs["plain eager NCHW"])
    results = [{"variant": k, "images_per_s": statistics.median(v), "runs": v, "vs_plain": statistics.median(v) / base}
               for k, v in runs.items()]
    report = {"benchmark": "train_throughput", "model": args.model, "width": args.width, "small_input": args.small_input,
              "resolution": 32, "batch": args.batch, "repeats": args.repeats, "environment": environment(torch.get_num_threads()),
              "results": results}
    print(f"\n{args.model} x{args.width:g}, 32x32, batch {args.batch}, {args.repeats} alternating runs, median images/s")
    for row in results:
        print(f"  {row['variant']:<22} {row['images_per_s']:8.0f}  {row['vs_plain']:.2f}x")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
