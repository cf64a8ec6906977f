"""The timm side of the real-timm tests, run in its own process: timm 1.0.31 (installed without its
dependencies by `make install`) with the torchvision it imports, from its folder off the import path
(tests/reference.py). Builds each named timm model (random weights, BatchNorm statistics far from 0
and 1), saves its state dict as safetensors and its own logits on fixed images.

    python timm_worker.py OUT_DIR TORCHVISION_DIR SIZE NAME [NAME ...]
"""

import sys
from pathlib import Path

import reference

reference.use_torchvision(sys.argv[2])

import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

CLASSES = 10


def save(model: torch.nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path.with_suffix(".safetensors")))


if __name__ == "__main__":
    reference.write_references(Path(sys.argv[1]), int(sys.argv[3]), sys.argv[4:],
                               lambda name: timm.create_model(name, num_classes=CLASSES), save,
                               {"timm": timm.__version__, "torch": torch.__version__})
