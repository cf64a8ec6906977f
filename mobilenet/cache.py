"""The folder this package keeps things in between runs: named datasets (looked up and downloaded
there), image folders decoded once, the training kernels compiled for this CPU, and what is measured
once per machine (the training step's and `auto`'s runtime decisions)."""

from __future__ import annotations

import os
from pathlib import Path


def folder() -> Path:
    """``$MOBILENET_DATA`` or ``~/.cache/mobilenet``, read at each call (a test or a user may set it late)."""
    return Path(os.environ.get("MOBILENET_DATA") or Path.home() / ".cache" / "mobilenet").expanduser()
