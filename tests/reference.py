"""What the reference-library workers share (tests/timm_worker.py, tests/torchvision_worker.py): the
torchvision they import, and writing a model's state dict with its own logits on fixed images.

torchvision 0.28's wheel is a CUDA build: `make install` puts it, without its dependencies, in a
folder off the import path (runs.TORCHVISION). Its C operators do not load against this CPU torch
and its models need none of them; only the two modules its __init__ imports to register their
autograd and meta kernels would fail, so they are answered with empty modules and everything else
imports as published."""

import json
import sys
import types
from collections.abc import Callable
from pathlib import Path

IMAGES = 4


def use_torchvision(folder: str) -> None:
    """Make `import torchvision` import the one in `folder`; call before importing it (or timm)."""
    sys.path.insert(0, folder)
    for registrations in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules[registrations] = types.ModuleType(registrations)


def randomise_batchnorm(model) -> None:
    """BatchNorm statistics and affine parameters far from 0 and 1 (a fresh BatchNorm is the identity,
    which would hide a parameter put in the wrong place)."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)


def write_references(out: Path, size: int, names: list[str], build: Callable, save: Callable,
                     versions: dict) -> None:
    """For each name, `build(name)`'s model (random weights, BatchNorm randomised), saved by
    `save(model, out / name)`, and its logits on fixed images: OUT/images.npy (N x 3 x SIZE x SIZE),
    OUT/<name>.logits.npy, OUT/versions.json."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    images = torch.randn(IMAGES, 3, size, size)
    np.save(out / "images.npy", images.numpy())
    for name in names:
        model = build(name).eval()
        randomise_batchnorm(model)
        with torch.no_grad():
            save(model, out / name)
            np.save(out / f"{name}.logits.npy", model(images).numpy())
    (out / "versions.json").write_text(json.dumps(versions))
    print(json.dumps(versions))
