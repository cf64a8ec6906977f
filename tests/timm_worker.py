"""The timm side of the real-timm tests, run in its own process: timm 1.0.31 (installed without its
dependencies by `make install`) with the torchvision it imports, from its folder off the import path
(tests/real_torchvision.py).
Builds each named timm model (random weights, BatchNorm statistics far from 0 and 1), saves its
state dict as safetensors and its own logits on fixed images.

    python timm_worker.py OUT_DIR TORCHVISION_DIR SIZE NAME [NAME ...]

writes OUT_DIR/images.npy (N x 3 x SIZE x SIZE), OUT_DIR/<name>.safetensors, OUT_DIR/<name>.logits.npy
and OUT_DIR/versions.json.
"""

import json
import sys
from pathlib import Path

import real_torchvision

real_torchvision.use(sys.argv[2])

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

CLASSES, IMAGES = 10, 4


def main() -> None:
    out, size, names = Path(sys.argv[1]), int(sys.argv[3]), sys.argv[4:]
    torch.manual_seed(0)
    images = torch.randn(IMAGES, 3, size, size)
    np.save(out / "images.npy", images.numpy())
    for name in names:
        model = timm.create_model(name, num_classes=CLASSES).eval()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.2)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.normal_(1, 0.2)
                    module.bias.normal_(0, 0.2)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{name}.safetensors"))
            np.save(out / f"{name}.logits.npy", model(images).numpy())
    versions = json.dumps({"timm": timm.__version__, "torch": torch.__version__})
    (out / "versions.json").write_text(versions)
    print(versions)


if __name__ == "__main__":
    main()
