"""The models against the papers' architectures and the reference implementations' counts."""

import math

import pytest
import torch
from torch import nn

from mobilenet import create_model, list_models
from mobilenet.models import InvertedResidual

# Parameter counts of the same architectures in the reference implementations (1000 classes,
# BatchNorm included): TF-slim / timm for V1, torchvision for V2 and V3 at width 1, Keras' trainable
# weights and timm for V3 at 0.75 (the widths of its published weights; at 0.5 Keras keeps a
# 16-channel stem), timm 1.0.31 for V4 (`mobilenetv4_conv_small/medium/large`, counted on the models
# timm builds).
REFERENCE_PARAMS = [
    ("mobilenet_v1", 1.0, 4_231_976),
    ("mobilenet_v1", 0.75, 2_585_560),
    ("mobilenet_v1", 0.5, 1_331_592),
    ("mobilenet_v1", 0.25, 470_072),
    ("mobilenet_v2", 1.0, 3_504_872),
    ("mobilenet_v2", 0.5, 1_968_680),
    ("mobilenet_v2", 1.4, 6_108_776),
    ("mobilenet_v3_large", 1.0, 5_483_032),
    ("mobilenet_v3_small", 1.0, 2_542_856),
    ("mobilenet_v3_large", 0.75, 3_993_528),
    ("mobilenet_v3_small", 0.75, 2_041_872),
    ("mobilenet_v4_conv_small", 1.0, 3_774_024),
    ("mobilenet_v4_conv_medium", 1.0, 9_715_512),
    ("mobilenet_v4_conv_large", 1.0, 32_590_864),
]

MODELS = ["mobilenet_v1", "mobilenet_v2", "conv_mobilenet_v1", "mobilenet_v3_large", "mobilenet_v3_small",
          "mobilenet_v4_conv_small"]
WIDTHS = [1.0, 0.75, 0.5, 0.25, 1.4]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry():
    assert list_models() == ["conv_mobilenet_v1", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large",
                             "mobilenet_v3_small", "mobilenet_v4_conv_large", "mobilenet_v4_conv_medium",
                             "mobilenet_v4_conv_small", "shallow_mobilenet_v1"]


def test_the_shallow_variant_is_v1_without_the_five_14x14x512_layers():
    """Table 5: the same network as V1 but for the five separable layers between the 14x14x512
    down-sampling and the 7x7x1024 one; every weight it has, V1 has under the name it would have."""
    full, shallow = create_model("mobilenet_v1"), create_model("shallow_mobilenet_v1")
    assert len(full.features) - len(shallow.features) == 5
    widths = [(block.depthwise.conv.in_channels, block.depthwise.conv.stride[0]) for block in shallow.features[1:]]
    assert widths == [(32, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 2), (1024, 1)]
    assert n_params(full) - n_params(shallow) == 5 * (512 * 9 + 512 * 512 + 4 * 512)  # dw, pw, their two BNs


@pytest.mark.parametrize("name,width,expected", REFERENCE_PARAMS)
def test_parameter_counts_match_reference_implementations(name, width, expected):
    assert n_params(create_model(name, width_mult=width)) == expected


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("resolution,small_input", [(224, False), (160, False), (97, False), (32, True)])
def test_output_shape_any_resolution(name, width, resolution, small_input):
    # the large sizes on the meta device (shapes without arithmetic: the same operators, a third of this
    # test's time before), the odd and small ones computed
    device = torch.device("meta" if resolution > 100 else "cpu")
    with device:
        model = create_model(name, width_mult=width, num_classes=7, small_input=small_input).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, resolution, resolution, device=device)).shape == (2, 7)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("small_input,final_size", [(False, 1), (True, 4)])
def test_small_input_keeps_a_4x4_map_on_32x32(name, small_input, final_size):
    model = create_model(name, num_classes=10, small_input=small_input).eval()
    assert model.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (final_size, final_size)
    assert model.output_stride == (8 if small_input else 32)


def test_seed_cifar_model_is_v1_with_imagenet_strides():
    model = create_model("mobilenet_v1", num_classes=10)
    strides = [m.stride[0] for m in model.modules() if isinstance(m, nn.Conv2d)]
    # Table 1: stem s2, then dw s1, s2, s1, s2, s1, s2, s1 x5, s2, s1 (pointwise all s1)
    assert [s for s in strides if s == 2] == [2] * 5
    assert n_params(model) == 4_231_976 - 1024 * 990 - 990


def test_v2_shortcut_only_where_stride_1_and_channels_match():
    # V2 Table 2, n = 1, 2, 3, 4, 3, 3, 1: the first block of each stage changes stride or
    # channels, every repeat keeps both. features.1..17 are the 17 bottleneck blocks.
    expected = {3, 5, 6, 8, 9, 10, 12, 13, 15, 16}
    model = create_model("mobilenet_v2")
    blocks = {i: m for i, m in enumerate(model.features) if isinstance(m, InvertedResidual)}
    assert sorted(blocks) == list(range(1, 18))
    assert {i for i, b in blocks.items() if b.use_shortcut} == expected


