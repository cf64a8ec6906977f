"""Weight import from torchvision, timm and Keras, checked without their libraries.

The source libraries cannot be imported here, so each test writes a weights file with exactly the
names, shapes and layouts of the source (random values, random BatchNorm statistics too), converts
it, and compares our model's output with a forward pass written here, independently: functional
ops that follow the source's own conventions and read the source's tensors by the source's names.
Where each layout comes from:

- torchvision: `torchvision/models/mobilenetv2.py` (pytorch/vision): `features.N` Sequentials,
  `inverted_residual_setting` (t, c, n, s), `_make_divisible`, ReLU6, BatchNorm eps 1e-5.
- timm: `timm/models/efficientnet.py` `_gen_mobilenet_v1` / `_gen_mobilenet_v2` and
  `_efficientnet_blocks.py` / `_efficientnet_builder.py` (huggingface/pytorch-image-models):
  `conv_stem`/`bn1`, `blocks.S.I.{conv_dw,bn1,conv_pw,bn2}` ('dsa': ReLU6 after bn2, no shortcut),
  `blocks.S.I.{conv_pw,bn1,conv_dw,bn2,conv_pwl,bn3}`, `conv_head`/`bn2`, `classifier`; widths by
  `round_channels`; ReLU6; eps 1e-5.
- Keras: `keras/src/applications/mobilenet.py` and `mobilenet_v2.py` (keras-team/keras) for layer
  names, HWIO kernels, BatchNormalization eps 1e-3, ReLU6, ZeroPadding2D((0, 1), (0, 1)) /
  `correct_pad` before stride-2 'valid' convolutions, 'same' elsewhere; the published V2 files name
  the classifier 'Logits' (keras_applications). HDF5 layouts built here, which the installed
  Keras 3 cannot write: Keras 2 `save_weights` (`layer_names` / `weight_names` attributes,
  `<layer>/<layer>/kernel:0`), Keras 2 `save` (the same under `model_weights`), TF-Keras 2.13
  `.weights.h5` (`_layer_checkpoint_dependencies/<class>_<n>/vars/<i>`). Every format Keras 3
  writes is tested against files the real library wrote, in test_keras_real.py.
"""

import functools
import math
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobilenet.checkpoint import load_checkpoint
from mobilenet.convert import convert, download, find_weights, imagenet_classes, import_weights
from mobilenet.convert.download import file_sha256

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is as fast, and does not spin when the machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the sources' channel rules, written from their code ------------------------------------------


def make_divisible(v, divisor=8):
    """torchvision `_make_divisible`, timm `make_divisible`, Keras `_make_divisible` (one rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


V2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
V1_TIMM_ARCH = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]  # c, repeats, first stride
V1_KERAS_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class Random:
    """Random source tensors: He-scaled kernels, BatchNorm with non-trivial statistics."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, *shape, std=1.0):
        return torch.randn(*shape, generator=self.g) * std

    def uniform(self, *shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=self.g)

    def bn(self, c):
        return dict(weight=self.uniform(c, low=0.5, high=1.5), bias=self.normal(c, std=0.2),
                    mean=self.normal(c, std=0.2), var=self.uniform(c, low=0.5, high=2.0))


def bn_eval(x, w, b, mean, var, eps, channel_dim=1):
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * w.view(shape) + b.view(shape)


# --- torchvision MobileNetV2 ----------------------------------------------------------------------


