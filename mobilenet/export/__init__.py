"""Shipping a trained model: the fused inference model, ONNX, `torch.export` programs and INT8.

* `inference_model(model)`: BatchNorm folded into the convolutions, channels_last, eval mode.
* `export_onnx`, `export_pt2`, `export_int8`: write a file atomically, after checking that the
  reloaded file computes what PyTorch computes (fp32: max |logit difference| <= 1e-4).
* `runtime_model(model, resolution)`: the fastest way to run it on this machine, measured among
  the installed runtimes and precisions (`choose.py`) and checked; `eval` and `predict` use it.
* `export_checkpoint(checkpoint, output, format)`: all of it from a checkpoint, as
  `mobilenet export` does, with the check run on real images of the checkpoint's data when found;
  also the phone formats (`phone.py`: ExecuTorch, LiteRT, Core ML), each an optional extra.

onnx, onnxruntime and onnxscript are optional (`pip install 'mobilenet[export]'`); without them the
fused model and pt2 work, and the ONNX functions raise `MissingPackage` with a one-line message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mobilenet.checks import some, whole_number
from mobilenet.checkpoint import load_checkpoint, refuse_replacing_ours
from mobilenet.data import load_dataset, make_loader
from mobilenet.data.loader import Normalize
from mobilenet.files import atomic_output, check_output_path, refuse_overwrite
from mobilenet.optional import MissingPackage, available, require
from mobilenet.export.guard import MIN_AGREEMENT, check_min_agreement
from mobilenet.export.fold import fold_batchnorm, fold_conv_bn, inference_model
from mobilenet.export.int8 import Int8Report, export_int8, quantize
from mobilenet.export.onnx import CheckResult, OnnxRuntimeModel, export_onnx, read_metadata, session
from mobilenet.export import openvino, phone
from mobilenet.export.formats import FORMATS as format_table
from mobilenet.export.formats import PHONE_FORMATS, SUFFIXES
from mobilenet.export.phone import read_phone_metadata
from mobilenet.export.phone_common import check_batch
from mobilenet.export.pt2 import export_pt2, load_pt2
from mobilenet.export.runtime import RUNTIMES, resolve_runtime, runtime_model

FORMATS = tuple(format_table)
CALIBRATION_IMAGES = 256
CHECK_IMAGES = 8


@dataclass(frozen=True)
class DataSource:
    """Where a checkpoint's images come from: a `load_dataset` name or path, its root and class filter."""

    data: str
    root: str | None = None
    classes: tuple[str, ...] | None = None
    found_in: str = "--calibration-data"

    def load(self, split: str, meta, resolution: int | None = None):
        """Split `split` of this data as the checkpoint of `meta` takes it: at its resolution (or
        `resolution`), in its input channels, only these classes."""
        return load_dataset(self.data, split, classes=list(self.classes) if self.classes else None,
                            resolution=resolution or meta.resolution, root=self.root, channels=meta.config.in_chans)


def training_data(meta, checkpoint: str | os.PathLike) -> DataSource | None:
    """The data a checkpoint was trained on, as its training run recorded it in the checkpoint's
    metadata; None for a checkpoint that does not say (converted weights, older files)."""
    source = meta.data
    if not isinstance(source, dict) or not source.get("data"):
        return None
    classes = source.get("classes")
    return DataSource(str(source["data"]), source.get("root"), tuple(classes) if classes else None,
                      f"the metadata of {checkpoint}")


