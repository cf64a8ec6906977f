"""torchvision's own V3 models, their published file format (a torch.save'd state dict) converted and
compared with torchvision's forward pass. torchvision runs in its own process
(tests/torchvision_worker.py): its wheel is a CUDA build, kept off this environment's import path."""

import json
import os

import numpy as np
import pytest
import torch

from mobilenet.convert import import_weights
from mobilenet.models import create_model
from runs import TORCHVISION, Worker

installed = (TORCHVISION / "torchvision").is_dir()
pytestmark = [pytest.mark.skipif(not installed and not os.environ.get("CI"),
                                 reason=f"torchvision (a test dependency: make install) is not in {TORCHVISION}"),
              pytest.mark.xdist_group("torchvision")]  # one xdist worker starts the worker process

SIZE = 64
MODELS = ("mobilenet_v3_large", "mobilenet_v3_small")
WORKER = Worker("torchvision_worker.py", str(TORCHVISION), str(SIZE), *MODELS) if installed else None


@pytest.fixture(scope="module")
def torchvision_files():
    out = WORKER.files()
    assert json.loads((out / "versions.json").read_text())["torchvision"].startswith("0.28")
    return out


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_v3_gives_torchvisions_logits(torchvision_files, name):
    """Every tensor of torchvision's state dict finds its place in ours (the converter refuses to drop
    any), and our model gives torchvision's logits on the same images, to float32 rounding."""
    imported = import_weights(torchvision_files / f"{name}.pth", "torchvision")
    assert (imported.meta.config.name, imported.meta.config.width_mult) == (name, 1.0)
    assert imported.meta.num_classes == 10 and imported.model.config.bn_eps == 1e-3
    images = torch.from_numpy(np.load(torchvision_files / "images.npy"))
    with torch.no_grad():
        ours = imported.model.eval()(images).numpy()
    theirs = np.load(torchvision_files / f"{name}.logits.npy")
    assert np.abs(theirs).max() > 1.0
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_torchvision_v3_at_another_width_is_refused_in_one_line(torchvision_files, tmp_path):
    """torchvision scales V3's expansions and head by the width directly, the authors do not: a model
    of another width would load into the wrong shapes, so it is refused by name."""
    state = torch.load(torchvision_files / "mobilenet_v3_small.pth", weights_only=True)
    ours = create_model("mobilenet_v3_small", width_mult=0.75, num_classes=10).state_dict()
    state["features.12.0.weight"] = torch.zeros(ours["features.12.conv.weight"].shape)  # 432, not 576
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match=r"^torchvision mobilenet_v3_small at another width than 1.0 \(features.12 has 432"):
        import_weights(tmp_path / "narrow.pth", "torchvision")
