"""The timm side of the real-timm tests, run in its own process: timm 1.0.31 (installed without its
dependencies by `make install`) imports torchvision only for its data pipeline, which is not used
here, and the torchvision wheel does not import against this CPU torch; a stand-in module answers
those imports. Builds each named timm model (random weights, BatchNorm statistics far from 0 and 1),
saves its state dict as safetensors and its own logits on fixed images.

    python timm_worker.py OUT_DIR SIZE NAME [NAME ...]

writes OUT_DIR/images.npy (N x 3 x SIZE x SIZE), OUT_DIR/<name>.safetensors, OUT_DIR/<name>.logits.npy
and OUT_DIR/versions.json.
"""

import importlib.abc
import importlib.machinery
import json
import sys
import types
from pathlib import Path


class _Placeholder(type):
    """Classes whose every missing attribute is a distinct placeholder (enum members, say)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = f"{cls.__name__}.{name}"
        setattr(cls, name, value)
        return value


class _StandIn(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Placeholder(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

CLASSES, IMAGES = 10, 4


def main() -> None:
    out, size, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
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
