"""The `mobilenet` command line: it parses, calls the library, and prints. Nothing else lives here.

Usage and input errors end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Callable, Sequence

from mobilenet import bench
from mobilenet.bench import parse_runtimes
from mobilenet.bench.latency import AGREEMENT_IMAGES
from mobilenet.bench.latency import RUNTIMES as BENCH_RUNTIMES
from mobilenet.checkpoint import load_checkpoint, refuse_replacing_ours
from mobilenet.checks import comma_list, some, whole_number
from mobilenet.convert import convert, download
from mobilenet.cost import check_model_resolution, cost
from mobilenet.data import make_loader
from mobilenet.data.load import split_name
from mobilenet.data.memory import CHANNELS
from mobilenet.evaluate import evaluate, predict_files
from mobilenet.export import (FORMATS, SUFFIXES, DataSource, export_checkpoint, resolve_runtime, runtime_model,
                              sample_images, training_data)
from mobilenet.export.guard import MIN_AGREEMENT, check_min_agreement
from mobilenet.export.runtime import RUNTIMES
from mobilenet.files import Terminated, check_output_path, clean_up_on_termination, file_digest, refuse_overwrite
from mobilenet.models import MODELS
from mobilenet.models.layers import check_num_classes, check_width
from mobilenet.optional import MissingPackage
from mobilenet.paper import comparison_tables
from mobilenet.study import check_study, run_study, write_report
from mobilenet.train import TrainConfig, train
from mobilenet.train.qat import RUNTIMES as QAT_RUNTIMES
from mobilenet.train.qat import QatOptions, quantization_aware

# mobilenet.plots is imported where a command draws: it imports matplotlib (0.4 s), which most commands never need

EXIT_USAGE = 2
RUNTIME_HELP = ("where the model runs: auto (default): the fastest measured here among those installed (fp32 ones "
                "checked against PyTorch; bf16 and INT8 ones only if their top-1 agreement with fp32 on the model's "
                "own data passes --min-agreement), decided once and cached; onnxruntime; openvino (fp32); pytorch "
                "(--backend is the old name, kept for one release)")
AGREEMENT_HELP = (f"the share of the model's test images on which a bf16 or INT8 model must give fp32's top-1 class "
                  f"(default {MIN_AGREEMENT:g}; the same guard in export, eval, predict and bench)")
PRECISION_HELP = ("with --backend auto: any (default) lets bf16 and INT8 compete where they agree with fp32; "
                  "fp32 measures the fp32 runtimes only (the checkpoint's own accuracy, to the 1e-4 check)")


class UsageError(Exception):
    """Raised by the parser instead of exiting, so that every error is printed the same way."""


class Parser(argparse.ArgumentParser):
    """One-line errors, and no abbreviated flags: `--data` is not silently taken for `--data-root`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):  # one line, no usage block
        raise UsageError(f"{self.prog}: error: {message}")


