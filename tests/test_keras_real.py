"""Keras files as the real Keras 3 library writes them, converted and compared with Keras's own
forward pass. The Keras side runs in its own process (tests/keras_worker.py): importing Keras
sets torch state (threads) that the rest of the suite must not inherit.

Every Keras 3 format is written by the installed library: `.weights.h5`, `.keras` (a zip holding
`model.weights.h5`) and the legacy full-model `.h5`. Keras 2 weights files, which Keras 3 cannot
write, are covered by the hand-built fixtures of test_convert.py.
"""

import importlib.util
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenet.convert import import_weights
from runs import Worker

keras_installed = importlib.util.find_spec("keras") is not None  # found, not imported (see above)
pytestmark = [pytest.mark.skipif(not keras_installed and not os.environ.get("CI"),
                                 reason="keras (a test dependency: make install) is not installed"),
              pytest.mark.xdist_group("keras")]  # one xdist worker starts the worker process

SIZE = 64  # a multiple of 32: Keras MobileNet pads bottom/right, which is TensorFlow 'SAME' at such sizes
WIDTHS = {"mobilenet_v1": ("0.25", "0.5", "0.75", "1.0"),  # every alpha keras.applications offers
          "mobilenet_v2": ("0.35", "0.5", "0.75", "1.0", "1.3", "1.4"),
          "mobilenet_v3_large": ("0.75", "1.0"), "mobilenet_v3_small": ("0.75", "1.0")}
FORMATS = (".weights.h5", ".keras", ".h5")
MODELS = [(arch, alpha) for arch, alphas in WIDTHS.items() for alpha in alphas]
# every width in the weights file; the other containers (which hold the same weights under the same
# layer names, whatever the width) for each architecture's first width: a third of the Keras side's time
CASES = [(arch, alpha, suffix) for arch, alpha in MODELS for suffix in FORMATS
         if suffix == FORMATS[0] or alpha == WIDTHS[arch][0]]


# the Keras side (~14 s, mostly importing Keras), started as this file is collected
KERAS = Worker("keras_worker.py", str(SIZE), *(f"{arch}:{alpha}:" + ",".join(s for a, w, s in CASES if (a, w) == (arch, alpha))
                                               for arch, alpha in MODELS)) if keras_installed else None


@pytest.fixture(scope="module")
def keras_files():
    return KERAS.files()


@pytest.fixture(scope="module", autouse=True)
def keras_versions(keras_files):
    versions = json.loads((keras_files / "versions.json").read_text())
    assert versions["backend"] == "torch" and versions["keras"].startswith("3.")


@pytest.mark.parametrize("arch, alpha, suffix", CASES)
def test_real_keras_files_give_kerass_logits(keras_files, arch, alpha, suffix):
    imported = import_weights(keras_files / f"{arch}_{alpha}{suffix}", "keras")
    assert imported.meta.config.name == arch and imported.meta.config.width_mult == float(alpha)
    assert imported.meta.num_classes == 10
    images = torch.from_numpy(np.load(keras_files / "images.npy")).permute(0, 3, 1, 2)
    with torch.no_grad():
        ours = imported.model.eval()(images).numpy()
    theirs = np.load(keras_files / f"{arch}_{alpha}.logits.npy")
    assert np.abs(theirs).max() > 1.0  # logits of a real size, so 1e-4 is a real bound
    assert np.abs(ours - theirs).max() <= 1e-4


def test_a_keras3_file_is_numbered_not_named(keras_files):
    """What the real file holds: Keras's per-class names (the reason this reader exists)."""
    import h5py

    with h5py.File(keras_files / "mobilenet_v1_1.0.weights.h5") as f:
        layers = set(f["layers"])
    assert {"conv2d", "conv2d_14", "depthwise_conv2d_12", "batch_normalization_26"} <= layers
    assert not {"conv1", "conv_dw_1", "conv_preds"} & layers


def rewrite(source: Path, target: Path, change) -> Path:
    """A copy of a Keras 3 weights file with `change(layers_group)` applied."""
    import h5py

    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as f:
        change(f["layers"])
    return target


def test_a_sequence_that_does_not_fit_is_refused_naming_the_first_mismatch(keras_files, tmp_path):
    source = keras_files / "mobilenet_v1_0.25.weights.h5"

    def drop_last_bn(layers):
        del layers["batch_normalization_26"]

    with pytest.raises(ValueError, match=r"batch_normalization layer 27 of 27 \(conv_pw_13_bn\) is missing"):
        import_weights(rewrite(source, tmp_path / "a.weights.h5", drop_last_bn), "keras")

    def one_more_conv(layers):
        layers.copy(layers["conv2d_14"], "conv2d_15")

    with pytest.raises(ValueError, match="conv2d_15 is one conv2d more than its 15"):
        import_weights(rewrite(source, tmp_path / "b.weights.h5", one_more_conv), "keras")

    def swap_two_pointwise(layers):  # the 3rd and 4th 1x1 convolutions change places: shapes no longer fit
        layers.move("conv2d_3", "tmp")
        layers.move("conv2d_4", "conv2d_3")
        layers.move("tmp", "conv2d_4")

    with pytest.raises(ValueError, match=r"shape mismatch: 'layers/conv2d_3/vars/0 \(conv_pw_3\)'"):
        import_weights(rewrite(source, tmp_path / "c.weights.h5", swap_two_pointwise), "keras")


def test_a_keras_zip_without_weights_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(ValueError, match="without model.weights.h5"):
        import_weights(tmp_path / "m.keras", "keras")


def test_the_convert_command_takes_a_keras_zip(keras_files, tmp_path, capsys):
    from mobilenet.checkpoint import load_checkpoint
    from mobilenet.cli import main

    output = tmp_path / "v2.safetensors"
    assert main(["convert", str(keras_files / "mobilenet_v2_0.35.keras"), "--from", "keras", "--output", str(output)]) == 0
    assert "mobilenet_v2 width 0.35, 10 classes" in capsys.readouterr().out
    model = load_checkpoint(output)
    images = torch.from_numpy(np.load(keras_files / "images.npy")).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert np.abs(model(images).numpy() - np.load(keras_files / "mobilenet_v2_0.35.logits.npy")).max() <= 1e-4
