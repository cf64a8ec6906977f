"""The time-to-accuracy ablation table (issue 26), airbench-style: each variant of the recipe, its
held-out top-1 after the last epoch, its training compute and time, read from finished run folders.

    .venv/bin/python benchmarks/fashion_ablation.py "baseline, 20 epochs=runs/ablate/base20" \
        "progressive 16->28, 40 epochs=runs/ablate/prog40" --name fashion_mnist_ablation_val

Variants are compared on what their runs were evaluated on: a validation split cut from the
training set (`--val-split`) while tuning, never the test split. `--flips` also evaluates each run's
last checkpoint on that split with test-time flips (each image and its mirror, logits averaged;
airbench counts them), beside the figure without. Writes benchmarks/results/NAME.{md,json} and
NAME.png (held-out top-1 against training PFLOP, per evaluated epoch).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mobilenet.bench import environment
from mobilenet.checkpoint import load_checkpoint
from mobilenet.data import load_dataset, make_loader
from mobilenet.data.load import hold_out
from mobilenet.evaluate import evaluate
from mobilenet.files import write_text
from mobilenet.plots import plot_accuracy_over_time

RESULTS = Path(__file__).resolve().parent / "results"
SHOWN = ("epochs", "batch_size", "lr", "label_smoothing", "random_erasing", "min_resolution", "resize_start",
         "resize_end", "ema_decay", "tta_flip", "val_split", "seed")


def read_run(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    if last["epoch"] != config["epochs"] or "test_top1" not in last:
        raise ValueError(f"{folder}: not finished ({last['epoch']} of {config['epochs']} epochs)")
    return {"config": {key: config.get(key) for key in SHOWN}, "split": last.get("test_split"),
            "top1": last["test_top1"], "pflop": last["pflop"],
            "minutes": sum(m["epoch_time_s"] + m.get("eval_time_s", 0.0) for m in metrics) / 60,
            "curve": [(m["pflop"], m["test_top1"]) for m in metrics if "test_top1" in m],
            "images_per_s": [round(m["images_per_s"]) for m in metrics]}


def held_out_top1(folder: Path) -> tuple[float, float]:
    """The run's last checkpoint on the split it was evaluated on, rebuilt as the trainer builds it:
    top-1 without and with test-time flips."""
    config = json.loads((folder / "config.json").read_text())
    model, meta = load_checkpoint(folder / "last.safetensors", with_meta=True)
    options = dict(classes=config["classes"], resolution=config["resolution"], root=config["data_root"],
                   channels=config["in_chans"])
    train = load_dataset(config["data"], "train", **options)
    held = hold_out(train, config["val_split"])[1] if config["val_split"] else load_dataset(config["data"], "test",
                                                                                             **options)
    loader = make_loader(held, 256, train=False, workers=0, channels_last=True, mean=meta.mean, std=meta.std)
    model = model.eval().to(memory_format=torch.channels_last)
    return tuple(evaluate(model, loader, len(train.classes), flip=flip).top1 for flip in (False, True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=FOLDER")
    parser.add_argument("--name", default="fashion_mnist_ablation")
    parser.add_argument("--note", default="", help="a line on how the runs were made (shared cores, threads)")
    parser.add_argument("--flips", action="store_true", help="also the last checkpoint's top-1 with test-time flips")
    args = parser.parse_args(argv)
    variants = {}
    for spec in args.runs:
        label, _, folder = spec.rpartition("=")
        variants[label] = read_run(Path(folder))
        if args.flips:
            again, flips = held_out_top1(Path(folder))  # again: the recorded figure, recomputed
            variants[label].update(top1_recomputed=again, top1_flips=flips)
    env = environment(torch.get_num_threads())
    base = next(iter(variants.values()))
    lines = [f"# Fashion-MNIST time-to-accuracy ablation: {args.name}", "",
             f"Machine: {env['cpu']}; torch {env['versions']['torch']}. {args.note}".rstrip(), "",
             "| variant | held-out split | top-1 % | vs first |" + (" with flips % |" if args.flips else "")
             + " training PFLOP | minutes | options |",
             "| --- | --- | ---: | ---: |" + (" ---: |" if args.flips else "") + " ---: | ---: | --- |"]
    for label, run in variants.items():
        resizing = run["config"].get("min_resolution") is not None  # the ramp means nothing without it
        options = ", ".join(f"{k} {v}" for k, v in run["config"].items()
                            if v not in (None, False, 0.0) and (resizing or not k.startswith("resize_")))
        flips = f" {100 * run['top1_flips']:.2f} |" if args.flips else ""
        lines.append(f"| {label} | {run['split']} | {100 * run['top1']:.2f} | {100 * (run['top1'] - base['top1']):+.2f} "
                     f"|{flips} {run['pflop']:.3f} | {run['minutes']:.1f} | {options} |")
    write_text(RESULTS / f"{args.name}.md", "\n".join(lines) + "\n")
    write_text(RESULTS / f"{args.name}.json", json.dumps({"environment": env, "note": args.note,
                                                          "variants": variants}, indent=2) + "\n")
    curves = {label: [{"epoch": i + 1, "pflop": p, "test_top1": t, "epoch_time_s": 0.0}
                      for i, (p, t) in enumerate(run["curve"])] for label, run in variants.items()}
    plot_accuracy_over_time(curves, RESULTS / f"{args.name}.png", title=f"Fashion-MNIST ablation, {env['cpu']}",
                            x="pflop")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
