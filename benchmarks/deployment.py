"""The deployment table: every runtime and precision beside the peers users would pick, per CPU.

For each checkpoint and batch size, one `mobilenet bench --runtime all` run (all runtimes
interleaved): ONNX Runtime fp32 and INT8, OpenVINO f32, bf16 and INT8, the peers built with their
tools' defaults (`onnxruntime-default`: torch.onnx.export + a default session; `openvino-default`:
openvino.convert_model + compile_model with no settings), and `auto`, our choice by measurement,
with its top-1 agreement with fp32 on the checkpoint's own test images. Ratios are to ONNX
Runtime fp32 in the same run. Writes benchmarks/results/deployment-<cpu>.{json,md}: one file per
CPU model, since the winners differ.

    .venv/bin/python benchmarks/deployment.py runs/digits224-v1/last.safetensors runs/digits224-v2/last.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mobilenet.bench import build, checkpoint_images, environment, measure
from mobilenet.machine import cpu_flags, cpu_slug
from mobilenet.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16", "openvino-int8", "onnxruntime-default",
           "openvino-default", "auto")
PEERS = ("onnxruntime-default", "openvino-default")


def table(runs: list[dict]) -> str:
    lines = ["| model, batch | " + " | ".join(COLUMNS) + " | auto vs best peer |", "|" + " --- |" * (len(COLUMNS) + 2)]
    for run in runs:
        rows = {r["runtime"]: r for r in run["report"]["results"]}
        base = rows["onnxruntime"]["median_ms"]
        cells = []
        for name in COLUMNS:
            row = rows.get(name)
            if row is None:
                cells.append("-")
                continue
            cell = f"{row['median_ms']:.2f} ({row['median_ms'] / base:.2f})"
            if name == "auto":
                agreement = f", {100 * row['agreement']:.2f}% agreement" if "agreement" in row else ""
                cell += f" = {row['chosen']}{agreement}"
            cells.append(cell)
        peer = min((rows[p]["median_ms"] for p in PEERS if p in rows), default=None)
        versus = f"{rows['auto']['median_ms'] / peer:.2f}x" if peer and "auto" in rows else "-"
        lines.append(f"| {run['name']}, {run['batch']} | " + " | ".join(cells) + f" | {versus} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    runs = []
    for checkpoint in args.checkpoints:
        model, resolution = build(checkpoint)
        images = checkpoint_images(checkpoint, resolution)
        for batch in map(int, args.batches.split(",")):
            print(f"{checkpoint}, batch {batch}", file=sys.stderr, flush=True)
            report = measure(model, batch=batch, resolution=resolution, runtimes="all", iterations=args.iterations,
                             data_images=images, progress=lambda m: print("  " + m, file=sys.stderr, flush=True))
            name = f"{model.config.name} {model.config.width_mult:g}-{resolution}"
            runs.append({"checkpoint": checkpoint, "name": name, "batch": batch, "report": report})
    env = environment(torch.get_num_threads())
    slug = cpu_slug()
    text = (f"# Deployment on {env['cpu']}\n\n{env['threads']} threads; CPU flags of note: "
            + ", ".join(cpu_flags())
            + f"; versions {json.dumps(env['versions'])}.\nCommand: `python {' '.join(sys.argv)}`. Median ms per call, "
            "(ratio to ONNX Runtime fp32 in the same run).\n\n" + table(runs) + "\n")
    write_text(RESULTS / f"deployment-{slug}.json", json.dumps({"environment": env, "runs": runs}, indent=2) + "\n")
    write_text(RESULTS / f"deployment-{slug}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
