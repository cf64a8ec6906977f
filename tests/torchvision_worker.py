"""The torchvision side of the real-torchvision tests, run in its own process with torchvision 0.28
from its folder off the import path (tests/reference.py says why and how). Builds each named model
(random weights, BatchNorm statistics far from 0 and 1), saves its state dict the way torchvision
publishes weights (torch.save of the state dict, a .pth) and its logits on fixed images.

    python torchvision_worker.py OUT_DIR TORCHVISION_DIR SIZE NAME [NAME ...]
"""

import sys
from pathlib import Path

import reference

reference.use_torchvision(sys.argv[2])

import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision import models  # noqa: E402

CLASSES = 10


def build(name: str) -> torch.nn.Module:
    model = models.get_model(name, num_classes=CLASSES)
    with torch.no_grad():
        model.classifier[-1].weight.normal_(0, 1)  # logits of a real size (its init has std 0.01)
    return model


if __name__ == "__main__":
    reference.write_references(Path(sys.argv[1]), int(sys.argv[3]), sys.argv[4:], build,
                               lambda model, path: torch.save(model.state_dict(), path.with_suffix(".pth")),
                               {"torchvision": torchvision.__version__, "torch": torch.__version__})