def test_v2_shortcut_adds_the_input():
    block = InvertedResidual(16, 16, 1, 6).eval()
    nn.init.zeros_(block.project.bn.weight)  # the branch now outputs exactly zero
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block(x), x)
    strided = InvertedResidual(16, 16, 2, 6).eval()
    assert not strided.use_shortcut


def test_v2_first_block_has_no_expansion_and_head_is_1280():
    model = create_model("mobilenet_v2", width_mult=0.5)
    assert isinstance(model.features[1].expand, nn.Identity)
    assert model.classifier.in_features == 1280  # kept for width < 1
    assert create_model("mobilenet_v2", width_mult=1.4).classifier.in_features == 1792  # scaled above 1
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.2


@pytest.mark.parametrize("name", MODELS)
def test_depthwise_convolutions_have_one_group_per_channel(name):
    model = create_model(name, width_mult=0.5)
    depthwise = [m for n, m in model.named_modules() if n.endswith(("depthwise.conv", "start.conv", "middle.conv"))]
    if name == "conv_mobilenet_v1":
        assert depthwise == []
        assert all(m.groups == 1 for m in model.modules() if isinstance(m, nn.Conv2d))
        return
    count, kernels = {"mobilenet_v1": (13, {3}), "mobilenet_v2": (17, {3}), "mobilenet_v3_large": (15, {3, 5}),
                      "mobilenet_v3_small": (11, {3, 5}), "mobilenet_v4_conv_small": (15, {3, 5})}[name]
    assert len(depthwise) == count and {conv.kernel_size[0] for conv in depthwise} == kernels
    for conv in depthwise:
        assert conv.groups == conv.in_channels == conv.out_channels
        assert conv.kernel_size[0] == conv.kernel_size[1] and conv.bias is None


def test_state_dict_names_read_like_the_papers():
    v1 = create_model("mobilenet_v1").state_dict()
    assert "features.1.depthwise.conv.weight" in v1 and "features.1.pointwise.bn.running_mean" in v1
    v2 = create_model("mobilenet_v2").state_dict()
    for part in ("expand", "depthwise", "project"):
        assert f"features.2.{part}.conv.weight" in v2
    assert "classifier.weight" in v1 and "classifier.weight" in v2


@pytest.mark.parametrize("width", [0.3, 0.6, 1.3, 0.01])
def test_v1_width_rule_is_int_c_alpha_never_below_one(width):
    model = create_model("mobilenet_v1", width_mult=width)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == max(1, int(32 * width))
    assert convs[-1].out_channels == max(1, int(1024 * width))


@pytest.mark.parametrize("size", [8, 9])
def test_tf_same_padding_puts_the_odd_pixel_bottom_right(size):
    from mobilenet.models.layers import ConvBNAct

    tf = ConvBNAct(1, 1, 3, 2, activation=None, padding="tf_same").eval()
    nn.init.zeros_(tf.conv.weight)
    tf.conv.weight.data[0, 0, 0, 0] = 1.0  # the output reads its window's top-left input pixel
    x = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size)
    out = tf(x)[0, 0]
    assert out.shape == (-(-size // 2),) * 2  # ceil(size / stride), as TensorFlow
    # TF 'SAME': total padding 1 at even sizes goes after, so window (0, 0) starts at pixel (0, 0);
    # at odd sizes it is 2, one each side, so window (0, 0) starts on the padding (0) at (-1, -1)
    expected = x[0, 0, 0, 0] if size % 2 == 0 else 0.0
    assert out[0, 0].item() == pytest.approx(float(expected), rel=1e-4)  # BatchNorm: x / sqrt(1 + eps)
    assert out[1, 1].item() == pytest.approx(float(x[0, 0, 2, 2] if size % 2 == 0 else x[0, 0, 1, 1]), rel=1e-4)
    symmetric = ConvBNAct(1, 1, 3, 2, activation=None).eval()
    symmetric.conv.weight.data = tf.conv.weight.data.clone()
    assert torch.equal(symmetric(x), tf(x)) == (size % 2 == 1)  # they differ exactly at even sizes


def test_activation_options():
    assert any(isinstance(m, nn.ReLU6) for m in create_model("mobilenet_v1", activation="relu6").modules())
    v1 = create_model("mobilenet_v1")
    assert any(isinstance(m, nn.ReLU) for m in v1.modules())
    assert not any(isinstance(m, nn.ReLU6) for m in v1.modules())
    assert any(isinstance(m, nn.ReLU6) for m in create_model("mobilenet_v2").modules())


def test_init_is_kaiming_fan_out_as_pytorch_counts_it():
    torch.manual_seed(0)
    model = create_model("mobilenet_v1")
    dw = model.features[13].depthwise.conv.weight  # 1024 filters of 1x3x3: fan-out 1024 * 9
    pw = model.features[13].pointwise.conv.weight  # 1024 x 1024 x 1x1: fan-out 1024
    assert dw.std().item() == pytest.approx(math.sqrt(2 / (1024 * 9)), rel=0.05)
    assert pw.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.02)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert torch.all(model.features[0].bn.weight == 1) and torch.all(model.classifier.bias == 0)


@pytest.mark.parametrize("name", MODELS)
def test_config_rebuilds_the_same_model(name):
    model = create_model(name, width_mult=0.5, num_classes=3, small_input=True)
    config = model.config.to_dict()
    rebuilt = create_model(config.pop("name"), **config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kwargs,message", [
    ({"width_mult": 0}, "width"),
    ({"width_mult": -0.5}, "width"),
    ({"width_mult": 4.01}, "width"),
    ({"width_mult": float("nan")}, "width"),
    ({"width_mult": float("inf")}, "width"),
    ({"width_mult": "wide"}, "width"),
    ({"num_classes": 0}, "num_classes"),
    ({"num_classes": 2.5}, "num_classes"),
    ({"num_classes": True}, "num_classes"),
    ({"activation": "gelu"}, "activation"),
    ({"padding": "valid"}, "padding"),
])
@pytest.mark.parametrize("name", MODELS)
def test_bad_arguments_raise_value_error(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="mobilenet_v1, mobilenet_v2"):
        create_model("mobilenet_v3")


