"""What the phone exports share (ExecuTorch `pte.py`, LiteRT `litert.py`, Core ML `coreml.py`; the
formats and the dispatch to them are `phone.py`, whose docstring says how they are checked): the
fixed-batch session the checks run (`PhoneSession`), PyTorch's PT2E INT8 flow (`quantize_pt2e`), the
metadata an app needs (`phone_metadata`, `decode`, ExecuTorch's side file), and silencing what the
converters print (`quiet`)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenet.export.onnx import metadata

FORMAT = "mobilenet.phone/1"
SIDE_FILE = ".json"  # ExecuTorch's metadata: NAME.pte -> NAME.pte.json


@contextlib.contextmanager
def quiet():
    """Silence what the converters and runtimes print while they import, convert and load: their
    own deprecation notices, optional kernels they lack, CPU probing written by C++ straight to
    the stderr file descriptor, progress bars. If the block fails, what they printed is replayed
    on stderr before the error goes on, so nothing that explains a failure is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def phone_metadata(meta, model: nn.Module, resolution: int, batch: int) -> dict:
    """What an app needs to feed the file, as JSON values: the checkpoint's metadata (classes, mean,
    std, resolution, configuration) with the input's fixed shape, layout and channel order."""
    props = decode(metadata(meta, model, resolution))
    shape = model.config.input_shape(batch, resolution)
    order = "RGB" if model.config.in_chans == 3 else "grey"
    props.update(format=FORMAT, batch_size=batch, input_shape=list(shape), layout="NCHW", channel_order=order,
                 preprocessing=f"float32 {' x '.join(map(str, shape))} (NCHW, {order}): (pixel / 255 - mean) / std")
    return props


def decode(props: dict[str, str]) -> dict:
    """String metadata values decoded where they hold JSON (lists, numbers, objects)."""
    decoded = {}
    for key, value in props.items():
        try:
            decoded[key] = json.loads(value)
        except (TypeError, ValueError):
            decoded[key] = value
    return decoded


def side_file(path: str | os.PathLike) -> Path:
    """The JSON file that holds an ExecuTorch program's metadata: NAME.pte -> NAME.pte.json."""
    path = Path(path)
    return path.with_name(path.name + SIDE_FILE)


def check_batch(batch: int) -> int:
    """A batch size a phone file can be traced at."""
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 1024:
        raise ValueError(f"batch size must be a whole number from 1 to 1024, got {batch!r}")
    return batch


class PhoneSession:
    """A phone file run by its Python runtime: `__call__` takes exactly the file's batch (as the
    phone does); `run(outputs, feeds)` (ONNX Runtime's interface) feeds any number of images in
    chunks of it, padding the last one with zeros and dropping their logits."""

    def __init__(self, path: str | os.PathLike, batch: int) -> None:
        self.path, self.batch = Path(path), batch

    def forward(self, images: np.ndarray) -> np.ndarray:  # one batch of exactly self.batch images
        raise NotImplementedError

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        array = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
        if array.ndim != 4 or array.shape[0] != self.batch:
            raise ValueError(f"{self.path.name} takes a batch of {self.batch} (fixed when it was exported: "
                             f"--batch-size), got an input of shape {tuple(array.shape)}")
        return self.forward(np.ascontiguousarray(array, dtype=np.float32))

    def run(self, outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (array,) = feeds.values()
        chunks = []
        for start in range(0, len(array), self.batch):
            chunk = array[start:start + self.batch]
            short = self.batch - len(chunk)
            if short:
                chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
            chunks.append(self(chunk)[:self.batch - short])
        return [np.concatenate(chunks)]


def quantize_pt2e(fused: nn.Module, example: torch.Tensor, quantizer, calibration: torch.Tensor,
                  prepare=None, convert=None) -> torch.fx.GraphModule:
    """`fused` quantized by PyTorch's PT2E flow with `quantizer`, its observers calibrated on the
    normalised images `calibration` in batches of len(`example`) (the traced shape; a remainder
    that does not fill a batch is left out). `prepare`/`convert`: the runtime's own PT2E functions
    (default torchao's)."""
    if prepare is None or convert is None:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        prepare, convert = prepare or prepare_pt2e, convert or convert_pt2e
    batch = len(example)
    if len(calibration) < batch:
        raise ValueError(f"INT8 calibration needs at least {batch} images (the batch size), got {len(calibration)}")
    graph = torch.export.export(fused, (example,)).module()
    prepared = prepare(graph, quantizer)
    with torch.no_grad():
        for start in range(0, len(calibration) - batch + 1, batch):
            prepared(calibration[start:start + batch])
    return convert(prepared)


__all__ = ["FORMAT", "PhoneSession", "SIDE_FILE", "check_batch", "decode", "phone_metadata", "quantize_pt2e", "quiet",
           "side_file"]
