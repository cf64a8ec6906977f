"""Checkpoints: safetensors files that carry the model's configuration, written atomically.

A model checkpoint is one `.safetensors` file: the model's tensors, and in its metadata the model's
configuration (registry name and arguments), its class names, input resolution and normalisation,
so that `eval`, `predict` and `export` rebuild the model from that file alone. Loading one reads
tensors and JSON; it never runs code (no pickle).

The training state needed to resume a run (optimizer buffers, epoch, random generators) is a second
safetensors file of the same kind: tensors, and JSON in the metadata.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mobilenet.checks import check_resolution, first_line
from mobilenet.files import atomic_output, require_regular
from mobilenet.data.folder import EVAL_CROP_FRACTION
from mobilenet.models import MODELS, ModelConfig, create_model

FORMAT = "mobilenet.checkpoint/1"
STATE_FORMAT = "mobilenet.training-state/1"


@dataclass
class ModelMeta:
    """What a checkpoint says about its model, beside the tensors."""

    config: ModelConfig
    classes: list[str]
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def crop_fraction(self) -> float:
        """The centre crop of the evaluation transform the model was trained with (in `extra`;
        checkpoints that do not say were trained on image folders, whose crop is the default)."""
        return float(self.extra.get("crop_fraction", EVAL_CROP_FRACTION))

    @property
    def data(self) -> dict | None:
        """Where the model's images come from (`{"data", "root", "classes"}`), if a run recorded it."""
        return self.extra.get("data")

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "config": json.dumps(self.config.to_dict()),
            "classes": json.dumps(self.classes),
            "resolution": str(self.resolution),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "extra": json.dumps(self.extra),
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str] | None, path: str) -> ModelMeta:
        if not metadata or metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is a safetensors file but not a mobilenet checkpoint (no model configuration in it)")
        try:
            meta = cls(
                config=ModelConfig.from_dict(json.loads(metadata["config"])),
                classes=json.loads(metadata["classes"]),
                resolution=int(metadata["resolution"]),
                mean=tuple(json.loads(metadata["mean"])),
                std=tuple(json.loads(metadata["std"])),
                extra=json.loads(metadata.get("extra", "{}")),
            )
            meta.validate()
        except KeyError as error:
            raise ValueError(f"{path}: damaged checkpoint metadata (no {error})") from None
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: damaged checkpoint metadata ({error})") from None
        return meta

    def validate(self) -> None:
        """Check every field's type and range (a checkpoint is input like any other)."""
        config, classes = self.config, self.classes
        if config.name not in MODELS:
            raise ValueError(f"config must name one of the models {', '.join(sorted(MODELS))}, got {config.name!r}")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise ValueError("classes must be a list of class names")
        if config.num_classes != len(classes):
            raise ValueError(f"the model has {config.num_classes} outputs but {len(classes)} class names")
        check_resolution(self.resolution)
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != config.in_chans or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                         for v in values):
                raise ValueError(f"{name} must be {config.in_chans} finite numbers (one per input channel), "
                                 f"got {list(values)}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {list(self.std)}")
        if not isinstance(self.extra, dict):
            raise ValueError("extra must be a JSON object")


def atomic_save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write a safetensors file so that `path` holds either the old file or the whole new one."""
    with atomic_output(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with a one-line error for anything unreadable."""
    path = str(path)
    require_regular(path, "checkpoint")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path} is not a readable safetensors checkpoint (truncated or another format): "
                         f"{first_line(error)}") from None
    return tensors, metadata


