"""Evaluation (top-1, top-5, loss, per-class accuracy, confusion) and prediction on image files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mobilenet.data.folder import decode_image, eval_transform, to_mode
from mobilenet.data.loader import Normalize


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    num_images: int
    confusion: torch.Tensor  # rows: true class, columns: predicted class

    @property
    def per_class(self) -> list[float]:
        """Accuracy of each true class (NaN where the split has none of it)."""
        totals = self.confusion.sum(1)
        return (self.confusion.diagonal() / totals.clamp(min=1)).where(totals > 0, torch.nan).tolist()

    def to_dict(self, classes: list[str] | None = None) -> dict:
        names = classes or [str(i) for i in range(len(self.confusion))]
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "num_images": self.num_images,
                "per_class": dict(zip(names, self.per_class)), "confusion": self.confusion.tolist()}


class Tally:
    """Running sums of an evaluation, which distributed runs add across ranks before `result`."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.loss = torch.zeros((), dtype=torch.float64)
        self.correct5 = torch.zeros((), dtype=torch.int64)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        self.loss += F.cross_entropy(logits, labels, reduction="sum").double()
        k = min(5, self.num_classes)
        self.correct5 += (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum()
        index = labels * self.num_classes + logits.argmax(1)
        self.confusion += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, -1)

    def tensors(self) -> list[torch.Tensor]:
        return [self.loss, self.correct5, self.confusion]

    def result(self) -> EvalResult:
        n = int(self.confusion.sum())
        return EvalResult(top1=int(self.confusion.trace()) / max(1, n), top5=int(self.correct5) / max(1, n),
                          loss=float(self.loss) / max(1, n), num_images=n, confusion=self.confusion.clone())


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, *, reduce=None, progress: bool = False,
             flip: bool = False) -> EvalResult:
    """Evaluate `model` over every batch of `loader`. `reduce`, given, sums the tallies of all
    processes of a distributed run in place (so each image is counted once). `progress` shows a
    bar (images/s, ETA) when stderr is a terminal. `flip`: test-time augmentation, the mean of the
    logits of each image and of its mirror image (as airbench evaluates)."""
    was_training = model.training
    model.eval()
    tally = Tally(num_classes)
    with tqdm(total=len(loader.dataset) if hasattr(loader, "dataset") else None, unit="img", desc="evaluating",
              disable=None if progress else True, leave=False, dynamic_ncols=True) as bar:
        for images, labels in loader:
            logits = model(images)
            if flip:
                logits = (logits.float() + model(images.flip(-1)).float()) / 2
            tally.add(logits, labels)
            bar.update(len(labels))
    if reduce is not None:
        for tensor in tally.tensors():
            reduce(tensor)
    model.train(was_training)
    return tally.result()


@torch.no_grad()
def predict_files(model: nn.Module, paths: list[str | os.PathLike], resolution: int, mean, std,
                  classes: list[str], top_k: int, crop_fraction: float) -> list[dict]:
    """Class names and probabilities for each image file, with the evaluation transform: resize
    the short side to resolution / crop_fraction, then centre-crop (1.0: the whole image), in as
    many channels as `mean` has (an RGB photo becomes grey for a grayscale model). A file
    that cannot be decoded gets `{"image": path, "error": message}` in its place."""
    model.eval()
    normalize = Normalize(mean, std, channels_last=False)
    k = max(1, min(top_k, len(classes)))
    results = []
    for path in paths:
        try:
            image = eval_transform(to_mode(decode_image(path), len(mean)), resolution, crop_fraction)
        except ValueError as error:  # one unreadable file does not hide the others' answers
            message = str(error) if str(path) in str(error) else f"image {path}: {error}"
            results.append({"image": str(path), "error": message})
            continue
        x = normalize(image.unsqueeze(0))
        probs = model(x).softmax(1)[0]
        top = probs.topk(k)
        results.append({"image": str(path), "predictions": [
            {"class": classes[i], "index": int(i), "probability": float(p)} for p, i in zip(top.values, top.indices)
        ]})
    return results
