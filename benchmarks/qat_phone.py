"""QAT for the phone: does a phone runtime's own quantizer, trained through (is_qat), keep the
accuracy its post-training INT8 loses? (issue 28; each runtime in its environment, which
`make test-ondevice` makes)

    .venv-executorch/bin/python benchmarks/qat_phone.py executorch runs/qat/v3s/last.safetensors \
        --images 20000 --name qat_executorch_v3_small

For one checkpoint, on its training data's test split, `mobilenet qat --runtime RUNTIME` (which
compares the runtime's PTQ program with its QAT program, every program a file run by the runtime's
own Python runtime, at a fixed batch), tabulated. Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mobilenet.bench import environment
from mobilenet.files import temporary_folder, write_json, write_text
from mobilenet.train import qat

RESULTS = Path(__file__).resolve().parent / "results"


# LiteRT is not here: litert-torch 0.10's QAT annotation (PT2EQuantizer with is_qat) hands torch.export
# a pattern function, which torch 2.13 refuses ("Expected `mod` to be an instance of torch.nn.Module"),
# so its QAT cannot run beside this torch; its PTQ (no conv-BN pattern once BatchNorm is folded) does.
NAMES = {"executorch": "ExecuTorch (XNNPACK)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runtime", choices=sorted(NAMES))
    parser.add_argument("checkpoint")
    parser.add_argument("--name", default=None, help="results file stem (default qat_RUNTIME)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--batch", type=int, default=32, help="the programs' fixed batch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--images", type=int, default=None, help="training images per QAT epoch")
    parser.add_argument("--lr", type=float, default=qat.QatOptions.lr)
    parser.add_argument("--calibration-images", type=int, default=512)
    args = parser.parse_args(argv)
    options = qat.QatOptions(epochs=args.epochs, images=args.images, lr=args.lr,
                             calibration_images=args.calibration_images)
    start = time.perf_counter()
    with temporary_folder("qat-phone") as work:  # the benchmark keeps the figures, not the files
        report = qat.quantization_aware(args.checkpoint, work / "out", options, runtime=args.runtime,
                                        pte_batch=args.batch, force=True, progress=False, say=print)
    rows, epochs = report["rows"], report["epochs"]
    name = args.name or f"qat_{args.runtime}"
    result = {"command": "python " + " ".join(sys.argv), "runtime": args.runtime, "checkpoint": args.checkpoint,
              "data": report["data"], "batch": args.batch, "options": asdict(options),
              "epochs": epochs, "rows": rows, "minutes": (time.perf_counter() - start) / 60,
              "environment": environment(torch.get_num_threads())}
    results = Path(args.results)
    write_json(results / f"{name}.json", result)
    versions = result["environment"]["versions"]
    lines = [f"# {NAMES[args.runtime]} INT8: PTQ against QAT, {args.checkpoint}", "",
             f"{result['environment']['cpu']}; torch {versions['torch']}, torchao {versions.get('torchao')}, "
             f"{args.runtime} {versions.get(args.runtime)}; "
             f"batch {args.batch}; QAT: {args.epochs} epoch(s) of {args.images or 'all'} images, lr {args.lr:g}.", "",
             "| method | fp32 top-1 % | INT8 top-1 % | change, points | agrees with fp32 % | agrees with program % |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        program = f"{100 * r['program_agreement']:.2f}" if "program_agreement" in r else "-"
        lines.append(f"| {r['method']} | {100 * r['fp32_top1']:.2f} | {100 * r['int8_top1']:.2f} | "
                     f"{-100 * r['drop']:+.2f} | {100 * r['agreement']:.2f} | {program} |")
    write_text(results / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
