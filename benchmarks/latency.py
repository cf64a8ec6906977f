"""Inference latency targets: every runtime of `mobilenet.bench` on V2 and V1 1.0-224, and INT8 on a
digits model, written with the environment to benchmarks/results/latency.{json,md}.

    .venv/bin/python benchmarks/latency.py                                # needs `make demo` first for the INT8 part
    .venv/bin/python benchmarks/latency.py --checkpoint /tmp/demo_run/last.safetensors

The targets (fp32 unless named; "eager" is our model NCHW as built, unfused, measured in the same run):
V2 batch 1: fastest runtime <= 0.30x eager latency; batch 32: >= 8x eager throughput.
V1 batch 1: <= 0.35x; batch 32: >= 5x. INT8: <= 0.6x the latency of fp32 ONNX Runtime, with >= 98%
top-1 agreement with fp32 on the digits test split for a model trained like `make demo`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mobilenet import bench
from mobilenet.export import export_checkpoint
from mobilenet.files import write_json, write_text

RESULTS = Path(__file__).parent / "results"
FP32 = ("eager", "channels_last", "compile", "onnxruntime")
TARGETS = {  # (model, batch): (what, bound)
    ("mobilenet_v2", 1): ("latency", 0.30),
    ("mobilenet_v2", 32): ("throughput", 8.0),
    ("mobilenet_v1", 1): ("latency", 0.35),
    ("mobilenet_v1", 32): ("throughput", 5.0),
}
INT8_LATENCY, INT8_AGREEMENT = 0.6, 0.98


def eager_with_autograd_ms(model: torch.nn.Module, batch: int, calls: int) -> float:
    """Median latency of the eager model called without `torch.no_grad()` (autograd recording), as
    a script that forgets it runs. Context only: the targets compare with eager under inference mode."""
    x = torch.randn(batch, 3, 224, 224)
    with torch.enable_grad():
        bench.settle(lambda: model(x))
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            model(x)
            seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds)


def fp32_verdict(report: dict, what: str, bound: float) -> dict:
    """The fastest fp32 runtime against eager, whether it meets the bound, and the best ratio any fp32
    runtime could reach here: the compute-bound limit (model FLOPs at the measured matrix-multiply
    throughput) against the same eager time."""
    rows = {r["runtime"]: r for r in report["results"]}
    eager = rows["eager"]["median_ms"]
    best = min((r for r in rows.values() if r["runtime"] in FP32 and r["runtime"] != "eager"),
               key=lambda r: r["median_ms"])
    limit = report["compute_bound"]["limit_ms"]
    if what == "latency":
        ratio, possible = best["median_ms"] / eager, limit / eager
        met, needed = ratio <= bound, possible / bound
    else:
        ratio, possible = eager / best["median_ms"], eager / limit
        met, needed = ratio >= bound, bound / possible
    return {"target": f"{what} {'<=' if what == 'latency' else '>='} {bound}x eager", "fastest": best["runtime"],
            "ratio": ratio, "met": met, "of_compute_bound": best["of_compute_bound"],
            "compute_bound_ratio": possible, "needed_of_compute_bound": needed, "reachable": needed <= 1}


def int8_verdict(report: dict) -> dict | None:
    rows = {r["runtime"]: r for r in report["results"]}
    if "onnxruntime" not in rows or "onnxruntime-int8" not in rows:
        return None
    ratio = rows["onnxruntime-int8"]["median_ms"] / rows["onnxruntime"]["median_ms"]
    return {"target": f"int8 latency <= {INT8_LATENCY}x fp32 onnxruntime", "ratio": ratio, "met": ratio <= INT8_LATENCY}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# Inference latency", "",
        f"Measured {result['date']} with `{result['command']}` ({result['minutes']:.1f} minutes).", "",
        f"Machine: {env['cpu']} ({', '.join(env['cpu_flags'])}), {env['cores']} cores, {env['threads']} threads; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f"; load average at start {', '.join(f'{x:.2f}' for x in env['load_average'] or [])}.", "",
        "Median of the timed calls; each runtime's calls are spread over interleaved rounds, each turn after "
        "0.1 s of untimed calls (`mobilenet.bench.settle`). eager = our model NCHW as built (unfused).", "",
    ]
    for entry in result["runs"]:
        report = entry["report"]
        lines += [f"## {entry['model']} 1.0-{report['resolution']}, batch {report['batch']} "
                  f"({report['iterations']} timed calls per runtime)", "",
                  "| runtime | median ms | p10 ms | p90 ms | images/s | latency vs eager | throughput vs eager |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in report["results"]:
            lines.append(f"| {r['runtime']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | {r['p90_ms']:.2f} | "
                         f"{r['images_per_s']:.1f} | {r['latency_vs_eager']:.3f} | {r['throughput_vs_eager']:.2f} |")
        lines += [f"- {s['runtime']} skipped: {s['reason']}" for s in report["skipped"]]
        rows = {r["runtime"]: r for r in report["results"]}
        if "eager_autograd_ms" in entry and "onnxruntime" in rows:
            lines.append(f"- context, not a target: eager called without `torch.no_grad()` (autograd on), timed "
                         f"just after the run: {entry['eager_autograd_ms']:.2f} ms; fp32 onnxruntime against it: "
                         f"{rows['onnxruntime']['median_ms'] / entry['eager_autograd_ms']:.3f}x latency, "
                         f"{entry['eager_autograd_ms'] / rows['onnxruntime']['median_ms']:.2f}x throughput")
        bound = report["compute_bound"]
        lines.append(f"- compute-bound limit (fp32): {bound['limit_ms']:.2f} ms = {bound['flops'] / 1e9:.2f} GFLOP at "
                     f"{bound['matmul_gflops']:.0f} GFLOP/s (fp32 matrix multiply, measured in this run)")
        for verdict in entry["verdicts"]:
            extra = f" ({verdict['fastest']})" if "fastest" in verdict else ""
            lines.append(f"- target {verdict['target']}: {verdict['ratio']:.3f}x{extra}, "
                         f"**{'met' if verdict['met'] else 'missed'}**")
            if "reachable" in verdict:
                lines.append(f"  - {verdict['fastest']} runs at {100 * verdict['of_compute_bound']:.0f}% of the "
                             f"compute-bound limit (at 100% the ratio would be {verdict['compute_bound_ratio']:.3f}x); "
                             f"the target needs {100 * verdict['needed_of_compute_bound']:.0f}%"
                             + ("" if verdict["reachable"] else
                                ": **no fp32 runtime can reach it on this machine**"))
        lines.append("")
    demo = result.get("demo")
    if demo:
        q = demo["int8"]
        lines += [f"## INT8 on the digits model ({demo['checkpoint']}, 32x32)", "",
                  f"Top-1 agreement with fp32 on the digits test split ({q['images']} images): "
                  f"{100 * q['agreement']:.2f}% (target >= {100 * INT8_AGREEMENT:.0f}%: "
                  f"**{'met' if q['agreement'] >= INT8_AGREEMENT else 'missed'}**); accuracy fp32 "
                  f"{100 * q['fp32_top1']:.2f}%, int8 {100 * q['int8_top1']:.2f}%; calibrated on "
                  f"{q['calibration_images']} training images; "
                  f"{q['fp32_bytes'] / 1e6:.2f} MB -> {q['int8_bytes'] / 1e6:.2f} MB.", ""]
        for report in demo["latency"]:
            rows = {r["runtime"]: r for r in report["results"]}
            if {"onnxruntime", "onnxruntime-int8"} <= set(rows):
                lines.append(f"- batch {report['batch']}: fp32 onnxruntime {rows['onnxruntime']['median_ms']:.3f} ms, "
                             f"int8 {rows['onnxruntime-int8']['median_ms']:.3f} ms "
                             f"({rows['onnxruntime-int8']['median_ms'] / rows['onnxruntime']['median_ms']:.3f}x)")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/demo/last.safetensors",
                        help="a digits model trained like `make demo` (default runs/demo/last.safetensors)")
    parser.add_argument("--iterations", type=int, default=60, help="timed calls per runtime at batch 1")
    parser.add_argument("--iterations-batch", type=int, default=10, help="timed calls per runtime at batch 32")
    parser.add_argument("--models", default="mobilenet_v2,mobilenet_v1")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--output", default=str(RESULTS / "latency"), help="writes OUTPUT.json and OUTPUT.md")
    parser.add_argument("--sweep", action="store_true",
                        help="also the V1 paper's 16-model grid at batch 1 (latency_sweep_mobilenet_v1_batch1.*)")
    args = parser.parse_args()

    start = time.time()
    runs = []
    for model_name in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            model, _ = bench.build(model_name)
            iterations = args.iterations if batch == 1 else args.iterations_batch
            report = bench.measure(model, batch=batch, resolution=224, iterations=iterations, warmup=3,
                                   progress=lambda m: print("  " + m, flush=True))
            verdicts = [fp32_verdict(report, *TARGETS[(model_name, batch)])] if (model_name, batch) in TARGETS else []
            verdicts += [v for v in [int8_verdict(report)] if v]
            autograd_ms = eager_with_autograd_ms(model, batch, iterations // 2)
            runs.append({"model": model_name, "report": report, "verdicts": verdicts,
                         "eager_autograd_ms": autograd_ms})
            print(bench.format_report(report), flush=True)
            print(f"  context: eager with autograd on {autograd_ms:.2f} ms (measured after the run)", flush=True)
            for v in verdicts:
                print(f"  target {v['target']}: {v['ratio']:.3f}x {'met' if v['met'] else 'MISSED'}"
                      + (f" (runs at {100 * v['of_compute_bound']:.0f}% of the fp32 compute-bound limit; the target "
                         f"needs {100 * v['needed_of_compute_bound']:.0f}%)" if "reachable" in v else ""),
                      flush=True)

    demo = None
    if Path(args.checkpoint).is_file():
        with tempfile.TemporaryDirectory() as work:
            # a measurement reports the agreement whatever it is; the guard is for files that ship
            int8 = export_checkpoint(args.checkpoint, Path(work) / "int8.onnx", "onnx", int8=True, min_agreement=0)
        model, resolution = bench.build(args.checkpoint)
        latency = [bench.measure(model, batch=b, resolution=resolution, runtimes="onnxruntime,onnxruntime-int8",
                                 iterations=200 if b == 1 else 50, warmup=5) for b in (1, 32)]
        demo = {"checkpoint": args.checkpoint, "int8": int8, "latency": latency}
        print(f"digits model: int8 agreement {100 * int8['agreement']:.2f}%, fp32 {100 * int8['fp32_top1']:.2f}%, "
              f"int8 {100 * int8['int8_top1']:.2f}%")
        for report in latency:
            print(bench.format_report(report))
    else:
        print(f"no checkpoint at {args.checkpoint}: the INT8 agreement on digits is not measured (run `make demo`)")

    result = {"benchmark": "latency", "date": time.strftime("%Y-%m-%d %H:%M"), "minutes": (time.time() - start) / 60,
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "environment": bench.environment(
                  runs[0]["report"]["environment"]["threads"] if runs else 0),
              "runs": runs, "demo": demo}
    result["environment"]["load_average"] = runs[0]["report"]["environment"]["load_average"] if runs else None
    output = Path(args.output)
    write_json(output.with_suffix(".json"), result)
    write_text(output.with_suffix(".md"), markdown(result))
    print(f"written to {output.with_suffix('.json')} and {output.with_suffix('.md')}")
    if args.sweep:
        grid = bench.sweep("mobilenet_v1", iterations=args.iterations // 2, warmup=3, progress=print)
        print(bench.sweep_table(grid))
        print("written to " + ", ".join(map(str, bench.write_sweep(grid, output.parent))))


if __name__ == "__main__":
    main()
