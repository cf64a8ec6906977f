"""The phone exports, measured through the product's own commands: for each phone converter
installed in this environment, `export_checkpoint` (what `mobilenet export` runs) fp32 and INT8,
with the check's max logit difference against PyTorch, INT8's top-1 agreement with fp32 on the
checkpoint's test images, file sizes and conversion times; then `mobilenet bench`'s measurement
at batch 1 on one thread, interleaved with ONNX Runtime fp32 and INT8 (the server runtime, as the
baseline) and the phone runtimes' x86 builds. A phone's own latency is measured on the phone.

Each converter lives in its own virtual environment (`make test-ondevice` builds them), so run it
once per environment; each writes benchmarks/results/phone-<converter>-<cpu>.{json,md}:

    .venv-executorch/bin/python benchmarks/phone_exports.py runs/digits224-mobilenet_v2/last.safetensors
    .venv-tflite/bin/python benchmarks/phone_exports.py runs/digits224-mobilenet_v2/last.safetensors
    .venv-coreml/bin/python benchmarks/phone_exports.py runs/digits224-mobilenet_v2/last.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from mobilenet.bench import environment, measure
from mobilenet.machine import cpu_flags, cpu_slug
from mobilenet.checkpoint import load_checkpoint
from mobilenet.export import export_checkpoint
from mobilenet.export.formats import FORMATS, PHONE_FORMATS, SUFFIXES
from mobilenet.files import write_text
from mobilenet.optional import available

RESULTS = Path(__file__).resolve().parent / "results"
RUNTIME_ROWS = {"executorch": ("executorch", "executorch-int8"), "tflite": ("tflite", "tflite-int8"), "coreml": ()}


def export_both(checkpoint: str, format: str, folder: Path) -> dict:
    rows = {}
    for int8 in (False, True):
        start = time.perf_counter()
        report = export_checkpoint(checkpoint, folder / f"{'int8' if int8 else 'fp32'}{SUFFIXES[format]}", format,
                                   int8=int8, min_agreement=0)  # measured and reported, whatever the guard says
        report["seconds"] = time.perf_counter() - start
        rows["int8" if int8 else "fp32"] = report
    return rows


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# Phone export: {result['format']}", "",
             f"Machine: {env['cpu']} ({', '.join(result['flags'])}); {result['threads']} thread(s) for latency; "
             f"versions: {json.dumps(env['versions'])}. Checkpoint: `{result['checkpoint']}`. "
             f"Command: `{result['command']}`.", "",
             "| file | check | INT8 top-1 agreement (fp32 / int8 accuracy) | MB | conversion s |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in result["exports"].items():
        if "validated" in row:
            check = "structural only (Core ML cannot run here)"
        elif "fp32_check" in row:  # INT8: the fp32 file's check, and how far int8 rounding moved the logits
            check = (f"fp32 file: max logit diff {row['fp32_check']['max_abs_diff']:.1e}; int8: "
                     f"{row['int8_max_abs_diff']:.2f} (rounding, informative)")
        else:
            check = f"max logit diff {row['check']['max_abs_diff']:.1e}"
        agreement = (f"{100 * row['agreement']:.2f}% ({100 * row['fp32_top1']:.2f}% / {100 * row['int8_top1']:.2f}%)"
                     if "agreement" in row else "-")
        lines.append(f"| {name} | {check} | {agreement} | {row['bytes'] / 1e6:.2f} | {row['seconds']:.1f} |")
    if result.get("latency"):
        rows = {r["runtime"]: r for r in result["latency"]["results"]}
        base = rows["onnxruntime"]["median_ms"]
        lines += ["", f"Batch 1, {result['threads']} thread(s), median ms (ratio to ONNX Runtime fp32, same run):", "",
                  "| " + " | ".join(rows) + " |", "|" + " --- |" * len(rows),
                  "| " + " | ".join(f"{r['median_ms']:.2f} ({r['median_ms'] / base:.2f})" for r in rows.values())
                  + " |"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()
    formats = [f for f in PHONE_FORMATS if all(available(p) for p in FORMATS[f].needs)]
    if not formats:
        print("no phone converter is installed here: run this with .venv-executorch, .venv-tflite or .venv-coreml "
              "(`make test-ondevice` builds them)", file=sys.stderr)
        return 2
    model, meta = load_checkpoint(args.checkpoint, with_meta=True)
    for format in formats:
        with tempfile.TemporaryDirectory(prefix="mobilenet-phone-") as work:
            exports = export_both(args.checkpoint, format, Path(work))
        latency = None
        if RUNTIME_ROWS[format]:
            latency = measure(model, batch=1, resolution=meta.resolution, threads=args.threads,
                              runtimes=["onnxruntime", "onnxruntime-int8", *RUNTIME_ROWS[format]],
                              iterations=args.iterations, progress=lambda line: print(line, file=sys.stderr))
        result = {"format": format, "checkpoint": args.checkpoint, "command": "python " + " ".join(sys.argv),
                  "threads": args.threads, "exports": exports, "latency": latency, "flags": cpu_flags(),
                  "environment": environment(args.threads)}
        stem = f"phone-{format}-{cpu_slug()}"
        write_text(RESULTS / f"{stem}.json", json.dumps(result, indent=2) + "\n")
        write_text(RESULTS / f"{stem}.md", markdown(result))
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
