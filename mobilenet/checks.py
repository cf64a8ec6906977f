"""The small checks and message helpers every layer shares, each worded once: a whole number in a
range, an image side in pixels, a short list of names, an error's first line."""

from __future__ import annotations

import dataclasses

MAX_RESOLUTION = 4096  # pixels a side: 8x ImageNet's 512; one such image is already 200 MB of activations


def whole_number(value, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` if it is an int (not a bool) in [minimum, maximum], else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        if maximum is not None:
            wanted = f"a whole number from {minimum} to {maximum}"
        else:
            wanted = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value


def check_resolution(resolution: int) -> int:
    """An input side in pixels (a model's own minimum is `mobilenet.cost.check_resolution`)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be a whole number of pixels from 1 to {MAX_RESOLUTION}, got {resolution!r}")
    return resolution


def some(names, limit: int = 5) -> str:
    """The first `limit` names, comma-separated, with ', ...' when there are more."""
    names = [str(name) for name in names]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def dataclass_fields(cls, data, what: str) -> dict:
    """`data` if it is a JSON object with no key `cls` (a dataclass) lacks and every key `cls`
    needs (a field without a default), else ValueError saying which, in terms of `what`."""
    if not isinstance(data, dict):
        raise ValueError(f"a {what} is a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} options: {', '.join(unknown)}")
    missing = sorted(f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING and f.name not in data)
    if missing:
        raise ValueError(f"the {what} lacks {', '.join(missing)}")
    return data


def comma_list(text: str) -> list[str]:
    """`a, b,c` as ['a', 'b', 'c']: how the command line takes a list of names."""
    return [name.strip() for name in text.split(",") if name.strip()]


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an error's message (its type's name if it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text[:limit] if limit else text


__all__ = ["MAX_RESOLUTION", "check_resolution", "comma_list", "dataclass_fields", "first_line", "some", "whole_number"]