def sample_images(dataset, count: int, seed: int = 0, meta=None) -> torch.Tensor:
    """`count` images of a dataset (fewer if it is smaller) drawn without replacement with a fixed
    seed, so that every class is likely represented, normalised like the loaders do: with the
    checkpoint's own statistics when its `meta` is given (a fine-tuned model keeps its source's)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    images = torch.stack([dataset[int(i)][0] for i in order])
    stats = (meta.mean, meta.std) if meta is not None else (dataset.mean, dataset.std)
    return Normalize(*stats, channels_last=False)(images)


def load_split(source: DataSource, split: str, meta):
    dataset = source.load(split, meta)
    if list(dataset.classes) != list(meta.classes):
        raise ValueError(f"the data {source.data!r} (from {source.found_in}) has classes {some(dataset.classes)}, "
                         f"not the checkpoint's {some(meta.classes)}")
    return dataset


def output_format(output: str | os.PathLike, format: str | None = None) -> str:
    """The format of an export to `output`: the one its suffix names (`SUFFIXES`, any case), which a
    given `format` must not contradict; ValueError otherwise, so that no file's name says one format
    while its bytes are another."""
    suffix = Path(output).suffix.lower()
    if Path(output).is_dir() and suffix != SUFFIXES["coreml"]:
        raise IsADirectoryError(f"output {output} is a folder; give a file name")
    named = next((name for name, ending in SUFFIXES.items() if ending == suffix), None)
    endings = ", ".join(f"{ending} ({name})" for name, ending in SUFFIXES.items())
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if format is None and named is None:
        raise ValueError(f"cannot tell the format from the name {output}: end it in one of {endings}")
    if format is not None and named != format:
        said = f"says {named}" if named else "names no format"
        raise ValueError(f"--format {format} writes a {SUFFIXES[format]} file, but the output {output} {said}: "
                         f"give --output NAME{SUFFIXES[format]}" + (" or drop --format" if named else ""))
    return named


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, format: str | None = None, *,
                      int8: bool = False, calibration_data: str | None = None, data_root: str | None = None,
                      calibration_images: int = CALIBRATION_IMAGES, batch: int = 1,
                      min_agreement: float | None = None, force: bool = False) -> dict:
    """Export a checkpoint to `output` as ONNX or OpenVINO IR (either `int8=True`: quantized), a pt2
    program, or for a phone (`PHONE_FORMATS`: ExecuTorch .pte, LiteRT .tflite, Core ML .mlpackage,
    fixed at `batch` images per call; `mobilenet.export.phone`). The format is the one `output`'s
    suffix names (`output_format`); `format`, if given, must agree.

    An INT8 file must pass the accuracy guard (`mobilenet.export.guard`: `min_agreement`, `force`).

    The check runs on real test images of `calibration_data`, or of the data the checkpoint's
    metadata names (a training run records it), and on random inputs if neither is found; INT8 needs real
    data (ValueError otherwise). Returns a JSON-ready report. Writes nothing unless every check passes.
    """
    refuse_overwrite(output, {"checkpoint": checkpoint, "calibration data": calibration_data})
    refuse_replacing_ours(output)  # these two first: the most important thing to say of a wrong --output
    format = output_format(output, format)
    check_min_agreement(min_agreement)
    record = format_table[format]
    if int8 and not record.int8:
        *others, last = [f.name for f in format_table.values() if f.int8]
        raise ValueError(f"INT8 quantization is for {', '.join(others)} or {last}, not {format}")
    whole_number(calibration_images, "calibration_images")
    if format in PHONE_FORMATS:
        check_batch(batch)
        outputs = phone.phone_outputs(format, output)
    elif batch != 1:
        raise ValueError(f"--batch-size is for the phone formats ({', '.join(PHONE_FORMATS)}); "
                         f"{format} files take any batch")
    else:
        outputs = [output]
    if format == "openvino":
        outputs = list(openvino.ir_paths(output))
    for path in outputs:
        if format != "coreml":
            check_output_path(path)
        else:  # a Core ML package is a folder, replaced whole
            if Path(path).is_symlink():
                raise ValueError(f"output {path} is a symbolic link, not a folder of ours; give another path")
            if not Path(path).parent.is_dir():
                raise FileNotFoundError(f"output folder {Path(path).parent} does not exist")
        refuse_overwrite(path, {"checkpoint": checkpoint, "calibration data": calibration_data})
        refuse_replacing_ours(path)
    require(*record.needs, *(record.int8_needs if int8 else ()), purpose=f"{format} export")
    model, meta = load_checkpoint(checkpoint, with_meta=True)
    source = DataSource(calibration_data, data_root) if calibration_data else training_data(meta, checkpoint)
    if int8 and source is None:
        raise ValueError(f"--int8 needs calibration data and {checkpoint} does not name its training data: "
                         "pass --calibration-data (e.g. digits, cifar10 or an image folder)")
    report = {"checkpoint": str(checkpoint), "output": str(output), "format": format, "int8": int8,
              "classes": len(meta.classes), "resolution": meta.resolution}
    if source is None:
        size = meta.config.input_shape(CHECK_IMAGES, meta.resolution)
        check = torch.randn(size, generator=torch.Generator().manual_seed(0))
        describe = f"{CHECK_IMAGES} random inputs (no data found: pass --calibration-data to check on real images)"
    else:
        test = load_split(source, "test", meta)
        check = sample_images(test, CHECK_IMAGES, meta=meta)
        describe = f"{len(check)} {source.data} test images"
        report["data"] = source.data
    calibration = loader = None
    if int8 and record.calibrated:
        calibration = sample_images(load_split(source, "train", meta), calibration_images, meta=meta)
        loader = make_loader(test, 64, train=False, mean=meta.mean, std=meta.std)
        report["calibration_images"] = len(calibration)
    report.update(record.write(model, output, check, meta=meta, describe=describe, batch=batch, int8=int8,
                               calibration=calibration, test_loader=loader, min_agreement=min_agreement,
                               force=force))
    report["bytes"] = sum(file_bytes(path) for path in outputs)
    return report


def file_bytes(path: str | os.PathLike) -> int:
    """The size of a file, or of every file in a folder (a Core ML package)."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


__all__ = [
    "CALIBRATION_IMAGES", "CheckResult", "DataSource", "FORMATS", "Int8Report", "MIN_AGREEMENT", "MissingPackage",
    "OnnxRuntimeModel", "PHONE_FORMATS", "RUNTIMES", "SUFFIXES", "atomic_output", "available", "export_checkpoint", "export_int8", "export_onnx",
    "export_pt2", "fold_batchnorm", "fold_conv_bn", "inference_model", "load_pt2", "load_split", "output_format", "quantize", "read_metadata",
    "read_phone_metadata", "require",
    "resolve_runtime", "runtime_model", "sample_images", "session", "training_data",
]
