"""The Keras side of the real-Keras tests, run in its own process (Keras sets torch state such as
threads when imported): build `keras.applications.MobileNet` / `MobileNetV2` / `MobileNetV3Large` /
`MobileNetV3Small` without weights,
give every weight and every BatchNorm statistic random values, save the model in each format
Keras 3 writes, and record Keras's own logits on fixed images.

    python keras_worker.py OUT_DIR SIZE ARCH:ALPHA:SUFFIXES [ARCH:ALPHA:SUFFIXES ...]

writes OUT_DIR/images.npy (N x SIZE x SIZE x 3, NHWC as Keras takes them), and for each model
OUT_DIR/<arch>_<alpha><suffix> for each of its SUFFIXES (comma-separated: .weights.h5, .keras, .h5)
and OUT_DIR/<arch>_<alpha>.logits.npy, and writes
(and prints) one JSON line with the Keras version in OUT_DIR/versions.json.
"""

import json
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402

CLASSES = 10
IMAGES = 4
APPLICATIONS = {"mobilenet_v1": keras.applications.MobileNet, "mobilenet_v2": keras.applications.MobileNetV2,
                "mobilenet_v3_large": keras.applications.MobileNetV3Large,
                "mobilenet_v3_small": keras.applications.MobileNetV3Small}


def randomise(model: keras.Model, rng: np.random.Generator) -> None:
    """Random weights everywhere, and BatchNorm statistics far from 0 and 1, so that a mapping
    that mixes up two layers, two roles or a transposition shows in the logits."""
    for layer in model.layers:
        values = []
        for weight in layer.weights:
            shape, name = tuple(weight.shape), weight.path.rsplit("/", 1)[-1]
            if name == "moving_variance":
                values.append(rng.uniform(0.5, 2.0, shape))
            elif name in ("gamma", "moving_mean", "beta"):
                values.append(rng.normal(1.0 if name == "gamma" else 0.0, 0.2, shape))
            else:
                fan_in = int(np.prod(shape[:-1])) or 1
                values.append(rng.normal(0.0, (2.0 / fan_in) ** 0.5, shape))
        if values:
            layer.set_weights([v.astype(np.float32) for v in values])


def main() -> None:
    out, size, specs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    rng = np.random.default_rng(0)
    images = rng.uniform(-1.0, 1.0, (IMAGES, size, size, 3)).astype(np.float32)
    np.save(out / "images.npy", images)
    for spec in specs:
        arch, alpha, suffixes = spec.split(":")
        model = APPLICATIONS[arch](input_shape=(size, size, 3), alpha=float(alpha), weights=None, classes=CLASSES,
                                   classifier_activation=None)
        randomise(model, rng)
        stem = out / f"{arch}_{alpha}"
        for suffix in suffixes.split(","):  # .h5: the legacy full-model HDF5 format, which Keras 3 still writes
            model.save_weights(f"{stem}{suffix}") if suffix == ".weights.h5" else model.save(f"{stem}{suffix}")
        # MobileNetV3 rescales 0..255 to -1..1 itself (include_preprocessing): the same images, given as pixels
        pixels = (images + 1.0) * 127.5 if arch.startswith("mobilenet_v3") else images
        logits = keras.ops.convert_to_numpy(model(pixels, training=False))
        np.save(f"{stem}.logits.npy", logits)
    versions = json.dumps({"keras": keras.__version__, "backend": keras.backend.backend()})
    (out / "versions.json").write_text(versions)
    print(versions)


if __name__ == "__main__":
    main()
