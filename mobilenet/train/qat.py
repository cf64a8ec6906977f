"""Quantization-aware training (QAT): a trained checkpoint fine-tuned with INT8 simulated in its
forward pass, then written as INT8 files with the scales the fine-tuning measured.

Why a command of its own (`mobilenet qat CHECKPOINT --out DIR`) and not `train --qat`: QAT starts
from a trained model and runs briefly at a small learning rate (torchvision's reference scripts
give it a script of its own, TensorFlow's model optimization toolkit a function applied to a
trained Keras model), and what it trains is a traced program with fake-quantization nodes, to
which the trainer's fused kernels, channels-last layout, bf16 steps and distributed wrapping do
not apply.

The flow is PyTorch's PT2E (`torchao.quantization.pt2e`, where torch.ao's PT2E moved): the model is
traced by `torch.export` in training mode; `prepare_qat_pt2e` with the x86 quantizer's QAT
configuration: per-channel symmetric int8 weights and per-tensor uint8 activations, the scheme of
`mobilenet export --int8`'s ONNX Runtime files, so that post-training quantization (PTQ) and QAT
compare like for like (where the CPU's integer kernels saturate, `integer_kernels_saturate`, the
weights take 7 bits, as the PTQ file's do); BatchNorm folded into the fake-quantized weights. After
the fine-tuning, `convert_pt2e`, and the ONNX exporter (dynamo) writes its
QuantizeLinear/DequantizeLinear pairs as they are, with the scales of the QAT.

The schedule is torchvision's QAT recipe shortened to a small dataset's epochs: SGD with Nesterov
momentum 0.9, the trainer's weight-decay groups (none on depthwise filters), a cosine decay from
`lr` to zero; the observers update and BatchNorm uses batch statistics in every epoch but the
last, in which the observers are frozen and BatchNorm (and dropout) run in evaluation mode. With
one epoch nothing is frozen.

`--runtime executorch` trains for ExecuTorch instead: ExecuTorch's own PT2E quantizer (XNNPACK's:
per-channel symmetric int8 weights, int8 activations) in its QAT configuration, so the fake
quantization trained through is the one the phone runs, compared with that quantizer's PTQ `.pte`
(as `mobilenet export --format executorch --int8` writes it); the programs run by ExecuTorch's own
runtime. (LiteRT has no such option: litert-torch 0.10's QAT annotation hands torch.export a
function, which this torch refuses; its PTQ works, `mobilenet export --format tflite --int8`.)

What DIR (new, or empty) receives, all at once after every check has passed (`OUTPUTS`):
  int8.onnx           the QAT model as an INT8 QDQ file (dynamic batch, the checkpoint's metadata)
  int8.xml, int8.bin  the same model as an OpenVINO IR (when openvino is installed)
  int8.pte            instead of those three with --runtime executorch: the QAT model as an
                      ExecuTorch program, XNNPACK-delegated, at a fixed batch (--pte-batch)
  qat.safetensors     the fine-tuned float weights, a checkpoint like any other (`mobilenet export`
                      writes the phone formats from it, each calibrated after training)
  report.json         PTQ and QAT side by side on the test split: fp32 and INT8 top-1, top-1
                      agreement with fp32, per runtime

Each QAT file must agree with the PT2E program it was written from (PyTorch's INT8 arithmetic) on
the test split's top-1 (the accuracy guard, `mobilenet.export.guard`): that is what the file claims
to compute. Its agreement with the original fp32 model is reported, not guarded: QAT fine-tunes the
model, and a changed prediction may be a fine-tuning's as well as a rounding's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mobilenet.checkpoint import build_from_meta, load_checkpoint, save_model_state
from mobilenet.checks import whole_number
from mobilenet.data import make_loader
from mobilenet.export import CALIBRATION_IMAGES, CHECK_IMAGES, DataSource, load_split, sample_images, training_data
from mobilenet.export import openvino
from mobilenet.export.fold import inference_model
from mobilenet.export.guard import check_min_agreement, guard
from mobilenet.export.int8 import compare, integer_kernels_saturate, quantize
from mobilenet.export.onnx import add_metadata, check_against, metadata, session, to_onnx
from mobilenet.export.phone_common import quiet
from mobilenet.files import atomic_folder, refuse_special, temporary_folder, write_json
from mobilenet.machine import cpu_flags, cpu_name
from mobilenet.optional import available, require
from mobilenet.train.optim import parameter_groups

INT8_ONNX, IR_XML, IR_BIN, WEIGHTS, REPORT = "int8.onnx", "int8.xml", "int8.bin", "qat.safetensors", "report.json"
INT8_PTE = "int8.pte"
# whose quantizer the fake quantization is, and the files written for it (the IR where openvino is installed)
FILES = {"onnxruntime": (INT8_ONNX, IR_XML, IR_BIN, WEIGHTS, REPORT), "executorch": (INT8_PTE, WEIGHTS, REPORT)}
RUNTIMES = tuple(FILES)
OUTPUTS = tuple(dict.fromkeys(name for files in FILES.values() for name in files))  # what a folder must not hold
EVAL_BATCH = 64


@dataclass(frozen=True)
class QatOptions:
    """The fine-tuning's options, with the defaults `mobilenet qat` shows (not tuned: the
    Fashion-MNIST runs made with them are in benchmarks/results/qat_fashion_mnist.md)."""

    epochs: int = 1
    lr: float = 0.002  # a hundredth of the time-to-accuracy recipe's peak at batch 128
    batch_size: int = 128
    weight_decay: float = 5e-5
    label_smoothing: float = 0.0
    seed: int = 0
    calibration_images: int = CALIBRATION_IMAGES  # the PTQ file it is compared with
    # training images per epoch, a fresh random subset each epoch (None: all). QAT adjusts a trained
    # model and needs far fewer steps than training (TensorFlow's QAT guide fine-tunes on a subset)
    images: int | None = None

    def check(self) -> None:
        for name in ("epochs", "batch_size", "calibration_images"):
            whole_number(getattr(self, name), name)
        if self.images is not None:
            whole_number(self.images, "images")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.weight_decay < 1:
            raise ValueError(f"weight_decay must be from 0 to 1, got {self.weight_decay!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be from 0 to 1, got {self.label_smoothing!r}")


def _pt2e():
    """torchao's PT2E functions and the x86 quantizer (imported here: torchao is optional)."""
    require("torchao", purpose="quantization-aware training")
    with quiet():  # its CUDA kernels' load failures and deprecation notices
        import torchao.quantization.pt2e as pt2e
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    return pt2e, prepare_qat_pt2e, convert_pt2e, X86InductorQuantizer, get_default_x86_inductor_quantization_config


