"""The torchvision side of the real-torchvision tests, run in its own process with torchvision 0.28
from its folder off the import path (tests/real_torchvision.py says why and how). Builds each named
model (random weights, BatchNorm statistics far from 0 and 1), saves its state
dict the way torchvision publishes weights (torch.save of the state dict, a .pth) and its logits.

    python torchvision_worker.py OUT_DIR TORCHVISION_DIR SIZE NAME [NAME ...]

writes OUT_DIR/images.npy (N x 3 x SIZE x SIZE), OUT_DIR/<name>.pth, OUT_DIR/<name>.logits.npy and
OUT_DIR/versions.json.
"""

import json
import sys
from pathlib import Path

import real_torchvision

real_torchvision.use(sys.argv[2])

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision import models  # noqa: E402

CLASSES, IMAGES = 10, 4


def main() -> None:
    out, size, names = Path(sys.argv[1]), int(sys.argv[3]), sys.argv[4:]
    torch.manual_seed(0)
    images = torch.randn(IMAGES, 3, size, size)
    np.save(out / "images.npy", images.numpy())
    for name in names:
        model = models.get_model(name, num_classes=CLASSES).eval()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.2)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.normal_(1, 0.2)
                    module.bias.normal_(0, 0.2)
            model.classifier[-1].weight.normal_(0, 1)  # logits of a real size (its init has std 0.01)
            torch.save(model.state_dict(), out / f"{name}.pth")
            np.save(out / f"{name}.logits.npy", model(images).numpy())
    versions = json.dumps({"torchvision": torchvision.__version__, "torch": torch.__version__})
    (out / "versions.json").write_text(versions)
    print(versions)


if __name__ == "__main__":
    main()