def _argtype(check: Callable, convert: Callable) -> Callable:
    """An argparse type that converts a string, then validates it with the library's own check."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = text
        try:
            return check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _positive_int(name: str) -> Callable:
    return _argtype(lambda value: whole_number(value, name), int)


def _at_least_zero(name: str) -> Callable:
    return _argtype(lambda value: whole_number(value, name, minimum=0), int)


width_arg = _argtype(check_width, float)
agreement_arg = _argtype(check_min_agreement, float)
classes_arg = _argtype(check_num_classes, int)
resolution_arg = _positive_int("resolution")


def cmd_models(args: argparse.Namespace) -> int:
    width = max(map(len, MODELS)) + 1
    for name in sorted(MODELS):
        doc = (MODELS[name].__doc__ or "").strip().splitlines()[0]
        print(f"{name:<{width}} {doc}")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    report = cost(args.model, args.resolution, width_mult=args.width, num_classes=args.num_classes,
                  small_input=args.small_input, in_chans=args.in_chans)
    print(json.dumps(report.to_dict()) if args.json else report.format())
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    print(comparison_tables())
    return 0


def _seeds(text: str) -> str:
    """--seeds: comma-separated whole numbers >= 0 (kept as text; the study parses it)."""
    parts = text.split(",")
    if not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"--seeds takes seeds >= 0 separated by commas, e.g. 0,1,2, not {text!r}")
    return text


def train_options() -> list[tuple[str, object]]:
    """(flag, field) of every TrainConfig field that is a command-line option (its metadata has help)."""
    return [(f.metadata["flag"] or "--" + f.name.replace("_", "-"), f) for f in fields(TrainConfig)
            if f.metadata.get("help")]


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, its type, choices and default read from the field."""
    hints = typing.get_type_hints(TrainConfig)
    for flag, f in train_options():
        meta = f.metadata
        shown = meta["shown"] or ("none" if f.default is None else f"{f.default:g}" if isinstance(f.default, float)
                                  else f.default)
        if hints[f.name] is bool:  # a switch that turns the default over
            parser.add_argument(flag, dest=f.name, action="store_const", const=not f.default, default=None,
                                help=meta["help"])
            continue
        if set(typing.get_args(hints[f.name])) == {bool, type(None)}:  # decided from the data unless switched
            parser.add_argument(flag, dest=f.name, action="store_const", const=True, default=None,
                                help=f"{meta['help']} (default: {shown}; --no-{flag[2:]} for off)")
            parser.add_argument(f"--no-{flag[2:]}", dest=f.name, action="store_const", const=False,
                                help=argparse.SUPPRESS)
            continue
        kind = meta["parse"] or next(t for t in (int, float, str) if t in typing.get_args(hints[f.name]) + (hints[f.name],))
        parser.add_argument(flag, dest=f.name, type=_argtype(kind, str), default=None, choices=meta["choices"],
                            help=f"{meta['help']} (default: {shown})")


def cmd_train(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for _, f in train_options() if getattr(args, f.name) is not None}
    epochs = given.pop("epochs", None) if args.resume else None  # --resume --epochs N: a longer (or shorter) run
    if args.resume and given:
        raise ValueError(f"--resume continues the run in {args.out} as it was configured (only --epochs may change "
                         f"its length): drop {', '.join(sorted(given))}, or start a new run in another --out")
    config = TrainConfig(out=args.out, **given)
    metrics = train(config, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress,
                    epochs=epochs)
    if metrics and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
        held_out = (f"{metrics.get('test_split', 'test')} top-1 {100 * metrics['test_top1']:.2f}%"
                    if "test_top1" in metrics else "not evaluated at this epoch (--eval-every)")
        print(f"done: {held_out} after {metrics['epoch']} epochs ({metrics.get('pflop', 0):.4g} PFLOP of training); "
              f"run directory {args.out} (checkpoints, metrics.jsonl, curves.png)")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    check_study(args.name)
    if args.report:
        given = {f.name for _, f in train_options() if getattr(args, f.name) is not None}
        if given or args.seeds or args.shard:
            raise ValueError("--report merges finished study folders: it trains nothing, so it takes no training "
                             "options, --seeds or --shard")
        written = write_report(args.name, [Path(folder) for folder in args.report], Path(args.out or args.report[0]))
    else:
        if not args.out:
            raise ValueError("give --out DIR: the study's folder (each point a run folder in it)")
        options = {f.name: getattr(args, f.name) for _, f in train_options() if getattr(args, f.name) is not None}
        data = options.pop("data", None)
        if data is None:
            raise ValueError("give --data: the dataset the study trains and measures on")
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else None
        written = run_study(args.name, data, args.out, seeds=seeds, shard=args.shard, options=options,
                            progress=not args.no_progress)
    print("study written: " + ", ".join(str(path) for path in written))
    return 0


def _checkpoint_and_data_classes(meta, dataset, path: str) -> None:
    if list(dataset.classes) != list(meta.classes):
        raise ValueError(f"checkpoint {path} was trained on {len(meta.classes)} classes ({some(meta.classes)}) "
                         f"but the data has {len(dataset.classes)} ({some(dataset.classes)})")


def _check_plot(plot, checkpoint: str, given: bool) -> None:
    """Before any work: the confusion plot must not replace the checkpoint (or any of ours), and
    its folder must be writable (the default is beside the checkpoint, which may be read-only)."""
    refuse_overwrite(plot, {"checkpoint": checkpoint})
    refuse_replacing_ours(plot)
    try:
        check_output_path(plot)
    except PermissionError as error:
        raise PermissionError(f"{error}{'' if given else '; pass --plot FILE to write the confusion matrix elsewhere'}") from None


