"""Training throughput of one process against two under torchrun (gloo, loopback), in one run.

Both train the `make demo` model on the digits with the same global batch (one process at 2B,
two at B each), alternating `--repeats` times; each figure is the median images/s of the epochs
after the first (which pays for start-up), as the trainer logs it in metrics.jsonl.

    .venv/bin/python benchmarks/distributed_throughput.py    # writes benchmarks/results/distributed_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import torch

from mobilenet.bench import environment
from mobilenet.files import write_json

MODEL = ["--model", "mobilenet_v1", "--width", "0.5", "--small-input", "--data", "digits", "--lr", "0.2",
         "--no-progress"]


def run(processes: int, global_batch: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        args = ["train", "--out", out, "--epochs", str(epochs), "--batch-size", str(global_batch // processes), *MODEL]
        if processes == 1:
            command = [sys.executable, "-m", "mobilenet", *args]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--nnodes=1",
                       "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", f"--rdzv-id={uuid.uuid4().hex}",
                       "-m", "mobilenet", *args]
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
        subprocess.run(command, check=True, capture_output=True, env=env)
        rates = [json.loads(line)["images_per_s"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "distributed_throughput.json"))
    args = parser.parse_args()
    runs: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.repeats):
        for processes in runs:
            runs[processes].append(run(processes, args.global_batch, args.epochs))
        print(f"repeat {r + 1}: one process {runs[1][-1]:.0f} images/s, two processes {runs[2][-1]:.0f}", flush=True)
    one, two = statistics.median(runs[1]), statistics.median(runs[2])
    report = {"benchmark": "distributed_throughput", "global_batch": args.global_batch, "epochs": args.epochs,
              "repeats": args.repeats, "environment": environment(torch.get_num_threads()),
              "results": [{"processes": 1, "images_per_s": one, "runs": runs[1]},
                          {"processes": 2, "images_per_s": two, "runs": runs[2], "vs_one": two / one}]}
    print(f"one process {one:.0f} images/s, two processes {two:.0f} images/s: {two / one:.2f}x")
    write_json(args.output, report)


if __name__ == "__main__":
    main()
