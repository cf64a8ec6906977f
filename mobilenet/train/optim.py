"""Optimizer parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from mobilenet.train.config import TrainConfig


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def parameter_groups(model: nn.Module, weight_decay: float, depthwise_decay: bool = False) -> list[dict]:
    """Split parameters into those that take weight decay and those that do not.

    No decay on depthwise filters (the V1 paper, Section 4: they have so few parameters that decay
    only hurts; `depthwise_decay=True` brings it back), nor on BatchNorm's scale and shift or on
    biases, as in the reference training scripts.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            exempt = param.ndim <= 1 or (is_depthwise(module) and not depthwise_decay)
            (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or the papers' RMSprop (decay 0.9, momentum 0.9).

    TensorFlow's RMSprop adds its epsilon inside the square root; PyTorch's adds it outside, so the
    papers' epsilon of 1e-3 becomes sqrt(1e-3) here.
    """
    groups = parameter_groups(model, config.weight_decay, config.depthwise_decay)
    if config.optimizer == "sgd":
        # PyTorch's fused SGD: one kernel over all parameters, about 4x faster than `foreach` on CPU
        # (a resumed run is exact because the loaded buffers take their parameters' layouts).
        fused = next(model.parameters()).device.type in ("cpu", "cuda")
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
                                    fused=fused, foreach=not fused)
        if fused and config.momentum > 0:
            # The fused kernel cannot mix parameters with and without a momentum buffer (a backbone
            # unfrozen after --freeze-epochs has none yet). Zero buffers from the start are the same
            # mathematics: with no dampening the first update makes the buffer the gradient.
            for group in optimizer.param_groups:
                for param in group["params"]:
                    optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param)
        return optimizer
    return torch.optim.RMSprop(groups, lr=config.lr, alpha=0.9, momentum=config.momentum, eps=math.sqrt(1e-3),
                               foreach=True)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a global optimisation step: a pure function, so a resumed run needs no
    scheduler state. Linear warm-up, then cosine decay to zero, or x`lr_gamma` per epoch."""
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "exponential":
        return config.lr * config.lr_gamma ** (step // steps_per_epoch)
    total = config.epochs * steps_per_epoch
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * config.lr * (1 + math.cos(math.pi * min(1.0, progress)))


RESIZE_STEP = 4  # pixels between the sides progressive resizing trains at (FFCV: 32 at ImageNet's 160-192)


def resolution_at(config: TrainConfig, epoch: int, full: int) -> int:
    """The side the training images of `epoch` (from 0) are resized to: `config.min_resolution`
    until the fraction `resize_start` of the epochs, growing linearly to `full` by `resize_end`,
    in steps of RESIZE_STEP pixels, then `full` (FFCV's progressive resizing). A pure function of
    the epoch, so a resumed run trains each epoch at the side it would have."""
    if config.min_resolution is None:
        return full
    start, end = config.resize_start * config.epochs, config.resize_end * config.epochs
    progress = 1.0 if epoch >= end else 0.0 if epoch <= start else (epoch - start) / (end - start)
    grown = config.min_resolution + RESIZE_STEP * round(progress * (full - config.min_resolution) / RESIZE_STEP)
    return min(full, grown)
