"""The Fashion-MNIST recipe, end to end: train a MobileNet from scratch, report the last epoch's
test top-1 and the wall time, quantize it to INT8 and compare, and write the results.

    make fashion                                    # the recipe, as documented in the README
    .venv/bin/python benchmarks/fashion_mnist.py --seed 1 --out runs/fashion-s1   # another seed

The data is the official Fashion-MNIST (`--data fashion-mnist`: found under the data root or where
Debian's `dataset-fashion-mnist` puts it; `--download` fetches it). Nothing is chosen on the test
split: the recipe is fixed before the run, and the checkpoint reported is the last epoch's. A run
stopped part way continues where it stopped when the same command is given again.

Writes benchmarks/results/fashion_mnist.{json,md} (per-epoch accuracy, images/s and time, the
machine and versions, the INT8 comparison) and fashion_mnist.png (test top-1 against wall-clock
minutes, beside the published results). The last line printed is `test top-1 NN.NN% ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mobilenet.bench import environment
from mobilenet.files import write_text
from mobilenet.train import TrainConfig, train
from mobilenet.train.recipes import FASHION_MNIST

RECIPE = FASHION_MNIST  # mobilenet/train/recipes.py says what it is and why
# Fashion-MNIST's own benchmark table (zalandoresearch/fashion-mnist README), test accuracy.
PUBLISHED = {"MobileNet (published) 95.0%": 0.950, "ResNet18 94.9%": 0.949, "DenseNet-BC 768K 95.4%": 0.954,
             "WRN-28-10 95.9%": 0.959}
RESULTS = Path(__file__).resolve().parent / "results"


def run_recipe(out: Path, overrides: dict) -> list[dict]:
    """Train (or continue) the recipe in `out`; returns the per-epoch metrics."""
    if (out / "state.safetensors").exists():
        train(TrainConfig(out=str(out)), resume=True)
    else:
        train(TrainConfig(out=str(out), **{**RECIPE, **overrides}))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def int8_report(out: Path, calibration_images: int) -> dict:
    """INT8 against fp32 on the whole test split, calibrated on training images."""
    from mobilenet.export import export_checkpoint
    from mobilenet.optional import available

    if not (available("onnx") and available("onnxruntime")):
        return {"skipped": "onnx and onnxruntime are not installed"}
    report = export_checkpoint(out / "last.safetensors", out / "last-int8.onnx", "onnx", int8=True,
                               calibration_images=calibration_images, min_agreement=0)  # reported, not shipped
    return {key: report[key] for key in ("agreement", "fp32_top1", "int8_top1", "images", "calibration_images",
                                         "fp32_bytes", "int8_bytes")}


def markdown(result: dict) -> str:
    env, last = result["environment"], result["epochs"][-1]
    lines = [f"# Fashion-MNIST: {result['recipe']['model']} width {result['recipe']['width']:g}, "
             f"small-input, {result['recipe']['epochs']} epochs, seed {result['recipe']['seed']}", "",
             "Options: " + ", ".join(f"{k} {v}" for k, v in result["recipe"].items()
                                    if k not in ("model", "width", "epochs", "seed") and v not in (None, False)) + ".",
             "",
             f"Machine: {env['cpu']}, {env['threads']} threads; torch {env['versions']['torch']}. "
             f"Command: `{result['command']}`.", "",
             f"**Last epoch's test top-1: {100 * last['test_top1']:.2f}%** after {result['wall_minutes']:.1f} minutes "
             "of training and evaluation" + (f", {last['pflop']:.3f} PFLOP of training" if "pflop" in last else "")
             + " (the checkpoint reported is the last one, not one picked on test).", "",
             "| epoch | test top-1 % | train loss | images/s | minutes so far |", "| --- | --- | --- | --- | --- |"]
    elapsed = 0.0
    for m in result["epochs"]:
        elapsed += m["epoch_time_s"] + m.get("eval_time_s", 0.0)
        top1 = f"{100 * m['test_top1']:.2f}" if "test_top1" in m else "-"  # not evaluated (--eval-every)
        lines.append(f"| {m['epoch']} | {top1} | {m['train_loss']:.4f} | "
                     f"{m['images_per_s']:.0f} | {elapsed / 60:.1f} |")
    int8 = result["int8"]
    if "agreement" in int8:
        lines += ["", f"INT8 (ONNX Runtime, calibrated on {int8['calibration_images']} training images): top-1 "
                      f"{100 * int8['int8_top1']:.2f}% against fp32 {100 * int8['fp32_top1']:.2f}% on "
                      f"{int8['images']} test images; agreement {100 * int8['agreement']:.2f}%."]
    lines += ["", "Published (Fashion-MNIST benchmark table): " + ", ".join(PUBLISHED) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/fashion", help="run folder (default runs/fashion)")
    parser.add_argument("--results", default=str(RESULTS), help="where the results files go")
    parser.add_argument("--name", default="fashion_mnist", help="results file stem (default fashion_mnist)")
    parser.add_argument("--seed", type=int, default=RECIPE["seed"])
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="the recipe's unless testing")
    parser.add_argument("--data-root", default=None, help="where fashion-mnist is found (default: the data root)")
    parser.add_argument("--download", action="store_true", help="fetch Fashion-MNIST if it is not found")
    parser.add_argument("--calibration-images", type=int, default=512)
    args = parser.parse_args(argv)
    out, results = Path(args.out), Path(args.results)
    overrides = {"seed": args.seed, "epochs": args.epochs, "data_root": args.data_root, "download": args.download}
    start = time.perf_counter()
    epochs = run_recipe(out, overrides)
    int8 = int8_report(out, args.calibration_images)
    config = json.loads((out / "config.json").read_text())
    # what ran: the run's own configuration (a run started by hand with other options reports those)
    result = {"recipe": {k: v for k, v in config.items() if k != "out"}, "command": "python " + " ".join(sys.argv),
              "epochs": epochs, "wall_minutes": sum(m["epoch_time_s"] + m.get("eval_time_s", 0.0) for m in epochs) / 60,
              "this_invocation_minutes": (time.perf_counter() - start) / 60, "int8": int8,
              "environment": environment(__import__("torch").get_num_threads()), "published": PUBLISHED}
    results.mkdir(parents=True, exist_ok=True)
    write_text(results / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    write_text(results / f"{args.name}.md", markdown(result))
    from mobilenet.plots import plot_accuracy_over_time

    title = f"Fashion-MNIST, {RECIPE['model']} x{RECIPE['width']:g} small-input, {result['environment']['cpu']}"
    plot_accuracy_over_time({f"seed {args.seed}": epochs}, results / f"{args.name}.png", references=PUBLISHED,
                            title=title)
    if all("pflop" in m for m in epochs):  # runs from before the counter have none
        plot_accuracy_over_time({f"seed {args.seed}": epochs}, results / f"{args.name}-pflop.png",
                                references=PUBLISHED, title=title, x="pflop")
    last = epochs[-1]
    compute = (f", {last['pflop']:.3f} PFLOP of training (+{sum(m.get('eval_pflop', 0) for m in epochs):.3f} evaluating)"
               if "pflop" in last else "")  # runs from before the counter have none
    print(f"test top-1 {100 * last['test_top1']:.2f}% (last epoch, {last['epoch']} epochs) in "
          f"{result['wall_minutes']:.1f} minutes of training and evaluation{compute}; results in "
          f"{results / args.name}.*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