def cmd_eval(args: argparse.Namespace) -> int:
    from mobilenet.plots import plot_confusion, readable

    runtime = resolve_runtime(args.runtime)
    plot = Path(args.plot) if args.plot else Path(args.checkpoint).with_suffix(".confusion.png")
    _check_plot(plot, args.checkpoint, given=args.plot is not None)
    model, meta = load_checkpoint(args.checkpoint, with_meta=True)
    if args.data is None:  # the checkpoint's own data, as its training run recorded it
        source = training_data(meta, args.checkpoint)
        if source is None:
            raise ValueError(f"{args.checkpoint} does not record the data it was trained on: pass --data")
        args.data, args.data_root = source.data, args.data_root or source.root
        args.classes = args.classes or (list(source.classes) if source.classes else None)
    source = DataSource(args.data, args.data_root, tuple(args.classes) if args.classes else None, "--data")
    dataset = source.load(args.split, meta)
    _checkpoint_and_data_classes(meta, dataset, args.checkpoint)
    split = split_name(dataset, args.split)
    if not len(dataset):
        raise ValueError(f"the {split} split of {args.data} holds no images: nothing to evaluate")
    extra = {}
    if runtime == "auto" and args.precision == "any":  # the model's own data: bf16/INT8 may compete, judged on it
        extra = _own_images(meta, dataset, args.checkpoint, source, args.batch_size)
    elif runtime == "auto":
        extra = {"model_id": _file_id(args.checkpoint), "batch": args.batch_size}
    said: list[str] = []  # what `auto` chose and why: reported with the results
    fast, runtime = runtime_model(model, meta.resolution, runtime, say=said.append, min_agreement=args.min_agreement,
                                  **extra)
    loader = make_loader(dataset, args.batch_size, train=False, workers=args.workers,
                         channels_last=runtime == "pytorch", mean=meta.mean, std=meta.std)
    result = evaluate(fast, loader, len(meta.classes), progress=not args.json)
    plot_confusion(result.confusion, meta.classes, plot, title=f"{Path(args.checkpoint).name} on {args.data} ({split})")
    if args.json:
        print(json.dumps({**result.to_dict(meta.classes), "checkpoint": args.checkpoint, "data": args.data, "split": split,
                          "runtime": runtime, "runtime_choice": said[0] if said else None,
                          "confusion_png": str(plot)}))
        return 0
    print(f"{args.checkpoint} on {args.data} ({split}, {result.num_images} images, {runtime})")
    for line in said:
        print(line)
    top5 = f"top-5 {100 * result.top5:.2f}%  " if len(meta.classes) > 5 else ""  # of 5 classes or fewer: always 100%
    print(f"top-1 {100 * result.top1:.2f}%  {top5}loss {result.loss:.4f}")
    names = [readable(name) for name in meta.classes]
    width = max(len(c) for c in names)
    for name, acc in zip(names, result.per_class):
        print(f"  {name:<{width}}  {100 * acc:6.2f}%")
    print(f"confusion matrix: {plot}")
    return 0


def _file_id(path: str) -> str:
    return file_digest(path, "sha256")


def _own_images(meta, dataset, checkpoint: str, source, batch: int) -> dict:
    """What `runtime_model(..., "auto")` needs to let bf16 and INT8 compete on the model's own data
    (`source`, a DataSource): some of `dataset`'s images (for the agreement), training images (for
    INT8 calibration), the batch."""
    images = sample_images(dataset, AGREEMENT_IMAGES, meta=meta)
    try:
        calibration = sample_images(source.load("train", meta), 256, seed=1, meta=meta)
    except (OSError, ValueError):
        calibration = images
    return {"images": images, "calibration": calibration, "batch": batch, "model_id": _file_id(checkpoint)}


