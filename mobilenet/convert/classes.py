"""The 1000 ImageNet-1k class names, in the standard index order of every ImageNet classifier.

`mobilenet/data/imagenet_classes.txt` holds one name per line, index 0 ('tench') to 999 ('toilet
tissue'): torchvision's `_IMAGENET_CATEGORIES` (`torchvision/models/_meta.py`), which is the Keras
`imagenet_class_index.json` order with underscores as spaces and two duplicate names made unique
(134 'crane bird' beside 517 'crane', 639 'maillot tank suit' beside 638 'maillot').
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CLASSES_FILE = Path(__file__).resolve().parent.parent / "data" / "imagenet_classes.txt"


@lru_cache(maxsize=1)
def _read() -> tuple[str, ...]:
    names = tuple(line.strip() for line in CLASSES_FILE.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != 1000:
        raise ValueError(f"{CLASSES_FILE} should hold 1000 class names, one per line; it holds {len(names)}")
    return names


def imagenet_classes() -> list[str]:
    """The ImageNet-1k class names, index 0 to 999 (a new list each call)."""
    return list(_read())