def mobilenet_file_kind(path: str | os.PathLike) -> str | None:
    """"checkpoint" or "training state" if `path` is such a file of ours, else None (read from
    the safetensors header alone, so it is cheap)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            kind = (f.metadata() or {}).get("format")
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    return {FORMAT: "checkpoint", STATE_FORMAT: "training state"}.get(kind)


def refuse_replacing_ours(output: str | os.PathLike, keep: tuple[str, ...] = ("checkpoint", "training state")) -> None:
    """Raise ValueError if `output` is an existing file of ours of a kind in `keep`: an export, a
    plot or a conversion never replaces a checkpoint or a run's training state by mistake."""
    kind = mobilenet_file_kind(output) if os.path.isfile(output) else None
    if kind in keep:
        raise ValueError(f"the output {output} is a mobilenet {kind}; it is kept: write to another file")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta) -> None:
    """Save a model and what rebuilds it, atomically."""
    save_model_state(path, model.state_dict(), meta)


def save_model_state(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: ModelMeta) -> None:
    atomic_save(state, path, meta.to_metadata())


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """The tensors and metadata of a model checkpoint, validated but not yet a model."""
    tensors, metadata = read_safetensors(path)
    return tensors, ModelMeta.from_metadata(metadata, str(path))


def build_from_meta(meta: ModelMeta, path: str | os.PathLike = "checkpoint") -> nn.Module:
    """The model a checkpoint's configuration describes (its weights not yet loaded)."""
    config = meta.config.to_dict()
    return create_model(config.pop("name"), **config)


def load_checkpoint(path: str | os.PathLike, with_meta: bool = False):
    """The model a checkpoint holds, rebuilt from its configuration, in evaluation mode.

    With `with_meta=True`, returns `(model, meta)`, meta holding class names, resolution and
    normalisation.
    """
    tensors, meta = read_checkpoint(path)
    model = build_from_meta(meta, path)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        first = str(error).split("\n\t")[1] if "\n\t" in str(error) else str(error).splitlines()[0]
        raise ValueError(f"{path}: tensors do not fit the model its configuration describes: {first.strip()}") from None
    model.eval()
    return (model, meta) if with_meta else model


# --- training state --------------------------------------------------------------------------

def save_training_state(path: str | os.PathLike, optimizer: torch.optim.Optimizer, extra_tensors: dict[str, torch.Tensor],
                        info: dict) -> None:
    """Save the optimizer (its buffers as tensors, its hyper-parameters as JSON), named tensors
    (random generator states, the moving average of the weights) and a JSON `info` dict."""
    state = optimizer.state_dict()
    tensors = {f"extra.{k}": v for k, v in extra_tensors.items()}
    scalars: dict[str, dict] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    metadata = {
        "format": STATE_FORMAT,
        "param_groups": json.dumps(state["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
        "info": json.dumps(info),
    }
    atomic_save(tensors, path, metadata)


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded buffer its parameter's memory layout (a file holds contiguous tensors; the
    parameters of a channels-last model are not). PyTorch's fused optimizers walk parameter, gradient
    and buffers as flat memory, so a contiguous momentum buffer of a channels-last weight would be
    updated element by element against the wrong weights (a resumed run drifts from an unbroken one)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def load_training_state(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore the optimizer from a training-state file; returns its extra tensors and info."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a mobilenet training state")
    try:
        slots: dict[int, dict] = {}
        extra = {}
        for key, value in tensors.items():
            if key.startswith("extra."):
                extra[key.removeprefix("extra.")] = value
            else:
                _, index, name = key.split(".", 2)
                slots.setdefault(int(index), {})[name] = value
        for index, values in json.loads(metadata["optimizer_scalars"]).items():
            slots.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": slots, "param_groups": json.loads(metadata["param_groups"])})
        _match_parameter_layouts(optimizer)
        info = json.loads(metadata["info"])
        for name, kind in (("epoch", int), ("step", int), ("best_top1", (int, float)), ("metrics", list)):
            if not isinstance(info.get(name), kind) or isinstance(info.get(name), bool):
                raise ValueError(f"info.{name} is {json.dumps(info.get(name))[:40]}")
    except KeyError as error:
        raise ValueError(f"{path}: damaged training state (no {error})") from None
    except (ValueError, TypeError, AttributeError, RuntimeError) as error:
        raise ValueError(f"{path}: damaged training state ({first_line(error)})") from None
    return extra, info