def cmd_predict(args: argparse.Namespace) -> int:
    from mobilenet.plots import readable

    runtime = resolve_runtime(args.runtime)
    model, meta = load_checkpoint(args.checkpoint, with_meta=True)
    missing = [path for path in args.images if not os.path.exists(path)]
    if len(missing) == len(args.images):  # nothing to answer: said before the runtimes are set up (seconds)
        raise FileNotFoundError(f"no image file {missing[0]}" + (f" (nor {len(missing) - 1} others)" if len(missing) > 1
                                                                 else ""))
    if meta.config.in_chans not in CHANNELS:
        raise ValueError(f"{args.checkpoint} takes images of {meta.config.in_chans} channels; predict reads image "
                         "files as RGB (3 channels) or grey (1)")
    extra = {"model_id": _file_id(args.checkpoint)} if runtime == "auto" else {}  # fp32 candidates only
    source = training_data(meta, args.checkpoint) if runtime == "auto" and args.precision == "any" else None
    if source is not None:  # its data is known: bf16/INT8 may compete, judged on it
        try:
            extra = _own_images(meta, source.load("test", meta), args.checkpoint, source, 1)
        except (OSError, ValueError):  # not found on this machine
            pass
    fast, _ = runtime_model(model, meta.resolution, runtime, say=None if args.json else print,
                            min_agreement=args.min_agreement, **extra)
    results = predict_files(fast, args.images, meta.resolution, meta.mean, meta.std, meta.classes,
                            args.top_k, crop_fraction=meta.crop_fraction)
    failed = [item for item in results if "error" in item]
    if args.json:
        print(json.dumps(results))
    for item in results:
        if "error" in item:
            print(f"mobilenet: error: {readable(_one_line(ValueError(item['error'])))}", file=sys.stderr)
        elif not args.json:
            best = ", ".join(f"{readable(p['class'])} {100 * p['probability']:.1f}%" for p in item["predictions"])
            print(f"{item['image']}: {best}")
    return EXIT_USAGE if failed else 0


def cmd_convert(args: argparse.Namespace) -> int:
    source = args.source
    if args.download:
        if source:
            raise ValueError("give either a SOURCE file or --download NAME, not both")
        source = download(args.source_format, args.download, args.download_dir)
    elif not source:
        raise ValueError("give a SOURCE file to convert, or --download NAME to fetch one first")
    meta = convert(source, args.source_format, args.output)
    config = meta.config
    print(f"wrote {args.output}: {config.name} width {config.width_mult:g}, {len(meta.classes)} classes, "
          f"activation {config.activation}, BatchNorm eps {config.bn_eps:g}, padding {config.padding} "
          f"(from {args.source_format} {source})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    report = export_checkpoint(args.checkpoint, args.output, args.format, int8=args.int8,
                               calibration_data=args.calibration_data, data_root=args.data_root,
                               calibration_images=args.calibration_images, batch=args.batch_size,
                               min_agreement=args.min_agreement, force=args.force)
    if args.json:
        print(json.dumps(report))
        return 0
    format = report["format"]
    beside = {"openvino": f" and its weights {os.path.splitext(args.output)[0]}.bin",
              "executorch": f" and its metadata {args.output}.json"}.get(format, "")
    fixed = f", batch fixed at {report['batch']}" if "batch" in report else ""
    print(f"wrote {args.output}{beside} ({report['bytes'] / 1e6:.2f} MB, {format}{', int8' if args.int8 else ''}"
          f"{fixed})")
    if "validated" in report:  # Core ML: no runtime on this system
        print(report["validated"])
        return 0
    check = report["fp32_check"] if args.int8 else report["check"]
    print(f"checked against PyTorch on {check['inputs']}, batch sizes {check['batch_sizes'][0]} and "
          f"{check['batch_sizes'][1]}: max |logit difference| {check['max_abs_diff']:.2e}"
          + (" (fp32, before quantization)" if args.int8 else ""))
    if args.int8:
        print(f"int8 against fp32 on {report['data']} test ({report['images']} images): top-1 agreement "
              f"{100 * report['agreement']:.2f}%, accuracy fp32 {100 * report['fp32_top1']:.2f}% / int8 "
              f"{100 * report['int8_top1']:.2f}%; calibrated on {report['calibration_images']} training images; "
              f"{report['fp32_bytes'] / 1e6:.2f} MB -> {report['int8_bytes'] / 1e6:.2f} MB")
    return 0


