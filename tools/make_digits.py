"""One-off generator of ``mobilenet/data/digits.npz``, the embedded default dataset.

The shipped file was made with this script; it is kept so that the file can be reproduced, not
run at install or load time. scikit-learn is needed only here and is imported lazily, so it is
not a dependency of the package. To regenerate::

    python3 -m venv /tmp/skl && /tmp/skl/bin/pip install scikit-learn numpy
    /tmp/skl/bin/python tools/make_digits.py

Source: the UCI "Optical Recognition of Handwritten Digits" data (Alpaydin and Kaynak, 1998),
test part, as shipped with scikit-learn (``sklearn/datasets/data/digits.csv.gz``): 1,797 images
of 8x8 pixels with values 0..16, ten classes. Licence: CC BY 4.0.

The split is fixed in the file so that every user trains and evaluates on the same images:
360 test images (20%), stratified by class (each class's share of the 360 is proportional to its
size, rounded by largest remainder so that the shares sum to exactly 360), chosen by a
``numpy.random.default_rng(SEED)`` permutation within each class. Both splits keep the original
order of the images. The zip is written with fixed timestamps so the file is byte-reproducible.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

SEED = 0
TEST_SIZE = 360
OUTPUT = Path(__file__).resolve().parent.parent / "mobilenet" / "data" / "digits.npz"


def stratified_test_indices(labels: np.ndarray, test_size: int, seed: int) -> np.ndarray:
    """Indices of a test set of ``test_size`` images with each class in proportion to its size."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * test_size / len(labels)
    quotas = np.floor(exact).astype(int)
    # Largest remainder: the classes whose exact share lost most to rounding get one more image.
    shortfall = test_size - quotas.sum()
    quotas[np.argsort(-(exact - quotas), kind="stable")[:shortfall]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quotas)]
    return np.sort(np.concatenate(picked))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed ``.npz`` with fixed timestamps (byte-reproducible), atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, array in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buf.getvalue(), compresslevel=9)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; the shipped file is for everyone
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> None:
    """Read scikit-learn's copy of the digits, split it and write ``digits.npz``."""
    from sklearn.datasets import load_digits  # only this one-off script needs scikit-learn

    images, labels = load_digits(return_X_y=True)
    images = images.reshape(-1, 8, 8).astype(np.uint8)
    labels = labels.astype(np.uint8)
    test = stratified_test_indices(labels, TEST_SIZE, SEED)
    train = np.setdiff1d(np.arange(len(labels)), test)
    write_npz(
        OUTPUT,
        {
            "train_images": images[train],
            "train_labels": labels[train],
            "test_images": images[test],
            "test_labels": labels[test],
        },
    )
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes): {len(train)} train, {len(test)} test")


if __name__ == "__main__":
    main()
