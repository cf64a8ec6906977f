"""The published weight files we know: where each lives, how to check it, how it was evaluated.

One table serves both `download` (URL, file name, checksum) and `convert` (the preprocessing the
weights were trained and evaluated with, recorded in the converted checkpoint). Facts come from the
publishers' own code:

- torchvision: `torchvision/models/mobilenetv2.py` and `mobilenetv3.py` (`MobileNet_V2_Weights`,
  `MobileNet_V3_Large_Weights`, `MobileNet_V3_Small_Weights`, torchvision 0.28): IMAGENET1K_V1 is
  evaluated at resize 256 / crop 224, IMAGENET1K_V2 at resize 232 / crop 224, all bilinear,
  ImageNet mean and std. torchvision names files `<name>-<first 8 hex digits of the sha256>.pth`
  (the torch.hub convention), so those 8 digits are what can be verified.
- timm: `timm/models/efficientnet.py` (`default_cfgs`): weights live in the Hugging Face repos
  `timm/<model>.<tag>`. The MobileNet V1 `ra4` weights use mean = std = 0.5 (timm's
  IMAGENET_INCEPTION_MEAN/STD), the V2 ones the ImageNet mean and std; crop 0.875 (0.9 for
  mobilenetv1_125), bicubic. No checksum is published beside them.
- Keras: `keras/src/applications/mobilenet.py` and `mobilenet_v2.py`: files under
  storage.googleapis.com, one per (alpha, resolution); inputs scaled to [-1, 1] (mean = std =
  0.5). Keras loads them without any checksum, and none is published.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # x / 127.5 - 1 on 0..255 pixels is (x / 255 - 0.5) / 0.5
SLIM_CROP = 0.875  # TF-slim's evaluation crop (central_fraction=0.875), the usual 224 of 256

FORMATS = ("torchvision", "timm", "keras")


@dataclass(frozen=True)
class Weights:
    """One published weight file and the preprocessing its accuracy was measured with."""

    format: str
    name: str
    url: str
    filename: str
    arch: str  # our registry name
    width: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resolution: int = 224
    crop_fraction: float = SLIM_CROP
    interpolation: str = "bilinear"
    sha256_prefix: str | None = None  # what the publisher's file name tells of the sha256
    sha256: str | None = None  # the full digest, where known


def _torchvision() -> list[Weights]:
    rows = [  # (arch, tag, the sha256 prefix in the file name, resize side before the 224 crop)
        ("mobilenet_v2", "IMAGENET1K_V1", "b0353104", 256), ("mobilenet_v2", "IMAGENET1K_V2", "7ebf99e0", 232),
        ("mobilenet_v3_large", "IMAGENET1K_V1", "8738ca79", 256), ("mobilenet_v3_large", "IMAGENET1K_V2", "5c1a4163", 232),
        ("mobilenet_v3_small", "IMAGENET1K_V1", "047dcff4", 256),
    ]
    return [Weights(name=f"{arch}.{tag}", format="torchvision", url=f"https://download.pytorch.org/models/{arch}-{digits}.pth",
                    filename=f"{arch}-{digits}.pth", sha256_prefix=digits, arch=arch, width=1.0, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, crop_fraction=224 / resize)
            for arch, tag, digits, resize in rows]


def _timm() -> list[Weights]:
    rows = [  # (hub name, arch, width, mean, std, crop)
        ("mobilenetv1_100.ra4_e3600_r224_in1k", "mobilenet_v1", 1.0, HALF, HALF, 0.875),
        ("mobilenetv1_125.ra4_e3600_r224_in1k", "mobilenet_v1", 1.25, HALF, HALF, 0.9),
        ("mobilenetv2_050.lamb_in1k", "mobilenet_v2", 0.5, IMAGENET_MEAN, IMAGENET_STD, 0.875),
        ("mobilenetv2_100.ra_in1k", "mobilenet_v2", 1.0, IMAGENET_MEAN, IMAGENET_STD, 0.875),
        ("mobilenetv2_140.ra_in1k", "mobilenet_v2", 1.4, IMAGENET_MEAN, IMAGENET_STD, 0.875),
    ]
    return [
        Weights(format="timm", name=name, url=f"https://huggingface.co/timm/{name}/resolve/main/model.safetensors",
                filename=f"{name}.safetensors", arch=arch, width=width, mean=mean, std=std, crop_fraction=crop,
                interpolation="bicubic")
        for name, arch, width, mean, std, crop in rows
    ]


def _keras() -> list[Weights]:
    base = "https://storage.googleapis.com/tensorflow/keras-applications/"
    out = []
    for alpha, text in ((0.25, "2_5"), (0.5, "5_0"), (0.75, "7_5"), (1.0, "1_0")):
        for rows in (128, 160, 192, 224):
            stem = f"mobilenet_{text}_{rows}_tf"
            out.append(Weights(format="keras", name=stem, url=f"{base}mobilenet/{stem}.h5", filename=f"{stem}.h5",
                               arch="mobilenet_v1", width=alpha, mean=HALF, std=HALF, resolution=rows))
    for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
        for rows in (96, 128, 160, 192, 224):
            stem = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}"
            out.append(Weights(format="keras", name=stem, url=f"{base}mobilenet_v2/{stem}.h5", filename=f"{stem}.h5",
                               arch="mobilenet_v2", width=alpha, mean=HALF, std=HALF, resolution=rows))
    return out


WEIGHTS: tuple[Weights, ...] = (*_torchvision(), *_timm(), *_keras())

# Short names: the model alone means its one published ImageNet tag (torchvision: the V1 recipe,
# the one that reproduces the paper).
ALIASES = {
    **{("torchvision", w.arch): w.name for w in WEIGHTS if w.format == "torchvision" and w.name.endswith(".IMAGENET1K_V1")},
    **{("timm", w.name.split(".")[0]): w.name for w in WEIGHTS if w.format == "timm"},
}


def known_weights(source_format: str) -> list[str]:
    """The names `download` accepts for one source format."""
    return [w.name for w in WEIGHTS if w.format == source_format]


def find_weights(source_format: str, name: str) -> Weights | None:
    """The catalogue entry called `name` (or one of its short aliases), or None."""
    name = ALIASES.get((source_format, name), name)
    return next((w for w in WEIGHTS if w.format == source_format and w.name == name), None)


def find_by_filename(source_format: str, filename: str) -> Weights | None:
    """The catalogue entry whose file name (as `download` saves it) is `filename`, or None.

    A Hugging Face `model.safetensors` says nothing of which model it is, hence `download` saves
    timm files as `<model>.<tag>.safetensors`."""
    return next((w for w in WEIGHTS if w.format == source_format and w.filename == filename), None)
