"""INT8 methods compared on real data: which post-training quantization holds a checkpoint's accuracy.

For each checkpoint (trained on data this machine has: digits, Fashion-MNIST...), on its whole test
split: fp32 top-1, then for each method its INT8 top-1, its top-1 agreement with fp32, and its
latency in OpenVINO at batch 1 and 32 (interleaved, medians):

* `ours (ORT QDQ)`: `mobilenet export --int8` (ONNX Runtime's quantizer: per-channel int8 weights,
  uint8 activations, MinMax calibration), run by OpenVINO;
* `NNCF default`: `nncf.quantize` of the same fp32 model in OpenVINO (its MinMax with fast bias
  correction);
* `NNCF + bias correction`: NNCF with its full (not fast) bias correction;
* `NNCF + CLE`: NNCF with channel alignment (its cross-layer equalisation) on as well. A method
  that fails is reported with its error (NNCF 3.4.0's channel alignment raises a KeyError on
  numpy statistics for these models).

All are calibrated on the same training images. Writes benchmarks/results/int8_methods-<cpu>.{json,md}.

    .venv/bin/python benchmarks/int8_methods.py runs/fashion/last.safetensors runs/digits-v2/last.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mobilenet.bench import environment
from mobilenet.machine import cpu_slug
from mobilenet.checkpoint import load_checkpoint
from mobilenet.data import load_dataset, make_loader
from mobilenet.export import inference_model, quantize, sample_images, training_data
from mobilenet.export.onnx import to_onnx
from mobilenet.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"


NNCF_METHODS = {"NNCF default": dict(fast=True, cle=False), "NNCF + bias correction": dict(fast=False, cle=False),
                "NNCF + CLE": dict(fast=False, cle=True)}


def nncf_model(fp32_onnx: Path, calibration: torch.Tensor, *, fast: bool, cle: bool):
    import nncf
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    dataset = nncf.Dataset([calibration[i:i + 1].numpy() for i in range(len(calibration))])
    advanced = nncf.AdvancedQuantizationParameters(disable_channel_alignment=not cle)
    return nncf.quantize(model, dataset, subset_size=len(calibration), fast_bias_correction=fast,
                         advanced_parameters=advanced)


def compiled(model_or_path):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                             "INFERENCE_NUM_THREADS": torch.get_num_threads(), "NUM_STREAMS": 1})


def top1(runner, loader) -> np.ndarray:
    return np.concatenate([runner(images.numpy()).argmax(1) for images, _ in loader])


def latency_ms(runners: dict, shape: tuple[int, ...], rounds: int = 5, calls: int = 4) -> dict[str, float]:
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    times = {name: [] for name in runners}
    for run in runners.values():
        run(x)
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(calls):
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def compare(checkpoint: str, calibration_images: int) -> dict:
    model, meta = load_checkpoint(checkpoint, with_meta=True)
    source = training_data(meta, checkpoint)
    if source is None:
        raise SystemExit(f"{checkpoint} does not name its training data")
    kwargs = dict(classes=list(source.classes) if source.classes else None, resolution=meta.resolution,
                  root=source.root, channels=meta.config.in_chans)
    test = load_dataset(source.data, "test", **kwargs)
    calibration = sample_images(load_dataset(source.data, "train", **kwargs), calibration_images, seed=1, meta=meta)
    loader = make_loader(test, 250, train=False, mean=meta.mean, std=meta.std)
    labels = np.concatenate([y.numpy() for _, y in loader])
    with tempfile.TemporaryDirectory() as work:
        fp32_onnx, qdq = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
        to_onnx(inference_model(model, channels_last=False), fp32_onnx, meta.resolution)
        quantize(fp32_onnx, qdq, calibration)
        runners = {"fp32 (OpenVINO f32)": compiled(fp32_onnx), "ours (ORT QDQ)": compiled(qdq)}
        failed = {}
        for name, options in NNCF_METHODS.items():
            try:
                runners[name] = compiled(nncf_model(fp32_onnx, calibration, **options))
            except ImportError:
                failed[name] = "nncf is not installed"
            except Exception as error:  # noqa: BLE001 - a method that fails is a result too
                failed[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        calls = {name: (lambda x, c=c: c(x)[0]) for name, c in runners.items()}
        predictions = {name: top1(run, loader) for name, run in calls.items()}
        shape = (1, meta.config.in_chans, meta.resolution, meta.resolution)
        ms1 = latency_ms(calls, shape)
        ms32 = latency_ms(calls, (32, *shape[1:]))
    reference = predictions["fp32 (OpenVINO f32)"]
    rows = [{"method": name, "top1": float((p == labels).mean()), "agreement": float((p == reference).mean()),
             "batch1_ms": ms1[name], "batch32_ms": ms32[name]} for name, p in predictions.items()]
    return {"checkpoint": checkpoint, "model": meta.config.to_dict(), "data": source.data, "test_images": len(labels),
            "calibration_images": len(calibration), "resolution": meta.resolution, "rows": rows, "failed": failed}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# INT8 methods on {env['cpu']}", "", f"{env['threads']} threads; CPU flags of note: "
             f"{', '.join(env['cpu_flags'])}; versions {json.dumps(env['versions'])}. Command: "
             "`python benchmarks/int8_methods.py CHECKPOINT...`. Latency: OpenVINO, median ms, interleaved.", ""]
    for result in report["results"]:
        model = result["model"]
        lines += [f"## {result['checkpoint']}: {model['name']} x{model['width_mult']:g} at {result['resolution']}, "
                  f"{result['data']}, {result['test_images']} test images, {result['calibration_images']} "
                  "calibration images", "", "| method | top-1 % | top-1 agreement with fp32 % | batch 1 ms | batch 32 ms |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['method']} | {100 * r['top1']:.2f} | {100 * r['agreement']:.2f} | {r['batch1_ms']:.2f} | "
                  f"{r['batch32_ms']:.2f} |" for r in result["rows"]]
        lines += [f"| {name} | {why} | | | |" for name, why in result.get("failed", {}).items()] + [""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--output", default=None, help="default: benchmarks/results/int8_methods-<cpu>.json")
    args = parser.parse_args()
    report = {"benchmark": "int8_methods", "environment": environment(torch.get_num_threads()),
              "results": [compare(c, args.calibration_images) for c in args.checkpoints]}
    for result in report["results"]:
        print(f"\n{result['checkpoint']} ({result['model']['name']} x{result['model']['width_mult']:g}, "
              f"{result['data']}, {result['test_images']} test images)")
        print(f"  {'method':<30} {'top-1 %':>8} {'agree %':>8} {'b1 ms':>7} {'b32 ms':>7}")
        for row in result["rows"]:
            print(f"  {row['method']:<30} {100 * row['top1']:8.2f} {100 * row['agreement']:8.2f} "
                  f"{row['batch1_ms']:7.2f} {row['batch32_ms']:7.2f}")
        for name, why in result["failed"].items():
            print(f"  {name:<30} {why}")
    slug = cpu_slug()
    output = Path(args.output or RESULTS / f"int8_methods-{slug}.json")
    write_text(output, json.dumps(report, indent=2) + "\n")
    write_text(output.with_suffix(".md"), markdown(report))
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
