"""MobileNet V1 and V2, faithful to the papers, with an exact cost model."""

from mobilenet.checkpoint import load_checkpoint
from mobilenet.cost import cost
from mobilenet.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["cost", "create_model", "list_models", "load_checkpoint", "__version__"]