@contextlib.contextmanager
def conv2d_patterns_only() -> Iterator[None]:
    """torchao fuses BatchNorm into the QAT convolutions (prepare) and folds it (convert) by matching
    patterns it traces for every kind of convolution: 1-d, 2-d and transposed, about 0.2 s each,
    most of the two steps' time (17 of 23 s on a 2-core EPYC). The models here have 2-d
    convolutions only, so the other kinds' patterns cannot match and are skipped. A torchao
    without these helpers is used as it is."""
    from torchao.quantization.pt2e import qat_utils

    names = ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")
    saved = {name: getattr(qat_utils, name) for name in names if hasattr(qat_utils, name)}

    def only_2d(helper):
        def match(graph, conv_fn, *args, **kwargs):
            return helper(graph, conv_fn, *args, **kwargs) if conv_fn is F.conv2d else graph
        return match

    try:
        for name, helper in saved.items():
            setattr(qat_utils, name, only_2d(helper))
        yield
    finally:
        for name, helper in saved.items():
            setattr(qat_utils, name, helper)


def prepare(model: nn.Module, example: torch.Tensor, quantizer=None) -> torch.fx.GraphModule:
    """`model` traced with a dynamic batch (in training mode) and prepared for QAT: fake-quantized
    weights and activations, BatchNorm folded into the weights' fake quantization. `quantizer`: a
    PT2E quantizer set up for QAT (another runtime's, e.g. ExecuTorch's XNNPACKQuantizer); by default
    the x86 one (`quantization_config`)."""
    pt2e, prepare_qat_pt2e, _, Quantizer, config = _pt2e()
    if quantizer is None:
        quantizer = Quantizer().set_global(quantization_config(config(is_qat=True)))
    model.train()
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    with conv2d_patterns_only():
        prepared = prepare_qat_pt2e(program, quantizer)
    pt2e.move_exported_model_to_train(prepared)
    return prepared


