"""The one accuracy guard for every reduced-precision artefact: INT8 and bf16, exported or chosen.

Reduced precision changes the arithmetic, so such a model is judged by what matters to its user:
the share of the model's own test images whose top-1 class is the same as fp32's. One threshold,
`MIN_AGREEMENT`, serves every place that asks the question: `mobilenet export --int8` (ONNX,
OpenVINO, ExecuTorch, LiteRT), the `auto` runtime of eval, predict and bench, and a cached `auto`
decision, which is re-checked against it when read. `--min-agreement` changes it for one command;
below it an export writes nothing unless `--force` is given, and then says the figure.
"""

from __future__ import annotations

import sys

MIN_AGREEMENT = 0.99  # top-1 agreement with fp32 that a reduced-precision model must reach


def check_min_agreement(value: float | None) -> float:
    """The threshold to use: `value` (a fraction from 0 to 1) or `MIN_AGREEMENT` when None."""
    if value is None:
        return MIN_AGREEMENT
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"the minimum top-1 agreement is a fraction from 0 to 1 (e.g. 0.98), got {value!r}")
    return float(value)


def passes(agreement: float, min_agreement: float | None = None) -> bool:
    return agreement >= check_min_agreement(min_agreement)


def describe_shortfall(agreement: float, images: int, min_agreement: float | None = None) -> str:
    return (f"top-1 agreement with fp32 {100 * agreement:.2f}% on {images} test images is below the "
            f"{100 * check_min_agreement(min_agreement):.2f}% required (--min-agreement)")


def guard(agreement: float, images: int, what: str, *, min_agreement: float | None = None,
          force: bool = False) -> None:
    """ValueError (so that nothing is written) if `what` (a file about to be written) agrees with
    fp32 on fewer than the required share of `images`; with `force`, a warning instead."""
    if passes(agreement, min_agreement):
        return
    message = f"{what}: {describe_shortfall(agreement, images, min_agreement)}"
    if not force:
        raise ValueError(f"{message}; nothing written (--force writes it anyway)")
    print(f"mobilenet: warning: {message}; written anyway (--force)", file=sys.stderr)


__all__ = ["MIN_AGREEMENT", "check_min_agreement", "describe_shortfall", "guard", "passes"]