def cmd_qat(args: argparse.Namespace) -> int:
    options = QatOptions(**{f.name: getattr(args, f.name) for f in fields(QatOptions)})
    say = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    report = quantization_aware(args.checkpoint, args.out, options, data=args.data, data_root=args.data_root,
                                min_agreement=args.min_agreement, force=args.force, progress=not args.json,
                                runtime=args.runtime, pte_batch=args.pte_batch, say=say)
    if args.json:
        print(json.dumps(report))
        return 0
    ir = any(row["runtime"] == "openvino" for row in report["rows"])
    files = (f"int8.pte (batch {args.pte_batch})" if args.runtime == "executorch"
             else f"int8.onnx{', int8.xml/.bin' if ir else ''}")
    print(f"wrote {args.out}: {files}, qat.safetensors (the fine-tuned float weights), report.json")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    options = dict(batch=args.batch, runtimes=args.runtime, threads=args.threads, iterations=args.iterations,
                   warmup=args.warmup)
    progress = None if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    if args.sweep:
        if args.width is not None or args.resolution is not None:
            raise ValueError("--sweep measures the paper's grid of widths and resolutions: drop --width and --resolution")
        if bench.is_checkpoint(args.model):
            raise ValueError(f"the sweep builds the grid's models by name; {args.model} is a checkpoint")
        bench.sweep_outputs(args.output, args.model, args.batch)  # checked before the minutes of measuring
        result = bench.sweep(args.model, progress=progress, **options)
        paths = bench.write_sweep(result, args.output)
        print(json.dumps({**result, "files": [str(p) for p in paths]}) if args.json else
              bench.sweep_table(result) + "\nwritten: " + ", ".join(map(str, paths)))
        return 0

    model, resolution = bench.build(args.model, width=args.width)
    resolution = check_model_resolution(args.resolution or resolution or 224, model)
    data_images = bench.checkpoint_images(args.model, resolution) if bench.is_checkpoint(args.model) else None
    report = bench.measure(model, resolution=resolution, progress=progress, data_images=data_images,
                           min_agreement=args.min_agreement, **options)
    print(json.dumps(report) if args.json else bench.format_report(report))
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="mobilenet", description="MobileNet V1 to V4: models, cost, training, export.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("cost", help="per-layer mult-adds and parameters of a model")
    p.add_argument("model", help="a model name (see `mobilenet models`)")
    p.add_argument("--width", type=width_arg, default=1.0, help="width multiplier alpha in (0, 4] (default 1)")
    p.add_argument("--resolution", type=resolution_arg, default=224, help="input side in pixels (default 224)")
    p.add_argument("--num-classes", type=classes_arg, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--small-input", action="store_true", help="the 32x32 (CIFAR) variant: less early down-sampling")
    p.add_argument("--in-chans", type=_positive_int("--in-chans"), default=3,
                   help="input channels: 3 for RGB (default), 1 for grayscale")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_cost)

    p = sub.add_parser("tables", help="the papers' cost tables side by side with ours")
    p.set_defaults(run=cmd_tables)

    p = sub.add_parser("train", help="train a model; writes checkpoints, metrics and plots to --out")
    add_train_options(p)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--stop-after", type=_positive_int("--stop-after"), default=None,
                   help="stop after this many epochs of this invocation (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("study", help="the V1 paper's experiments (Tables 4-7, Figures 4-5), V1 against V2 and the "
                                     "four versions at one cost, trained and measured on a dataset")
    p.add_argument("name", help="table4, table5, table6, table7, figure4, v1-v2 or families")
    p.add_argument("--out", help="the study's folder: one run folder per point and seed, the table and PNGs")
    p.add_argument("--seeds", type=_seeds, help="comma-separated seeds, e.g. 0,1,2 (default 0); more seeds add "
                                                "runs, and the table shows their mean and spread")
    p.add_argument("--shard", help="K/N: train only every N-th run from the K-th (one machine's share)")
    p.add_argument("--report", nargs="+", metavar="DIR", help="merge these study folders into one table "
                                                              "(written in --out, default the first)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_train_options(p)
    p.set_defaults(run=cmd_study)

    p = sub.add_parser("eval", help="top-1, top-5, loss, per-class accuracy and a confusion-matrix PNG")
    p.add_argument("checkpoint", help="a checkpoint (.safetensors) written by train or convert")
    p.add_argument("--data", default=None, help="as for train (default: the data the checkpoint's run trained on)")
    p.add_argument("--data-root", default=None, help="as for train (default: the checkpoint's, or $MOBILENET_DATA "
                                                     "or ~/.cache/mobilenet)")
    p.add_argument("--classes", type=_argtype(comma_list, str), default=None, help="as for train")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="the held-out split (default; val and test name it), or train")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=256, help="images per call (default 256)")
    p.add_argument("--workers", type=_at_least_zero("--workers"), default=2, help="image decoding processes (default 2)")
    p.add_argument("--plot", default=None, help="confusion-matrix PNG (default: beside the checkpoint)")
    p.add_argument("--runtime", "--backend", dest="runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    p.add_argument("--precision", default="any", choices=["any", "fp32"], help=PRECISION_HELP)
    p.add_argument("--min-agreement", type=agreement_arg, default=None, help=AGREEMENT_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("predict", help="class names and probabilities for image files")
    p.add_argument("checkpoint", help="a checkpoint (.safetensors) written by train or convert")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--top-k", type=_positive_int("--top-k"), default=5, help="classes to show per image (default 5)")
    p.add_argument("--runtime", "--backend", dest="runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    p.add_argument("--precision", default="any", choices=["any", "fp32"], help=PRECISION_HELP)
    p.add_argument("--min-agreement", type=agreement_arg, default=None, help=AGREEMENT_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("convert", help="import published weights (torchvision, timm, Keras) as our checkpoint")
    p.add_argument("source", nargs="?", default=None, help="a .pth, .safetensors, .h5 or .keras file")
    p.add_argument("--from", dest="source_format", required=True, choices=["torchvision", "timm", "keras"],
                   help="the implementation that wrote SOURCE")
    p.add_argument("--output", required=True, help="the checkpoint to write")
    p.add_argument("--download", default=None, metavar="NAME",
                   help="fetch the named published file from its official URL first (checksum verified)")
    p.add_argument("--download-dir", default=".", help="where --download saves the file (default: here)")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("export", help="write a checkpoint for a server (ONNX, OpenVINO, torch.export) or a phone "
                                      "(ExecuTorch, LiteRT, Core ML), fp32 or INT8, checked")
    p.add_argument("checkpoint", help="a checkpoint (.safetensors) written by train or convert")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="what --output's suffix names (" + ", ".join(f"{s}: {f}" for f, s in SUFFIXES.items())
                        + "); if given, it must agree. openvino writes NAME.xml and its weights NAME.bin, executorch "
                          "NAME.pte and its metadata NAME.pte.json")
    p.add_argument("--output", required=True, help="the file to write (replaced only once it has been checked; "
                                                   "its suffix decides the format)")
    p.add_argument("--int8", action="store_true", help="quantize to INT8, calibrated on real images (not pt2; Core "
                                                       "ML: int8 weights)")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=1,
                   help="images per call, fixed in a phone file (executorch, tflite, coreml; default 1)")
    p.add_argument("--calibration-data", default=None,
                   help="data for the check and INT8 calibration, as for train "
                        "(default: the data the checkpoint's training run recorded in it)")
    p.add_argument("--data-root", default=None, help="as for train")
    p.add_argument("--calibration-images", type=_positive_int("--calibration-images"), default=256,
                   help="training images to calibrate INT8 on (default 256)")
    p.add_argument("--min-agreement", type=agreement_arg, default=None, help=AGREEMENT_HELP)
    p.add_argument("--force", action="store_true", help="write an INT8 file below --min-agreement anyway, with a warning")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_export)

    qat = QatOptions()
    p = sub.add_parser("qat", help="quantization-aware training: fine-tune a checkpoint with INT8 simulated, write "
                                   "its INT8 ONNX (and OpenVINO) files or ExecuTorch program, and compare with "
                                   "post-training INT8")
    p.add_argument("checkpoint", help="a trained checkpoint (.safetensors)")
    p.add_argument("--out", required=True, help="a new folder (or one without QAT files) for int8.onnx and int8.xml/.bin "
                                                "(or int8.pte), qat.safetensors and report.json")
    p.add_argument("--epochs", type=_positive_int("--epochs"), default=qat.epochs,
                   help=f"fine-tuning epochs (default {qat.epochs}; from 2, the last one freezes the observers "
                        "and BatchNorm)")
    p.add_argument("--lr", type=float, default=qat.lr, help=f"peak learning rate, decayed to 0 (default {qat.lr:g})")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=qat.batch_size,
                   help=f"default {qat.batch_size}")
    p.add_argument("--images", type=_positive_int("--images"), default=None,
                   help="training images per epoch, a new random subset each epoch (default: all of them)")
    p.add_argument("--weight-decay", type=float, default=qat.weight_decay, help=f"default {qat.weight_decay:g}")
    p.add_argument("--label-smoothing", type=float, default=qat.label_smoothing,
                   help=f"default {qat.label_smoothing:g}")
    p.add_argument("--seed", type=int, default=qat.seed, help=f"default {qat.seed}")
    p.add_argument("--data", default=None,
                   help="the data to fine-tune and test on, as for train (default: the checkpoint's training data)")
    p.add_argument("--data-root", default=None, help="as for train")
    p.add_argument("--calibration-images", type=_positive_int("--calibration-images"), default=qat.calibration_images,
                   help=f"training images the post-training INT8 baseline is calibrated on (default {qat.calibration_images})")
    p.add_argument("--runtime", choices=QAT_RUNTIMES, default=QAT_RUNTIMES[0],
                   help="whose INT8 scheme the fine-tuning simulates and which files it writes: onnxruntime "
                        "(int8.onnx, and int8.xml/.bin for OpenVINO when installed) or executorch (int8.pte, "
                        "XNNPACK's quantizer; needs executorch)")
    p.add_argument("--pte-batch", type=_positive_int("--pte-batch"), default=1,
                   help="with --runtime executorch: the program's fixed batch, as export --batch-size (default 1)")
    p.add_argument("--min-agreement", type=agreement_arg, default=None, help=AGREEMENT_HELP)
    p.add_argument("--force", action="store_true", help="write the INT8 files below --min-agreement anyway, with a warning")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_qat)

    p = sub.add_parser("bench", help="inference latency and throughput per runtime, measured in one run")
    p.add_argument("model", help="a model name (random weights) or a checkpoint")
    p.add_argument("--width", type=width_arg, default=None, help="width multiplier for a model name (default 1)")
    p.add_argument("--resolution", type=resolution_arg, default=None,
                   help="input side in pixels (default: the checkpoint's, or 224)")
    p.add_argument("--batch-size", "--batch", dest="batch", type=_positive_int("--batch-size"), default=1,
                   help="images per call (default 1; --batch is the old name, kept for one release)")
    p.add_argument("--runtime", "--backend", dest="runtime", type=_argtype(parse_runtimes, str), default=None,
                   help="comma-separated names, or all (the default): " + ",".join(BENCH_RUNTIMES) +
                   " (--backend is the old name, kept for one release)")
    p.add_argument("--threads", type=_positive_int("--threads"), default=None, help="threads (default: torch's)")
    p.add_argument("--iterations", type=_positive_int("--iterations"), default=30,
                   help="timed calls per runtime (default 30)")
    p.add_argument("--warmup", type=_positive_int("--warmup"), default=5, help="untimed calls per runtime (default 5)")
    p.add_argument("--sweep", action="store_true",
                   help="the paper's 16 models (width 1, 0.75, 0.5, 0.25 x resolution 224, 192, 160, 128)")
    p.add_argument("--output", default=".", help="folder for the sweep's JSON, table and plot (default: here)")
    p.add_argument("--min-agreement", type=agreement_arg, default=None, help=AGREEMENT_HELP + "; the auto row")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_bench)
    return parser


def _one_line(error: BaseException) -> str:
    """The error's own message on one line. An error raised in a DataLoader worker arrives with
    the worker's traceback in its message: its last line is the original error."""
    lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    if len(lines) > 1 and "Traceback" in str(error):
        last = lines[-1]
        return last.split(": ", 1)[1] if last.startswith(type(error).__name__ + ":") else last
    return " ".join(line.strip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    clean_up_on_termination()
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UsageError as error:
        print(error, file=sys.stderr)
    except (ValueError, OSError, MissingPackage) as error:
        from mobilenet.plots import readable

        print(f"mobilenet: error: {readable(_one_line(error))}", file=sys.stderr)
    except KeyboardInterrupt as interrupt:
        print(f"mobilenet: {'stopped by ' + str(interrupt) if isinstance(interrupt, Terminated) else 'interrupted'}; "
              "a training run keeps its last finished epoch (continue with --resume)", file=sys.stderr)
        return 128 + interrupt.signum if isinstance(interrupt, Terminated) else 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