SEVEN_BIT_WEIGHTS = (-64, 63)  # ONNX Runtime's `reduce_range` for int8 weights


def quantization_config(config):
    """The x86 quantizer's QAT configuration, its weights in 7 bits where this CPU's integer kernels
    saturate at 8 (`integer_kernels_saturate`), as the PTQ file's are. Not the quantizer's own
    `reduce_range`, which narrows the activations: an ONNX QuantizeLinear has no range of its own
    (it clamps to the whole uint8), so a 0..127 activation range would not survive the export,
    while 7-bit weights are constants in the file."""
    if not integer_kernels_saturate():
        return config
    low, high = SEVEN_BIT_WEIGHTS
    return dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=low, quant_max=high))


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The prepared program made INT8: quantize/dequantize pairs with the scales it observed."""
    pt2e, _, convert_pt2e, _, _ = _pt2e()
    pt2e.move_exported_model_to_eval(prepared)
    with conv2d_patterns_only():
        program = convert_pt2e(prepared)
    pt2e.allow_exported_model_train_eval(program)  # so that the checks may call eval() on it like on a module
    return program


def freeze(prepared: torch.fx.GraphModule) -> None:
    """The last epoch's setting: observers frozen, BatchNorm (and dropout) in evaluation mode."""
    pt2e = _pt2e()[0]
    prepared.apply(pt2e.disable_observer)
    pt2e.move_exported_model_to_eval(prepared)


def float_weights(prepared: torch.fx.GraphModule, model: nn.Module) -> dict[str, torch.Tensor]:
    """The fine-tuned weights under the model's own names (the traced program keeps them)."""
    state = prepared.state_dict()
    missing = [name for name in model.state_dict() if name not in state]
    if missing:
        raise RuntimeError(f"the QAT program lost the model's tensor {missing[0]}")
    return {name: state[name].detach().clone().contiguous() for name in model.state_dict()}


def weight_decay_groups(prepared: torch.fx.GraphModule, model: nn.Module, weight_decay: float) -> list[dict]:
    """The trainer's weight-decay groups (`parameter_groups`: none on depthwise filters, BatchNorm or
    biases) for the program's parameters, which keep the model's names but not its modules."""
    names = {id(param): name for name, param in model.named_parameters()}
    program = dict(prepared.named_parameters())
    return [{**group, "params": [program[names[id(param)]] for param in group["params"]]}
            for group in parameter_groups(model, weight_decay)]


