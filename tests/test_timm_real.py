"""timm's own V3 and V4 models, their state dicts converted and compared with timm's forward pass.
timm runs in its own process (tests/timm_worker.py) with the torchvision it imports, from the folder
off the import path where `make install` puts it (a CUDA build, see tests/reference.py)."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from mobilenet.convert import import_weights
from runs import TORCHVISION, Worker

timm_installed = importlib.util.find_spec("timm") is not None and (TORCHVISION / "torchvision").is_dir()
pytestmark = [pytest.mark.skipif(not timm_installed and not os.environ.get("CI"),
                                 reason="timm and torchvision (test dependencies: make install) are not installed"),
              pytest.mark.xdist_group("timm")]  # one xdist worker starts the worker process

SIZE = 64
MODELS = {"mobilenetv3_large_100": ("mobilenet_v3_large", 1.0), "mobilenetv3_large_075": ("mobilenet_v3_large", 0.75),
          "mobilenetv3_small_100": ("mobilenet_v3_small", 1.0), "mobilenetv3_small_075": ("mobilenet_v3_small", 0.75),
          "mobilenetv4_conv_small": ("mobilenet_v4_conv_small", 1.0),
          "mobilenetv4_conv_medium": ("mobilenet_v4_conv_medium", 1.0),
          "mobilenetv4_conv_large": ("mobilenet_v4_conv_large", 1.0)}


TIMM = Worker("timm_worker.py", str(TORCHVISION), str(SIZE), *MODELS) if timm_installed else None


@pytest.fixture(scope="module")
def timm_files():
    out = TIMM.files()
    assert json.loads((out / "versions.json").read_text())["timm"].startswith("1.")
    return out


@pytest.mark.parametrize("name", MODELS)
def test_timm_v3_and_v4_give_timms_logits(timm_files, name):
    """Every tensor of timm's state dict finds its place in ours (the converter refuses to drop
    any), and our model gives timm's logits on the same images, to float32 rounding."""
    arch, width = MODELS[name]
    imported = import_weights(timm_files / f"{name}.safetensors", "timm")
    assert (imported.meta.config.name, imported.meta.config.width_mult) == (arch, width)
    assert imported.meta.num_classes == 10
    images = torch.from_numpy(np.load(timm_files / "images.npy"))
    with torch.no_grad():
        ours = imported.model.eval()(images).numpy()
    theirs = np.load(timm_files / f"{name}.logits.npy")
    assert np.abs(theirs).max() > 1.0
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
