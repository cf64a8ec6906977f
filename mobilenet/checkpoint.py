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
import os
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mobilenet.files import atomic_output
from mobilenet.models import create_model

FORMAT = "mobilenet.checkpoint/1"


@dataclass
class ModelMeta:
    """What a checkpoint says about its model, beside the tensors."""

    config: dict
    classes: list[str]
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "config": json.dumps(self.config),
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
            return cls(
                config=json.loads(metadata["config"]),
                classes=json.loads(metadata["classes"]),
                resolution=int(metadata["resolution"]),
                mean=tuple(json.loads(metadata["mean"])),
                std=tuple(json.loads(metadata["std"])),
                extra=json.loads(metadata.get("extra", "{}")),
            )
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{path}: damaged checkpoint metadata ({error})") from None


def atomic_save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write a safetensors file so that `path` holds either the old file or the whole new one."""
    with atomic_output(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with a one-line error for anything unreadable."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path} is not a readable safetensors checkpoint (truncated or another format): {reason}") from None
    return tensors, metadata


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta) -> None:
    """Save a model and what rebuilds it, atomically."""
    save_model_state(path, model.state_dict(), meta)


def save_model_state(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: ModelMeta) -> None:
    atomic_save(state, path, meta.to_metadata())


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """The tensors and metadata of a model checkpoint, validated but not yet a model."""
    tensors, metadata = read_safetensors(path)
    return tensors, ModelMeta.from_metadata(metadata, str(path))


def build_from_meta(meta: ModelMeta) -> nn.Module:
    config = dict(meta.config)
    return create_model(config.pop("name"), **config)


def load_checkpoint(path: str | os.PathLike, with_meta: bool = False):
    """The model a checkpoint holds, rebuilt from its configuration, in evaluation mode.

    With `with_meta=True`, returns `(model, meta)`, meta holding class names, resolution and
    normalisation.
    """
    tensors, meta = read_checkpoint(path)
    model = build_from_meta(meta)
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
        "format": "mobilenet.training-state/1",
        "param_groups": json.dumps(state["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
        "info": json.dumps(info),
    }
    atomic_save(tensors, path, metadata)


def load_training_state(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore the optimizer from a training-state file; returns its extra tensors and info."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != "mobilenet.training-state/1":
        raise ValueError(f"{path} is not a mobilenet training state")
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
    return extra, json.loads(metadata["info"])
