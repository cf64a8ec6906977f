"""QAT for the phone: does a phone runtime's own quantizer, trained through (is_qat), keep the
accuracy its post-training INT8 loses? (issue 28; each runtime in its environment, which
`make test-ondevice` makes)

    .venv-executorch/bin/python benchmarks/qat_phone.py executorch runs/qat/v3s/last.safetensors \
        --images 20000 --name qat_executorch_v3_small

For one checkpoint, on its training data's test split, every program a file run by the runtime's
own Python runtime (ExecuTorch's, with XNNPACK as on a phone), at a fixed batch:
* fp32: the checkpoint converted as `mobilenet export --format executorch` does;
* PTQ: the runtime's PT2E quantizer (XNNPACKQuantizer: per-channel symmetric int8 weights, int8
  activations) calibrated on training images, as `export --int8` does;
* QAT: the same quantizer in its QAT configuration, the fine-tuning of `mobilenet qat` (its schedule,
  weight-decay groups and options), converted; compared with the original fp32 file (what a user
  compares) and with the converted PT2E program it was made from (what the file must compute).
Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mobilenet.bench import environment
from mobilenet.checkpoint import load_checkpoint
from mobilenet.data import make_loader
from mobilenet.export import load_split, sample_images, training_data
from mobilenet.export.int8 import compare
from mobilenet.export.phone_common import quiet
from mobilenet.files import temporary_folder, write_json, write_text
from mobilenet.train import qat

RESULTS = Path(__file__).resolve().parent / "results"


class ExecuTorch:
    suffix, name = ".pte", "ExecuTorch (XNNPACK)"

    def __init__(self) -> None:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                             get_symmetric_quantization_config)
        from mobilenet.export import pte

        self.pte = pte
        self.quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                         is_qat=True))
        self.session = pte.PteSession

    def export(self, model, batch: int, resolution: int, calibration=None) -> bytes:
        return self.pte.lower(model, batch, resolution, calibration)

    def convert(self, program: torch.fx.GraphModule, example: torch.Tensor) -> bytes:
        return self.pte.program_bytes(program, example)


# LiteRT is not here: litert-torch 0.10's QAT annotation (PT2EQuantizer with is_qat) hands torch.export
# a pattern function, which torch 2.13 refuses ("Expected `mod` to be an instance of torch.nn.Module"),
# so its QAT cannot run beside this torch; its PTQ (no conv-BN pattern once BatchNorm is folded) does.
RUNTIMES = {"executorch": ExecuTorch}


def row(runtime: str, method: str, agreement: float, fp32_top1: float, int8_top1: float, images: int,
        **extra) -> dict:
    return {"method": method, "runtime": runtime, "fp32_top1": fp32_top1, "int8_top1": int8_top1,
            "drop": fp32_top1 - int8_top1, "agreement": agreement, "images": images, **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runtime", choices=sorted(RUNTIMES))
    parser.add_argument("checkpoint")
    parser.add_argument("--name", default=None, help="results file stem (default qat_RUNTIME)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--batch", type=int, default=32, help="the programs' fixed batch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--images", type=int, default=None, help="training images per QAT epoch")
    parser.add_argument("--lr", type=float, default=qat.QatOptions.lr)
    parser.add_argument("--calibration-images", type=int, default=512)
    args = parser.parse_args(argv)
    with quiet():
        runtime = RUNTIMES[args.runtime]()

    options = qat.QatOptions(epochs=args.epochs, images=args.images, lr=args.lr,
                             calibration_images=args.calibration_images)
    model, meta = load_checkpoint(args.checkpoint, with_meta=True)
    source = training_data(meta, args.checkpoint)
    train_set, test_set = load_split(source, "train", meta), load_split(source, "test", meta)
    stats = dict(mean=meta.mean, std=meta.std)
    train_loader = make_loader(train_set, options.batch_size, train=True, seed=options.seed, **stats)
    test_loader = make_loader(test_set, args.batch, train=False, **stats)  # the last batch padded: PhoneSession
    calibration = sample_images(train_set, options.calibration_images, meta=meta)
    example = torch.zeros(model.config.input_shape(args.batch, meta.resolution))
    rows, start = [], time.perf_counter()
    with temporary_folder("qat-phone") as work:
        fp32_path, ptq_path, qat_path = (work / f"{stem}{runtime.suffix}" for stem in ("fp32", "ptq", "qat"))
        with quiet():
            fp32_path.write_bytes(runtime.export(model, args.batch, meta.resolution))
            ptq_path.write_bytes(runtime.export(model, args.batch, meta.resolution, calibration))
        fp32 = runtime.session(fp32_path)
        rows.append(row(args.runtime, "PTQ", *compare(fp32, runtime.session(ptq_path), test_loader)))
        print(json.dumps(rows[-1]), flush=True)
        torch.manual_seed(options.seed)
        traced = qat.build_like(model, meta)
        with quiet():
            prepared = qat.prepare(traced, calibration[:2], runtime.quantizer)
        epochs = qat.fine_tune(prepared, traced, train_loader, options, progress=False, say=print)
        with quiet():
            program = qat.convert(prepared)
            program.eval()
            qat_path.write_bytes(runtime.convert(program, example))
        int8 = runtime.session(qat_path)
        program_agreement, program_top1, _, _ = compare(qat.ProgramSession(program), int8, test_loader)
        rows.append(row(args.runtime, "QAT", *compare(fp32, int8, test_loader), program_agreement=program_agreement,
                        program_top1=program_top1))
        print(json.dumps(rows[-1]), flush=True)
    name = args.name or f"qat_{args.runtime}"
    result = {"command": "python " + " ".join(sys.argv), "runtime": args.runtime, "checkpoint": args.checkpoint,
              "data": source.data, "batch": args.batch, "options": asdict(options),
              "epochs": epochs, "rows": rows, "minutes": (time.perf_counter() - start) / 60,
              "environment": environment(torch.get_num_threads())}
    results = Path(args.results)
    write_json(results / f"{name}.json", result)
    versions = result["environment"]["versions"]
    lines = [f"# {runtime.name} INT8: PTQ against QAT, {args.checkpoint}", "",
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