def fine_tune(prepared: torch.fx.GraphModule, model: nn.Module, loader, options: QatOptions, progress: bool = True,
              say: Callable[[str], None] = lambda line: None) -> list[dict]:
    """Train the prepared program of `model` on `loader` (the schedule in the module docstring); per epoch:
    loss, train top-1, images/s (also said in a line as each epoch ends)."""
    groups = weight_decay_groups(prepared, model, options.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=options.lr, momentum=0.9, nesterov=True)
    batches = len(loader) if options.images is None else min(len(loader), -(-options.images // options.batch_size))
    steps = options.epochs * batches
    history, step = [], 0
    for epoch in range(options.epochs):
        if epoch == options.epochs - 1 and options.epochs > 1:
            freeze(prepared)
        loader.set_epoch(epoch)
        sums, start = torch.zeros(3, dtype=torch.float64), time.perf_counter()
        bar = tqdm(total=batches, desc=f"QAT epoch {epoch + 1}/{options.epochs}", unit="batch",
                   disable=None if progress else True, leave=False, dynamic_ncols=True)
        for images, labels in itertools.islice(loader, batches):  # the loader shuffles each epoch
            lr = options.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = prepared(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=options.label_smoothing)
            if not torch.isfinite(loss):
                raise ValueError(f"QAT loss became {loss.item()} at epoch {epoch + 1}: try a smaller --lr (nothing written)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            sums += torch.tensor([loss.item() * len(labels), int((logits.argmax(1) == labels).sum()), len(labels)],
                                 dtype=torch.float64)
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{100 * sums[1] / sums[2]:.1f}%", lr=f"{lr:.2g}")
            bar.update()
        bar.close()
        elapsed = time.perf_counter() - start
        history.append({"epoch": epoch + 1, "train_loss": float(sums[0] / sums[2]),
                        "train_acc": float(sums[1] / sums[2]), "images_per_s": float(sums[2]) / elapsed,
                        "seconds": elapsed})
        say(f"QAT epoch {epoch + 1}/{options.epochs}  train loss {history[-1]['train_loss']:.4f} acc "
            f"{100 * history[-1]['train_acc']:.2f}%  {history[-1]['images_per_s']:.0f} img/s  {elapsed:.1f}s")
    return history


def check_out(out: str | os.PathLike) -> Path:
    """The output folder: a new one, or an empty one (nothing of a user's is ever replaced)."""
    out = Path(out)
    if not str(out).strip():
        raise ValueError("--out must name a folder, got an empty path")
    refuse_special(out, "--out")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: give a new folder for the QAT files (nothing was changed)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder {out.parent} of --out does not exist")
    return out


class ProgramSession:
    """The converted PT2E program behind ONNX Runtime's `run` interface: PyTorch's own INT8
    arithmetic, the reference an INT8 file of it is compared with."""

    def __init__(self, program: torch.fx.GraphModule) -> None:
        self.program = program

    def run(self, outputs, feeds: dict) -> list:
        with torch.no_grad():
            return [self.program(torch.from_numpy(next(iter(feeds.values())))).numpy()]


def _row(method: str, runtime: str, agreement: float, fp32_top1: float, int8_top1: float, images: int) -> dict:
    return {"method": method, "runtime": runtime, "fp32_top1": fp32_top1, "int8_top1": int8_top1,
            "drop": fp32_top1 - int8_top1, "agreement": agreement, "images": images}


def _describe(row: dict, data: str) -> str:
    """A row of the report as the command prints it."""
    line = (f"{row['method']} on {row['runtime']}: int8 top-1 {100 * row['int8_top1']:.2f}% against fp32 "
            f"{100 * row['fp32_top1']:.2f}% ({-100 * row['drop']:+.2f} points), top-1 "
            f"agreement {100 * row['agreement']:.2f}% on {row['images']} {data} test images")
    if "program_agreement" in row:
        line += f"; the file agrees with PyTorch's INT8 program on {100 * row['program_agreement']:.2f}%"
    return line


def _qat_row(runtime: str, fp32_session, program_session, int8_session, loader, *, min_agreement, force,
             what: str) -> dict:
    """A QAT file's row: against the original fp32 model (what a user compares), and against the
    PT2E program it was written from (what the file must compute: the guard; a QAT model is a
    fine-tuned one, so its agreement with the original measures the fine-tuning as well)."""
    row = _row("QAT", runtime, *compare(fp32_session, int8_session, loader))
    agreement, program_top1, _, images = compare(program_session, int8_session, loader)
    guard(agreement, images, what, min_agreement=min_agreement, force=force)
    return {**row, "program_top1": program_top1, "program_agreement": agreement}


def quantization_aware(checkpoint: str | os.PathLike, out: str | os.PathLike, options: QatOptions = QatOptions(), *,
                       data: str | None = None, data_root: str | None = None, min_agreement: float | None = None,
                       force: bool = False, progress: bool = True, runtime: str = "onnxruntime", pte_batch: int = 1,
                       say: Callable[[str], None] = lambda line: None) -> dict:
    """Fine-tune `checkpoint` with QAT on its training data (or `data`) and write `OUTPUTS` into
    `out` for `runtime` (ONNX Runtime and OpenVINO files, or an ExecuTorch program at `pte_batch`
    images a call); returns the report (PTQ and QAT rows, the fine-tuning's epochs). The QAT INT8 file
    must pass the accuracy guard (`mobilenet.export.guard`) or nothing is written. `progress`: a bar per
    epoch on a terminal; `say`: a line at each stage (the fine-tuning takes minutes to hours)."""
    options.check()
    check_min_agreement(min_agreement)
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    whole_number(pte_batch, "pte_batch")
    out = check_out(out)
    require("onnx", "onnxruntime", "onnxscript", "torchao", purpose="quantization-aware training")
    if runtime == "executorch":
        require("executorch", purpose="quantization-aware training for ExecuTorch")
    model, meta = load_checkpoint(checkpoint, with_meta=True)
    source = DataSource(data, data_root) if data else training_data(meta, checkpoint)
    if source is None:
        raise ValueError(f"{checkpoint} does not name its training data: pass --data (e.g. digits, fashion-mnist "
                         "or an image folder)")
    train_set, test_set = load_split(source, "train", meta), load_split(source, "test", meta)
    stats = dict(mean=meta.mean, std=meta.std)
    train_loader = make_loader(train_set, options.batch_size, train=True, seed=options.seed, **stats)
    test_loader = make_loader(test_set, EVAL_BATCH, train=False, **stats)
    check = sample_images(test_set, CHECK_IMAGES, meta=meta)
    calibration = sample_images(train_set, options.calibration_images, meta=meta)
    report = {"checkpoint": str(checkpoint), "data": source.data, "resolution": meta.resolution, "runtime": runtime,
              "options": asdict(options), "machine": {"cpu": cpu_name(), "cpu_flags": cpu_flags(),
                                                      "threads": torch.get_num_threads()}}
    context = dict(model=model, meta=meta, options=options, train_loader=train_loader, test_loader=test_loader,
                   check=check, calibration=calibration, data=source.data, report=report, progress=progress, say=say,
                   checks=dict(min_agreement=min_agreement, force=force), checkpoint=checkpoint, out=out)
    if runtime == "executorch":
        _for_executorch(**context, batch=pte_batch)
    else:
        _for_onnx(**context)
    return report


def _fine_tuned(model: nn.Module, meta, options: QatOptions, train_loader, example: torch.Tensor, quantizer,
                report: dict, progress: bool, say: Callable[[str], None], stage: Path) -> torch.fx.GraphModule:
    """The QAT itself, for any runtime's quantizer: trace, fine-tune, keep the float weights in `stage`,
    and return the converted INT8 program (PyTorch's arithmetic, which the files must compute)."""
    torch.manual_seed(options.seed)
    say("QAT: tracing the model and inserting fake quantization (torch.export, PT2E)")
    traced = build_like(model, meta)
    with quiet():
        prepared = prepare(traced, example, quantizer)
    report["epochs"] = fine_tune(prepared, traced, train_loader, options, progress, say)
    say("QAT: converting to INT8, writing and checking the files")
    save_model_state(stage / WEIGHTS, float_weights(prepared, model), meta)
    with quiet():
        program = convert(prepared)
    program.eval()
    return program


def _for_onnx(*, model, meta, options, train_loader, test_loader, check, calibration, data, report, progress, say,
              checks, checkpoint, out) -> None:
    """int8.onnx (and the OpenVINO IR) by the x86 quantizer's QAT, against `export --int8`'s PTQ file."""
    describe = f"{len(check)} {data} test images"
    rows = report["rows"] = []
    with temporary_folder("qat") as work:
        # the baseline: the fp32 file and its post-training quantization, as `export --int8` makes them
        fp32_path, ptq_path = work / "fp32.onnx", work / "ptq.onnx"
        to_onnx(inference_model(model, channels_last=False), fp32_path, meta.resolution)
        fp32_session = session(fp32_path)
        report["fp32_check"] = check_against(fp32_session, model, check, describe).to_dict()
        reduced = report["seven_bits"] = quantize(fp32_path, ptq_path, calibration)
        rows.append(_row("PTQ", "onnxruntime", *compare(fp32_session, session(ptq_path), test_loader)))
        say(_describe(rows[-1], data))

        with atomic_folder(out) as stage:  # the QAT files, renamed to `out` once all checks have passed
            stage.mkdir()
            program = _fine_tuned(model, meta, options, train_loader, check[:2], None, report, progress, say, stage)
            qat_path = stage / INT8_ONNX
            with quiet():  # the exporter's notes on operators of packages we do not use
                to_onnx(program, qat_path, meta.resolution, dynamo=True, config=model.config)
            props = metadata(meta, model, meta.resolution)
            props["quantization"] = (f"int8 QDQ by quantization-aware training (PT2E, x86 quantizer): per-channel "
                                     f"int8 weights{' in 7 bits' if reduced else ''}, uint8 activations; "
                                     f"{options.epochs} epoch(s) of fine-tuning from {Path(checkpoint).name}")
            add_metadata(qat_path, props)
            qat_session = session(qat_path)
            report["int8_check"] = check_against(qat_session, program, check, describe, tolerance=None).to_dict()
            program_session = ProgramSession(program)
            rows.append(_qat_row("onnxruntime", fp32_session, program_session, qat_session, test_loader,
                                 what=f"the QAT INT8 file {out / INT8_ONNX}", **checks))
            say(_describe(rows[-1], data))
            if available("openvino"):
                xml, bin_ = stage / IR_XML, stage / IR_BIN
                openvino.write_ir(qat_path, xml, bin_, props)
                rows.append(_qat_row("openvino", fp32_session, program_session, openvino.session(xml, weights=bin_),
                                     test_loader, what=f"the QAT INT8 IR {out / IR_XML}", **checks))
                say(_describe(rows[-1], data))
            write_json(stage / REPORT, report)


def _for_executorch(*, model, meta, options, train_loader, test_loader, check, calibration, data, report, progress,
                    say, checks, checkpoint, out, batch: int) -> None:
    """int8.pte by ExecuTorch's XNNPACK quantizer's QAT, against its PTQ program (`export --format
    executorch --int8`); every program run by ExecuTorch's runtime."""
    from mobilenet.export import pte

    with quiet():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                             get_symmetric_quantization_config)
    rows = report["rows"] = []
    report["pte_batch"] = batch
    with temporary_folder("qat") as work:
        fp32_path, ptq_path = work / "fp32.pte", work / "ptq.pte"
        with quiet():
            fp32_path.write_bytes(pte.lower(model, batch, meta.resolution))
            ptq_path.write_bytes(pte.lower(model, batch, meta.resolution, calibration))
        fp32_session = pte.PteSession(fp32_path)
        rows.append(_row("PTQ", "executorch", *compare(fp32_session, pte.PteSession(ptq_path), test_loader)))
        say(_describe(rows[-1], data))

        with atomic_folder(out) as stage:
            stage.mkdir()
            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                        is_qat=True))
            program = _fine_tuned(model, meta, options, train_loader, check[:2], quantizer, report, progress, say,
                                  stage)
            example = torch.zeros(model.config.input_shape(batch, meta.resolution))
            with quiet():
                (stage / INT8_PTE).write_bytes(pte.program_bytes(program, example))
            rows.append(_qat_row("executorch", fp32_session, ProgramSession(program), pte.PteSession(stage / INT8_PTE),
                                 test_loader, what=f"the QAT INT8 program {out / INT8_PTE}", **checks))
            say(_describe(rows[-1], data))
            write_json(stage / REPORT, report)


def build_like(model: nn.Module, meta) -> nn.Module:
    """A fresh copy of `model` (the one traced for QAT; the original stays the fp32 reference)."""
    copy = build_from_meta(meta)
    copy.load_state_dict(model.state_dict())
    return copy


__all__ = ["FILES", "OUTPUTS", "RUNTIMES", "QatOptions", "convert", "fine_tune", "prepare", "quantization_aware"]
