"""MobileNet V1 to V4, faithful to the papers, with an exact cost model."""

from mobilenet.checkpoint import load_checkpoint
from mobilenet.cost import cost
from mobilenet.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["cost", "create_model", "list_models", "load_checkpoint", "__version__"]

SUBPACKAGES = ("bench", "convert", "data", "evaluate", "export", "fused", "plots", "train")


def __getattr__(name: str):
    """`mobilenet.export`, `mobilenet.train`, ... imported on first use, as `import mobilenet` then
    `mobilenet.export.inference_model(m)` expects, without making `import mobilenet` pay for them."""
    if name in SUBPACKAGES:
        import importlib

        return importlib.import_module(f"mobilenet.{name}")
    raise AttributeError(f"module 'mobilenet' has no attribute {name!r}")