def torchvision_v2_state(width, num_classes, seed=0):
    r, sd = Random(seed), {}

    def conv_bn(conv, bn, out, inp, k, groups=1):
        sd[f"{conv}.weight"] = r.normal(out, inp // groups, k, k, std=math.sqrt(2 / (inp // groups * k * k)))
        stats = r.bn(out)
        sd.update({f"{bn}.weight": stats["weight"], f"{bn}.bias": stats["bias"], f"{bn}.running_mean": stats["mean"],
                   f"{bn}.running_var": stats["var"], f"{bn}.num_batches_tracked": torch.tensor(12345)})

    inp, last = make_divisible(32 * width), make_divisible(1280 * max(1.0, width))
    conv_bn("features.0.0", "features.0.1", inp, 3, 3)
    i = 1
    for t, c, n, s in V2_SETTING:
        out = make_divisible(c * width)
        for _ in range(n):
            hidden, p = int(round(inp * t)), f"features.{i}.conv"
            if t != 1:
                conv_bn(f"{p}.0.0", f"{p}.0.1", hidden, inp, 1)
            dw, proj = (f"{p}.1", 2) if t != 1 else (f"{p}.0", 1)
            conv_bn(f"{dw}.0", f"{dw}.1", hidden, hidden, 3, groups=hidden)
            conv_bn(f"{p}.{proj}", f"{p}.{proj + 1}", out, hidden, 1)
            inp, i = out, i + 1
    conv_bn(f"features.{i}.0", f"features.{i}.1", last, inp, 1)
    sd["classifier.1.weight"] = r.normal(num_classes, last, std=0.05)
    sd["classifier.1.bias"] = r.normal(num_classes, std=0.1)
    return sd


def torchvision_v2_forward(sd, x):
    """torchvision's MobileNetV2.forward, functionally: Conv2dNormActivation pads (k - 1) // 2."""

    def cna(x, conv, bn, stride=1, act=True):
        w = sd[f"{conv}.weight"]
        groups = x.shape[1] if w.shape[1] == 1 and w.shape[0] == x.shape[1] and w.shape[-1] == 3 else 1
        y = F.conv2d(x, w, stride=stride, padding=(w.shape[-1] - 1) // 2, groups=groups)
        y = bn_eval(y, sd[f"{bn}.weight"], sd[f"{bn}.bias"], sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], 1e-5)
        return y.clamp(0, 6) if act else y

    x = cna(x, "features.0.0", "features.0.1", stride=2)
    i = 1
    for t, _, n, s in V2_SETTING:
        for j in range(n):
            p, stride, y = f"features.{i}.conv", (s if j == 0 else 1), x
            if t != 1:
                y = cna(y, f"{p}.0.0", f"{p}.0.1")
            dw, proj = (f"{p}.1", 2) if t != 1 else (f"{p}.0", 1)
            y = cna(y, f"{dw}.0", f"{dw}.1", stride=stride)
            y = cna(y, f"{p}.{proj}", f"{p}.{proj + 1}", act=False)
            x = x + y if stride == 1 and y.shape == x.shape else y
            i += 1
    x = cna(x, f"features.{i}.0", f"features.{i}.1")
    return F.linear(x.mean((2, 3)), sd["classifier.1.weight"], sd["classifier.1.bias"])


# --- timm mobilenetv1_* / mobilenetv2_* -----------------------------------------------------------


def timm_blocks(arch, width):
    """timm's decoded arch_def: (type, out_chs, stride, exp_ratio) per block, stage by stage."""
    if arch == "v1":
        return [[("dsa", make_divisible(c * width), s if j == 0 else 1, 1) for j in range(r)] for c, r, s in V1_TIMM_ARCH]
    out = []
    for t, c, n, s in V2_SETTING:
        kind = "ds" if t == 1 else "ir"
        out.append([(kind, make_divisible(c * width), s if j == 0 else 1, t) for j in range(n)])
    return out


def timm_state(arch, width, num_classes, seed=0):
    r, sd = Random(seed), {}

    def conv(name, out, inp, k, groups=1):
        sd[f"{name}.weight"] = r.normal(out, inp // groups, k, k, std=math.sqrt(2 / (inp // groups * k * k)))

    def bn(name, c):
        s = r.bn(c)
        sd.update({f"{name}.weight": s["weight"], f"{name}.bias": s["bias"], f"{name}.running_mean": s["mean"],
                   f"{name}.running_var": s["var"], f"{name}.num_batches_tracked": torch.tensor(7)})

    inp = make_divisible(32 * width)
    conv("conv_stem", inp, 3, 3)
    bn("bn1", inp)
    for si, stage in enumerate(timm_blocks(arch, width)):
        for bi, (kind, out, _, t) in enumerate(stage):
            p = f"blocks.{si}.{bi}"
            if kind in ("ds", "dsa"):
                conv(f"{p}.conv_dw", inp, inp, 3, groups=inp), bn(f"{p}.bn1", inp)
                conv(f"{p}.conv_pw", out, inp, 1), bn(f"{p}.bn2", out)
            else:
                mid = make_divisible(inp * t)
                conv(f"{p}.conv_pw", mid, inp, 1), bn(f"{p}.bn1", mid)
                conv(f"{p}.conv_dw", mid, mid, 3, groups=mid), bn(f"{p}.bn2", mid)
                conv(f"{p}.conv_pwl", out, mid, 1), bn(f"{p}.bn3", out)
            inp = out
    if arch == "v2":
        head = max(1280, make_divisible(1280 * width))
        conv("conv_head", head, inp, 1), bn("bn2", head)
        inp = head
    sd["classifier.weight"] = r.normal(num_classes, inp, std=0.05)
    sd["classifier.bias"] = r.normal(num_classes, std=0.1)
    return sd


def timm_forward(sd, x, arch, width):
    """timm's EfficientNet.forward for these blocks: BatchNormAct2d (eps 1e-5, ReLU6), symmetric pads."""

    def conv(x, name, stride=1):
        w = sd[f"{name}.weight"]
        groups = x.shape[1] if w.shape[1] == 1 and w.shape[-1] == 3 else 1
        return F.conv2d(x, w, stride=stride, padding=(w.shape[-1] - 1) // 2, groups=groups)

    def bn(x, name, act=True):
        y = bn_eval(x, sd[f"{name}.weight"], sd[f"{name}.bias"], sd[f"{name}.running_mean"], sd[f"{name}.running_var"], 1e-5)
        return y.clamp(0, 6) if act else y

    x = bn(conv(x, "conv_stem", 2), "bn1")
    for si, stage in enumerate(timm_blocks(arch, width)):
        for bi, (kind, out, stride, _) in enumerate(stage):
            p, shortcut = f"blocks.{si}.{bi}", x
            if kind in ("ds", "dsa"):
                x = bn(conv(x, f"{p}.conv_dw", stride), f"{p}.bn1")
                x = bn(conv(x, f"{p}.conv_pw"), f"{p}.bn2", act=kind == "dsa")
                has_skip = kind == "ds" and stride == 1 and shortcut.shape == x.shape  # 'dsa' is noskip
            else:
                x = bn(conv(x, f"{p}.conv_pw"), f"{p}.bn1")
                x = bn(conv(x, f"{p}.conv_dw", stride), f"{p}.bn2")
                x = bn(conv(x, f"{p}.conv_pwl"), f"{p}.bn3", act=False)
                has_skip = stride == 1 and shortcut.shape == x.shape
            if has_skip:
                x = x + shortcut
    if arch == "v2":
        x = bn(conv(x, "conv_head"), "bn2")
    return F.linear(x.mean((2, 3)), sd["classifier.weight"], sd["classifier.bias"])


# --- Keras applications MobileNet / MobileNetV2 ---------------------------------------------------


def keras_layers(arch, alpha, num_classes, seed=0, classifier="Logits"):
    """[(layer name, [(weight role, array)])] in model order, as Keras builds them; weightless
    layers (input, padding, ReLU, add, pooling) included with no weights, as in real files."""
    r = Random(seed)
    layers = [("input_1", [])]

    def conv(name, out, inp, k):
        layers.append((name, [("kernel", r.normal(k, k, inp, out, std=math.sqrt(2 / (inp * k * k))).numpy())]))

    def dwconv(name, c):
        layers.append((name, [("depthwise_kernel", r.normal(3, 3, c, 1, std=math.sqrt(2 / 9)).numpy())]))

    def bn(name, c):
        s = r.bn(c)
        layers.append((name, [("gamma", s["weight"].numpy()), ("beta", s["bias"].numpy()),
                              ("moving_mean", s["mean"].numpy()), ("moving_variance", s["var"].numpy())]))

    def nothing(name):
        layers.append((name, []))

    if arch == "v1":
        c = int(32 * alpha)
        conv("conv1", c, 3, 3), bn("conv1_bn", c), nothing("conv1_relu")
        for block_id, (filters, stride) in enumerate(V1_KERAS_BLOCKS, start=1):
            out = int(filters * alpha)
            if stride == 2:
                nothing(f"conv_pad_{block_id}")
            dwconv(f"conv_dw_{block_id}", c), bn(f"conv_dw_{block_id}_bn", c), nothing(f"conv_dw_{block_id}_relu")
            conv(f"conv_pw_{block_id}", out, c, 1), bn(f"conv_pw_{block_id}_bn", out), nothing(f"conv_pw_{block_id}_relu")
            c = out
        nothing("global_average_pooling2d"), nothing("dropout")
        layers.append(("conv_preds", [("kernel", r.normal(1, 1, c, num_classes, std=0.05).numpy()),
                                      ("bias", r.normal(num_classes, std=0.1).numpy())]))
        nothing("reshape_2"), nothing("predictions")
        return layers
    c = make_divisible(32 * alpha)
    conv("Conv1", c, 3, 3), bn("bn_Conv1", c), nothing("Conv1_relu")
    block_id = 0
    for t, filters, n, s in V2_SETTING:
        for j in range(n):
            out = make_divisible(int(filters * alpha))
            prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
            hidden = c
            if block_id:
                hidden = t * c
                conv(f"{prefix}expand", hidden, c, 1), bn(f"{prefix}expand_BN", hidden), nothing(f"{prefix}expand_relu")
            if (s if j == 0 else 1) == 2:
                nothing(f"{prefix}pad")
            dwconv(f"{prefix}depthwise", hidden), bn(f"{prefix}depthwise_BN", hidden), nothing(f"{prefix}depthwise_relu")
            conv(f"{prefix}project", out, hidden, 1), bn(f"{prefix}project_BN", out)
            c, block_id = out, block_id + 1
    last = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    conv("Conv_1", last, c, 1), bn("Conv_1_bn", last), nothing("out_relu"), nothing("global_average_pooling2d")
    layers.append((classifier, [("kernel", r.normal(last, num_classes, std=0.05).numpy()),
                                ("bias", r.normal(num_classes, std=0.1).numpy())]))
    return layers


def keras_kind(name, weights) -> str:
    """The Keras class of a layer, as Keras's per-class names spell it."""
    roles = [role for role, _ in weights]
    if roles[:1] == ["gamma"]:
        return "batch_normalization"
    if roles[:1] == ["depthwise_kernel"]:
        return "depthwise_conv2d"
    return "dense" if name in ("Logits", "predictions") else "conv2d" if roles else "re_lu"


def write_keras(path, layers, layout):
    """Write `layers` as Keras 2 `save_weights` ('keras2'), Keras 2 `save` ('model') or TF-Keras
    2.13's `save_weights` ('keras2.13') would. Real Keras 3 files are written by Keras itself in
    test_keras_real.py; TF-Keras 2.13 used the same layout under `_layer_checkpoint_dependencies`
    (layers named per class and numbered in creation order), which Keras 3 still reads and cannot
    write, so it is built here."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        if layout == "keras2.13":
            f.create_group("vars")
            counts = {}
            for name, weights in layers:
                kind = keras_kind(name, weights)
                number = counts[kind] = counts.get(kind, -1) + 1
                group = f.create_group(f"_layer_checkpoint_dependencies/{kind}{f'_{number}' if number else ''}/vars")
                for i, (_, array) in enumerate(weights):
                    group.create_dataset(str(i), data=array)
            return
        root = f.create_group("model_weights") if layout == "model" else f
        if layout == "model":
            f.attrs["model_config"] = "{}"
        root.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        root.attrs["backend"], root.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for name, weights in layers:
            group = root.create_group(name)
            names = [f"{name}/{role}:0" for role, _ in weights]
            group.attrs["weight_names"] = np.array([n.encode() for n in names])
            for weight_name, (_, array) in zip(names, weights):
                group.create_dataset(weight_name, data=array)  # h5py makes <layer>/<layer>/kernel:0


def tf_same(size, k, s):
    """TensorFlow 'SAME': output ceil(size / s), the odd pixel of padding at the end."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def keras_forward(layers, x_nchw, arch):
    """The Keras model, in NHWC with HWIO kernels as Keras computes it, and Keras's padding layers."""
    w = {name: dict(weights) for name, weights in layers}
    x = x_nchw.permute(0, 2, 3, 1)

    def pad(x, top, bottom, left, right):
        return F.pad(x, (0, 0, left, right, top, bottom))

    def conv3x3(x, kernel, stride, depthwise):
        kernel = torch.from_numpy(kernel)
        h = (x.shape[1] - 3) // stride + 1
        wd = (x.shape[2] - 3) // stride + 1
        out = 0
        for i in range(3):
            for j in range(3):
                patch = x[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (wd - 1) + 1:stride, :]
                out = out + (patch * kernel[i, j, :, 0] if depthwise else torch.einsum("nhwc,co->nhwo", patch, kernel[i, j]))
        return out

    def pointwise(x, name):
        return torch.einsum("nhwc,co->nhwo", x, torch.from_numpy(w[name]["kernel"][0, 0]))

    def bn(x, name, act=True):
        p = {k: torch.from_numpy(v) for k, v in w[name].items()}
        y = bn_eval(x, p["gamma"], p["beta"], p["moving_mean"], p["moving_variance"], 1e-3, channel_dim=-1)
        return y.clamp(0, 6) if act else y

    def same(x, stride):
        return pad(x, *tf_same(x.shape[1], 3, stride), *tf_same(x.shape[2], 3, stride))

    if arch == "v1":
        x = bn(conv3x3(same(x, 2), w["conv1"]["kernel"], 2, False), "conv1_bn")  # Conv2D(padding="same", strides=2)
        for block_id, (_, stride) in enumerate(V1_KERAS_BLOCKS, start=1):
            x = pad(x, 0, 1, 0, 1) if stride == 2 else pad(x, 1, 1, 1, 1)  # ZeroPadding2D(((0, 1), (0, 1))) / 'same'
            x = bn(conv3x3(x, w[f"conv_dw_{block_id}"]["depthwise_kernel"], stride, True), f"conv_dw_{block_id}_bn")
            x = bn(pointwise(x, f"conv_pw_{block_id}"), f"conv_pw_{block_id}_bn")
        x = x.mean((1, 2))  # GlobalAveragePooling2D; Dropout is the identity at inference
        logits = x @ torch.from_numpy(w["conv_preds"]["kernel"][0, 0]) + torch.from_numpy(w["conv_preds"]["bias"])
        return logits  # Keras then applies softmax; we compare logits
    x = bn(conv3x3(same(x, 2), w["Conv1"]["kernel"], 2, False), "bn_Conv1")
    block_id = 0
    for t, _, n, s in V2_SETTING:
        for j in range(n):
            prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
            stride, y = (s if j == 0 else 1), x
            if block_id:
                y = bn(pointwise(y, f"{prefix}expand"), f"{prefix}expand_BN")
            if stride == 2:  # imagenet_utils.correct_pad
                adjust = (1 - y.shape[1] % 2, 1 - y.shape[2] % 2)
                y = pad(y, 1 - adjust[0], 1, 1 - adjust[1], 1)
            else:
                y = pad(y, 1, 1, 1, 1)
            y = bn(conv3x3(y, w[f"{prefix}depthwise"]["depthwise_kernel"], stride, True), f"{prefix}depthwise_BN")
            y = bn(pointwise(y, f"{prefix}project"), f"{prefix}project_BN", act=False)
            x = x + y if stride == 1 and x.shape == y.shape else y
            block_id += 1
    x = bn(pointwise(x, "Conv_1"), "Conv_1_bn").mean((1, 2))
    head = "Logits" if "Logits" in w else "predictions"
    return x @ torch.from_numpy(w[head]["kernel"]) + torch.from_numpy(w[head]["bias"])


def keras_names(layers):
    return {f"{name}/{'kernel' if role == 'depthwise_kernel' else role}" for name, weights in layers for role, _ in weights}


# --- helpers --------------------------------------------------------------------------------------


def assert_one_to_one(imported, source_names):
    sources = [p.source for p in imported.pairs if p.source is not None]
    assert len(sources) == len(set(sources)), "a source tensor is used twice"
    assert set(sources) >= set(source_names) and set(imported.source_tensors) == set(source_names)
    assert {p.ours for p in imported.pairs} == set(imported.model.state_dict())


def assert_same_function(ours, reference):
    scale = reference.abs().max().item()
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4 * max(scale, 1.0))


def image(size, seed=1):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- conversions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("width, num_classes, filename", [
    (0.35, 10, "tv.pth"),
    (1.0, 1000, "mobilenet_v2-b0353104.pth"),  # the published width and file name
])
def test_torchvision_v2(tmp_path, width, num_classes, filename):
    sd = torchvision_v2_state(width, num_classes)
    path = tmp_path / filename
    torch.save(sd, path)
    imported = import_weights(path, "torchvision")
    assert_one_to_one(imported, sd)
    config = imported.model.config.to_dict()
    assert (config["name"], config["width_mult"], config["num_classes"]) == ("mobilenet_v2", width, num_classes)
    assert (config["activation"], config["bn_eps"], config["padding"]) == ("relu6", 1e-5, "symmetric")
    x = image(64)
    with torch.no_grad():
        assert_same_function(imported.model(x), torchvision_v2_forward(sd, x))

    meta = convert(path, "torchvision", tmp_path / "out.safetensors")
    model, loaded = load_checkpoint(tmp_path / "out.safetensors", with_meta=True)
    assert loaded.config.to_dict() == config and loaded.resolution == 224
    assert loaded.mean == (0.485, 0.456, 0.406) and loaded.std == (0.229, 0.224, 0.225)
    assert meta.extra["source_format"] == "torchvision" and meta.extra["source"] == filename
    with torch.no_grad():
        torch.testing.assert_close(model(x), imported.model(x), rtol=0, atol=0)
    if num_classes == 1000:
        assert loaded.classes[0] == "tench" and loaded.classes[-1] == "toilet tissue"
        assert meta.extra["weights"] == "torchvision/mobilenet_v2.IMAGENET1K_V1" and meta.extra["crop_fraction"] == 0.875
    else:
        assert loaded.classes == [f"class_{i}" for i in range(10)]


def test_torchvision_file_without_batch_counters(tmp_path):
    # checkpoints from before PyTorch 0.4.1 have no num_batches_tracked; ours start at 0
    sd = {k: v for k, v in torchvision_v2_state(0.35, 10).items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")
    imported = import_weights(tmp_path / "old.pth", "torchvision")
    assert imported.model.state_dict()["features.0.bn.num_batches_tracked"].item() == 0
    x = image(64)
    with torch.no_grad():
        assert_same_function(imported.model(x), torchvision_v2_forward(sd, x))


@pytest.mark.parametrize("arch, width, size", [("v1", 0.25, 64), ("v1", 1.25, 64), ("v2", 0.5, 64)])
def test_timm(tmp_path, arch, width, size):
    from safetensors.torch import save_file

    sd = timm_state(arch, width, 1000)
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    imported = import_weights(path, "timm")
    assert_one_to_one(imported, sd)
    config = imported.model.config.to_dict()
    assert (config["name"], config["width_mult"]) == (f"mobilenet_{arch}", width)
    assert (config["activation"], config["bn_eps"], config["padding"]) == ("relu6", 1e-5, "symmetric")
    x = image(size)
    with torch.no_grad():
        assert_same_function(imported.model(x), timm_forward(sd, x, arch, width))
    # timm's pretrained cfgs: the V1 ra4 weights use mean = std = 0.5, the V2 weights ImageNet's
    assert imported.meta.mean == ((0.5,) * 3 if arch == "v1" else (0.485, 0.456, 0.406))
    assert imported.meta.extra["crop_fraction"] == (0.9 if width == 1.25 else 0.875)


def test_timm_pth_is_read_too(tmp_path):
    sd = timm_state("v2", 0.5, 10)
    torch.save({"state_dict": sd}, tmp_path / "checkpoint.pth")  # a training checkpoint's wrapper
    assert import_weights(tmp_path / "checkpoint.pth", "timm").model.config.num_classes == 10


@pytest.mark.parametrize("arch, alpha, layout, size, classifier", [
    ("v1", 0.25, "keras2", 96, None),
    ("v1", 0.5, "keras2.13", 64, None),
    ("v2", 0.35, "model", 72, "Logits"),  # 72 -> stride-2 layers at odd sizes 9 and 5: correct_pad == 'SAME'
    ("v2", 0.5, "keras2.13", 64, "predictions"),
])
def test_keras(tmp_path, arch, alpha, layout, size, classifier):
    layers = keras_layers(arch, alpha, 1000, classifier=classifier or "Logits")
    name = "mobilenet_2_5_128_tf.h5" if arch == "v1" and layout == "keras2" else "w.h5"
    path = tmp_path / (name if layout != "keras2.13" else "w.weights.h5")
    write_keras(path, layers, layout)
    imported = import_weights(path, "keras")
    assert_one_to_one(imported, keras_names(layers))
    config = imported.model.config.to_dict()
    assert (config["name"], config["width_mult"], config["num_classes"]) == (f"mobilenet_{arch}", alpha, 1000)
    assert (config["activation"], config["bn_eps"], config["padding"]) == ("relu6", 1e-3, "tf_same")
    assert config["dropout"] == (1e-3 if arch == "v1" else 0.0)
    assert imported.meta.mean == (0.5,) * 3 and imported.meta.std == (0.5,) * 3
    assert imported.meta.resolution == (128 if name.endswith("_128_tf.h5") else 224)
    x = image(size)
    with torch.no_grad():
        assert_same_function(imported.model(x), keras_forward(layers, x, arch))


# --- refusals -------------------------------------------------------------------------------------


def one_line(error):
    text = str(error.value)
    assert "\n" not in text, text
    return text


def test_extra_tensor_is_refused(tmp_path):
    sd = torchvision_v2_state(0.35, 10)
    sd["features.3.conv.9.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(ValueError) as error:
        import_weights(tmp_path / "x.pth", "torchvision")
    assert "features.3.conv.9.weight" in one_line(error)


def test_missing_tensor_is_refused(tmp_path):
    sd = timm_state("v2", 0.5, 10)
    del sd["blocks.2.1.bn2.running_var"]
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(ValueError) as error:
        import_weights(tmp_path / "x.pth", "timm")
    assert "blocks.2.1.bn2.running_var" in one_line(error)


def test_wrong_shape_is_refused(tmp_path):
    sd = torchvision_v2_state(0.35, 10)
    sd["features.4.conv.2.weight"] = sd["features.4.conv.2.weight"][:, :-1]
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(ValueError) as error:
        import_weights(tmp_path / "x.pth", "torchvision")
    assert "features.4.conv.2.weight" in one_line(error) and "shape" in one_line(error)


def test_keras_extra_layer_is_refused(tmp_path):
    layers = keras_layers("v1", 0.25, 10)
    layers.append(("dense_9", [("kernel", np.zeros((4, 4), np.float32))]))
    write_keras(tmp_path / "w.h5", layers, "keras2")
    with pytest.raises(ValueError) as error:
        import_weights(tmp_path / "w.h5", "keras")
    assert "dense_9/dense_9/kernel:0" in one_line(error)


def test_keras_without_classifier_is_refused(tmp_path):
    layers = [layer for layer in keras_layers("v2", 0.35, 10) if layer[0] != "Logits"]
    write_keras(tmp_path / "no_top.h5", layers, "keras2")
    with pytest.raises(ValueError, match="include_top=False"):
        import_weights(tmp_path / "no_top.h5", "keras")


@pytest.mark.parametrize("change, message", [
    ("deeper", "depth-multiplied"),  # mobilenetv2_110d / 120d: more blocks per stage
    ("head_conv", "mobilenetv1_100h"),
])
def test_unsupported_timm_variants_say_so(tmp_path, change, message):
    if change == "deeper":
        sd = timm_state("v2", 1.0, 10)
        sd.update({k.replace("blocks.3.3.", "blocks.3.4."): v for k, v in sd.items() if k.startswith("blocks.3.3.")})
    else:
        sd = timm_state("v1", 1.0, 10)
        sd["conv_head.weight"] = torch.zeros(1024, 1024, 1, 1)
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(ValueError, match=message) as error:
        import_weights(tmp_path / "x.pth", "timm")
    assert "not supported" in one_line(error) or "unsupported" in one_line(error)


class RunsCode:
    """Unpickling this calls `open(marker, 'w')`: a stand-in for any code a .pth could carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    sd = torchvision_v2_state(0.35, 10)
    sd["payload"] = RunsCode(str(marker))
    torch.save(sd, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(ValueError) as error:
        import_weights(tmp_path / "evil.pth", "torchvision")
    assert "refused" in one_line(error)
    assert not marker.exists()
    with open(tmp_path / "evil.pth", "rb") as f:  # the file really does carry the call
        assert b"open" in f.read()


def test_not_weights_files_are_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a zip nor a pickle")
    with pytest.raises(ValueError):
        import_weights(tmp_path / "junk.pth", "torchvision")
    with pytest.raises(ValueError):
        import_weights(tmp_path / "junk.pth", "keras")
    with pytest.raises(ValueError, match="source format"):
        import_weights(tmp_path / "junk.pth", "tensorflow")


def test_catalogue_points_at_the_official_files():
    tv = find_weights("torchvision", "mobilenet_v2")
    assert tv.url == "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth" and tv.sha256_prefix == "b0353104"
    assert find_weights("torchvision", "mobilenet_v2.IMAGENET1K_V2").url.endswith("/mobilenet_v2-7ebf99e0.pth")
    timm = find_weights("timm", "mobilenetv2_100")
    assert timm.url == "https://huggingface.co/timm/mobilenetv2_100.ra_in1k/resolve/main/model.safetensors"
    assert timm.filename == "mobilenetv2_100.ra_in1k.safetensors"
    assert find_weights("timm", "mobilenetv1_125").name == "mobilenetv1_125.ra4_e3600_r224_in1k"
    assert find_weights("keras", "mobilenet_1_0_224_tf").url == \
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_1_0_224_tf.h5"
    assert find_weights("timm", "mobilenetv2_110d") is None  # not our architecture


def test_imagenet_classes():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[-1] == "toilet tissue"
    assert names[134] == "crane bird" and names[517] == "crane"


# --- download -------------------------------------------------------------------------------------


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server on 127.0.0.1 (a free port), serving tmp_path/www; shut down after."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_verifies_the_full_sha256(server, tmp_path):
    root, url = server
    payload = np.random.default_rng(0).bytes(300_000)
    (root / "w.pth").write_bytes(payload)
    dest = tmp_path / "dest"
    good = file_sha256(root / "w.pth")
    path = download("timm", "any", dest, url=f"{url}/w.pth", sha256=good, progress=False, timeout=10)
    assert path == dest / "w.pth" and path.read_bytes() == payload
    assert sorted(p.name for p in dest.iterdir()) == ["w.pth"]  # nothing else left behind

    bad = "0" * 64
    with pytest.raises(ValueError, match="checksum"):
        download("timm", "any", tmp_path / "dest2", url=f"{url}/w.pth", sha256=bad, progress=False, timeout=10)
    assert list((tmp_path / "dest2").iterdir()) == []


def test_download_verifies_the_hash_in_the_file_name(server, tmp_path):
    root, url = server
    payload = b"weights" * 1000
    (root / "blob").write_bytes(payload)
    prefix = file_sha256(root / "blob")[:8]
    (root / f"mobilenet_v2-{prefix}.pth").write_bytes(payload)
    path = download("torchvision", "mine", tmp_path / "d", url=f"{url}/mobilenet_v2-{prefix}.pth", progress=False)
    assert path.read_bytes() == payload
    # the catalogue's mobilenet_v2 is b0353104...: these bytes are not it
    with pytest.raises(ValueError, match="b0353104"):
        download("torchvision", "mobilenet_v2", tmp_path / "e", url=f"{url}/blob", progress=False)
    assert list((tmp_path / "e").iterdir()) == []


def test_download_checks_safetensors_structure_and_reports_http_errors(server, tmp_path):
    from safetensors.torch import save_file

    root, url = server
    save_file({"a": torch.zeros(1000)}, str(root / "full.safetensors"))
    (root / "cut.safetensors").write_bytes((root / "full.safetensors").read_bytes()[:-100])
    assert download("timm", "x", tmp_path / "d", url=f"{url}/full.safetensors", progress=False).is_file()
    with pytest.raises(ValueError, match="truncated"):
        download("timm", "x", tmp_path / "e", url=f"{url}/cut.safetensors", progress=False)
    with pytest.raises(OSError, match="404"):
        download("timm", "x", tmp_path / "e", url=f"{url}/missing.safetensors", progress=False)
    assert list((tmp_path / "e").iterdir()) == []
    with pytest.raises(ValueError, match="unknown timm weights"):
        download("timm", "resnet50", tmp_path / "e")


