"""What keeping freed memory (`mobilenet.train.memory`) does to the training step: its time and the
page faults it takes, with glibc's default allocator settings and with the trainer's, for the demo
model with our kernels and with PyTorch's modules. Each case runs in a fresh process (the setting is
process-wide), cases alternate over the repeats, and medians are reported.

    .venv/bin/python benchmarks/allocator.py   # writes benchmarks/results/allocator-<cpu>.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from mobilenet.bench import environment
from mobilenet.files import write_json

CASE = """
import json, resource, statistics, sys, time, torch
from torch import nn
from mobilenet import create_model
from mobilenet.fused import fuse
from mobilenet.train.memory import keep_freed_memory
kept, kernels, batch = sys.argv[1] == "kept", sys.argv[2] == "ours", int(sys.argv[3])
if kept:
    assert keep_freed_memory()
torch.manual_seed(0)
model = create_model("mobilenet_v1", width_mult=0.5, num_classes=10, small_input=True).train()
model = model.to(memory_format=torch.channels_last)
if kernels:
    fuse(model)
images = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 10, (batch,))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
def step():
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
for _ in range(5):
    step()
times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 20
print(json.dumps({"step_ms": 1e3 * statistics.median(times), "page_faults_per_step": faults}))
"""


def main() -> None:
    from mobilenet.machine import cpu_slug

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None, help="default: benchmarks/results/allocator-<cpu>.json")
    args = parser.parse_args()
    cases = [(step, memory) for step in ("ours", "pytorch") for memory in ("default", "kept")]
    runs: dict[str, list[dict]] = {f"{step}, {memory}": [] for step, memory in cases}
    for _ in range(args.repeats):
        for step, memory in cases:
            done = subprocess.run([sys.executable, "-c", CASE, memory, step, str(args.batch)], capture_output=True,
                                  text=True, check=True)
            runs[f"{step}, {memory}"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = {name: {"step_ms": statistics.median(r["step_ms"] for r in results),
                   "page_faults_per_step": statistics.median(r["page_faults_per_step"] for r in results),
                   "runs": results} for name, results in runs.items()}
    print(f"demo model, batch {args.batch}, channels-last fp32 step (forward, loss, backward, fused SGD)")
    print("| step, allocator | step ms | page faults per step |")
    for name, row in rows.items():
        print(f"| {name} | {row['step_ms']:.1f} | {row['page_faults_per_step']:.0f} |")
    report = {"benchmark": "allocator", "batch": args.batch, "repeats": args.repeats,
              "environment": environment(torch.get_num_threads()), "rows": rows}
    output = write_json(args.output or Path(__file__).parent / "results" / f"allocator-{cpu_slug()}.json", report)
    print(f"written to {output}")


if __name__ == "__main__":
    main()
