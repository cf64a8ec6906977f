"""The model registry: every model is built by name, with keyword arguments, from one place."""

from __future__ import annotations

from typing import Callable

from torch import nn

from mobilenet.models.base import MobileNet, ModelConfig
from mobilenet.models.layers import ConvBNAct, DepthwiseSeparable, InvertedResidual, make_divisible
from mobilenet.models.v1 import MobileNetV1, conv_mobilenet_v1, mobilenet_v1, shallow_mobilenet_v1
from mobilenet.models.v2 import MobileNetV2, mobilenet_v2
from mobilenet.models.v3 import MobileNetV3, mobilenet_v3_large, mobilenet_v3_small
from mobilenet.models.v4 import MobileNetV4, mobilenet_v4_conv_large, mobilenet_v4_conv_medium, mobilenet_v4_conv_small

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "conv_mobilenet_v1": conv_mobilenet_v1,
    "shallow_mobilenet_v1": shallow_mobilenet_v1,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
    "mobilenet_v4_conv_small": mobilenet_v4_conv_small,
    "mobilenet_v4_conv_medium": mobilenet_v4_conv_medium,
    "mobilenet_v4_conv_large": mobilenet_v4_conv_large,
}


def list_models() -> list[str]:
    """The names `create_model` accepts."""
    return sorted(MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model, e.g. `create_model("mobilenet_v2", width_mult=0.5, num_classes=10)`.

    The model's `config` attribute holds the name and arguments that rebuild it.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return MODELS[name](**kwargs)


__all__ = [
    "ConvBNAct", "DepthwiseSeparable", "InvertedResidual", "MobileNet", "ModelConfig", "MobileNetV1", "MobileNetV2",
    "MobileNetV3", "MobileNetV4", "MODELS", "mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v4_conv_large",
    "mobilenet_v4_conv_medium", "mobilenet_v4_conv_small",
    "conv_mobilenet_v1", "create_model", "list_models", "make_divisible", "mobilenet_v1", "mobilenet_v2",
    "shallow_mobilenet_v1",
]