def test_width_4_is_allowed():
    assert create_model("mobilenet_v2", width_mult=4.0, num_classes=2).classifier.in_features == 5120


# squeeze-and-excitation channels per expansion size: a quarter, to a multiple of 8 (torchvision's weights)
SQUEEZE = {16: 8, 72: 24, 96: 24, 120: 32, 144: 40, 240: 64, 288: 72, 480: 120, 576: 144, 672: 168, 960: 240}


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_v3_is_its_table(name):
    """Each bneck is its row of the paper's Table 1 or 2 at width 1: kernel, expansion size, output
    channels, squeeze-and-excitation (a quarter of the expansion), non-linearity, stride, and the
    shortcut where the stride is 1 and the channels match; then the 1x1 convolution with BatchNorm,
    the pooling, the 1x1 without BatchNorm (1280 or 1024, hard-swish), dropout 0.2 and the classifier."""
    from mobilenet.models.v3 import VARIANTS

    rows, last, pooled = VARIANTS[name]
    model = create_model(name)
    assert model.features[0].conv.out_channels == 16 and model.features[0].conv.stride == (2, 2)
    assert isinstance(model.features[0].act, nn.Hardswish) and model.features[0].bn.eps == 1e-3
    channels = 16
    for block, row in zip(model.features[1:-1], rows, strict=True):
        dw = block.depthwise
        assert (dw.conv.kernel_size[0], dw.conv.out_channels, block.project.conv.out_channels, dw.conv.stride[0]) == (
            row.kernel, row.expansion, row.out_channels, row.stride)
        assert isinstance(dw.act, nn.ReLU if row.activation == "relu" else nn.Hardswish)
        assert isinstance(block.expand, nn.Identity) == (row.expansion == channels)
        assert (block.se.reduce.out_channels if row.se else None) == (SQUEEZE[row.expansion] if row.se else None)
        assert isinstance(block.project.act, nn.Identity)  # linear bottleneck
        assert block.use_shortcut == (row.stride == 1 and channels == row.out_channels)
        channels = row.out_channels
    assert model.features[-1].conv.out_channels == last and isinstance(model.features[-1].act, nn.Hardswish)
    assert model.head[0].in_channels == last and model.head[0].out_channels == pooled
    assert model.head[0].kernel_size == (1, 1) and model.head[0].bias is not None  # "NBN": no BatchNorm
    assert isinstance(model.head[1], nn.Hardswish) and model.dropout.p == 0.2
    assert model.classifier.in_features == pooled


@pytest.mark.parametrize("start, middle, kind", [(3, 5, "ExtraDW"), (0, 3, "IB"), (5, 0, "ConvNeXt"), (0, 0, "FFN")])
def test_the_universal_inverted_bottleneck_is_its_four_blocks(start, middle, kind):
    """UIB (V4 Section 3.1): the depthwise layers present are the ones named; the stride is the
    middle one's, else the start one's; the start one has no activation, the projection none;
    the shortcut where the stride is 1 and the channels match."""
    from mobilenet.models.v4 import UniversalInvertedBottleneck

    stride = 2 if start or middle else 1
    block = UniversalInvertedBottleneck(16, 24, start, middle, stride, 64, 1e-5, "symmetric")
    convs = {name: m for name, m in block.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(convs) == {*(["start.conv"] if start else []), "expand.conv", *(["middle.conv"] if middle else []),
                          "project.conv"}
    if start:
        assert convs["start.conv"].groups == 16 and isinstance(block.start.act, nn.Identity)
        assert convs["start.conv"].stride == ((1, 1) if middle else (2, 2))
    if middle:
        assert convs["middle.conv"].groups == 64 and convs["middle.conv"].stride == (2, 2)
    assert isinstance(block.project.act, nn.Identity) and not block.use_shortcut
    x = torch.randn(2, 16, 8, 8)
    assert block(x).shape == (2, 24, 8 // stride, 8 // stride)
    same = UniversalInvertedBottleneck(16, 16, start, middle, 1, 64, 1e-5, "symmetric").eval()
    nn.init.zeros_(same.project.bn.weight)
    assert same.use_shortcut and torch.equal(same(x), x)
