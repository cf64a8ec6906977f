"""PTQ against QAT per model and runtime (issue 28), read from finished `mobilenet qat` folders:

    .venv/bin/python benchmarks/qat_table.py "V1 0.5 small-input=runs/qat/v1" "V3-Small=runs/qat/v3s-qat" \
        --name qat_fashion_mnist

Each folder's report.json holds the post-training INT8 file's row (ONNX Runtime's quantizer on the
original checkpoint) and the QAT files' rows (ONNX Runtime and OpenVINO), all on the test split,
against the original fp32 model. Writes benchmarks/results/NAME.{md,json}, with the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mobilenet.bench import environment
from mobilenet.files import write_json, write_text

RESULTS = Path(__file__).resolve().parent / "results"


def describe(options: dict) -> str:
    images = "all images" if options.get("images") is None else f"{options['images']} images"
    return f"{options['epochs']} epoch(s) of {images}, lr {options['lr']:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="LABEL=DIR", help="a label and a `mobilenet qat` folder")
    parser.add_argument("--name", default="qat_fashion_mnist", help="the results' file name")
    parser.add_argument("--note", default="", help="a sentence on how the runs were made")
    args = parser.parse_args(argv)
    machine = environment(torch.get_num_threads())  # where a report does not say (the first reports)
    models = []
    for item in args.runs:
        label, _, folder = item.rpartition("=")
        report = json.loads((Path(folder) / "report.json").read_text())
        report.setdefault("machine", {key: machine[key] for key in ("cpu", "cpu_flags", "threads")})
        models.append({"label": label or folder, "folder": folder, **report})
    lines = [f"# PTQ against QAT: {args.name}", "",
             "Machines: " + "; ".join(sorted({f"{m['machine']['cpu']} ({', '.join(m['machine']['cpu_flags'])})"
                                              for m in models})) + f"; torch {machine['versions']['torch']}, "
             f"torchao {machine['versions'].get('torchao', '-')}. {args.note}".strip(), "",
             "INT8 top-1 on the test split against the original fp32 checkpoint's; 'agrees with fp32': the share "
             "of test images with fp32's top-1 class; 'agrees with program': the QAT file against PyTorch's INT8 "
             "arithmetic of the PT2E program it was written from (the guard). PTQ: `mobilenet export --int8`'s "
             "recipe on the original checkpoint. QAT: `mobilenet qat` (options per row).", "",
             "| model | method | runtime | fp32 top-1 % | INT8 top-1 % | change, points | agrees with fp32 % "
             "| agrees with program % | QAT options | fine-tuning minutes |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for model in models:
        options = model["options"]
        minutes = sum(epoch["seconds"] for epoch in model["epochs"]) / 60
        for row in model["rows"]:
            qat = row["method"] == "QAT"
            program = f"{100 * row['program_agreement']:.2f}" if qat else "-"
            lines.append(f"| {model['label']} | {row['method']} | {row['runtime']} | {100 * row['fp32_top1']:.2f} | "
                         f"{100 * row['int8_top1']:.2f} | {100 * (row['int8_top1'] - row['fp32_top1']):+.2f} | "
                         f"{100 * row['agreement']:.2f} | {program} | "
                         f"{describe(options) if qat else '-'} | "
                         f"{f'{minutes:.1f}' if qat else '-'} |")
    write_text(RESULTS / f"{args.name}.md", "\n".join(lines) + "\n")
    write_json(RESULTS / f"{args.name}.json", {"machine": machine, "note": args.note, "models": models})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
