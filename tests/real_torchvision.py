"""torchvision 0.28 for the reference-library workers (tests/torchvision_worker.py, tests/timm_worker.py).
Its wheel is a CUDA build: `make install` puts it, without its dependencies, in a folder off the
import path. Its C operators do not load against this CPU torch and its models need none of them;
only the two modules its __init__ imports to register their autograd and meta kernels would fail,
so they are answered with empty modules and everything else imports as published."""

import sys
import types


def use(folder: str) -> None:
    """Make `import torchvision` import the one in `folder`; call before importing it (or timm)."""
    sys.path.insert(0, folder)
    for registrations in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules[registrations] = types.ModuleType(registrations)
