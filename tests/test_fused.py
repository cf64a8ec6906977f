"""mobilenet.fused's kernels against PyTorch: the fused BatchNorm + activation against BatchNorm2d and the
activation, the depthwise backward pass against the convolution's gradients in float64."""

import concurrent.futures
import copy
import os
import platform
import subprocess
from pathlib import Path
import sys
import time

import pytest
import torch
from torch import nn

import mobilenet.fused as fused
import mobilenet.fused.library as fused_library
from mobilenet.fused import (BatchNormAct2d, DeferredBatchNormAct2d, DepthwiseConv2d, NormedDepthwiseConv2d,
                             PointwiseConv2d, fuse, fuse_bn_depthwise, fuse_depthwise, fuse_pointwise)
from mobilenet.models import create_model

pytestmark = pytest.mark.skipif(not fused.available(), reason=f"no fused kernel: {fused.unavailable_reason()}")

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "none": nn.Identity}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("shape", [(4, 24, 6, 6), (3, 24, 5, 7), (2, 300, 3, 3), (5, 3, 4, 4)],
                         ids=["tiled", "tail-rows", "wide", "three-channels"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_backward_and_statistics_equal_pytorch(shape, activation, training):
    torch.manual_seed(0)
    channels = shape[1]
    reference = nn.BatchNorm2d(channels)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5), reference.bias.uniform_(-0.5, 0.5)
        reference.running_mean.uniform_(-1, 1), reference.running_var.uniform_(0.5, 2)
    ours = BatchNormAct2d(channels, activation=ACTIVATIONS[activation])
    ours.load_state_dict(reference.state_dict())
    reference.train(training), ours.train(training)
    x = (torch.randn(shape) * 3 + 1).contiguous(memory_format=torch.channels_last)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ACTIVATIONS[activation]()(reference(x_ref)), ours(x_ours)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad), y_ours.backward(grad)
    assert y_ours.is_contiguous(memory_format=torch.channels_last)
    assert relative(y_ours, y_ref) < 1e-5
    assert relative(x_ours.grad, x_ref.grad) < 1e-5
    assert relative(ours.weight.grad, reference.weight.grad) < 1e-5
    assert relative(ours.bias.grad, reference.bias.grad) < 1e-5
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(ours, name).float(), getattr(reference, name).float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(8, 32, 6, 6), (3, 24, 5, 7), (2, 300, 3, 3), (5, 3, 4, 4)],
                         ids=["tiled", "tail-rows", "wide", "three-channels"])
def test_bfloat16_activations_round_like_pytorch(shape):
    """Under bf16 autocast the convolutions hand BatchNorm bf16 tensors: the result is bf16, within
    one rounding of PyTorch's (which also computes in float and rounds once)."""
    torch.manual_seed(1)
    reference, ours = nn.BatchNorm2d(shape[1]), BatchNormAct2d(shape[1])
    x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = torch.relu(reference(x_ref)), ours(x_ours)
    assert y_ours.dtype == torch.bfloat16
    assert relative(y_ours, y_ref) < 2 ** -7
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad), y_ours.backward(grad)
    assert x_ours.grad.dtype == torch.bfloat16 and relative(x_ours.grad, x_ref.grad) < 2 ** -6
    assert relative(ours.weight.grad, reference.weight.grad) < 1e-2


MODELS = {
    "v1": dict(name="mobilenet_v1", width_mult=0.25),
    "v2-with-shortcuts": dict(name="mobilenet_v2", width_mult=0.35),
    "conv-baseline": dict(name="conv_mobilenet_v1", width_mult=0.25),
    "v3-se-hardswish": dict(name="mobilenet_v3_small", width_mult=0.5),  # 5x5 depthwise, SE's biased 1x1s
    # V4 at width 0.5: at 0.25 one pre-activation of features.7 lies 5e-7 from zero and falls on the other
    # side of it in fp32 than in float64 (the fused forward is closer to float64 than PyTorch's there, so
    # it is not a kernel error): its ReLU gradient flips and the three models' steps part ways, which is
    # the comparison's discontinuity, not the kernels' accuracy (measured at stop 34)
    "v4-uib": dict(name="mobilenet_v4_conv_small", width_mult=0.5),  # depthwise with BatchNorm, no activation
}


def three_models(model: str, bn_mode: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The plain model, its fused copy (BatchNorm fused, the depthwise kernel) and a float64 copy (the
    oracle), BatchNorm in `bn_mode`."""
    options = dict(MODELS[model])
    torch.manual_seed(0)
    plain = create_model(options.pop("name"), **options, num_classes=5, small_input=True, dropout=0.0)
    plain = plain.to(memory_format=torch.channels_last)
    fast, exact = copy.deepcopy(plain), copy.deepcopy(plain).double()
    assert fuse(fast) > 10
    assert any(isinstance(m, DepthwiseConv2d) for m in fast.modules()) != (model == "conv-baseline")
    assert any(isinstance(m, PointwiseConv2d) for m in fast.modules()) != (model == "conv-baseline")
    if model == "v2-with-shortcuts":
        assert sum(getattr(block, "use_shortcut", False) for block in fast.modules()) >= 3
    for net in (plain, fast, exact):
        net.train()
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train(bn_mode == "train")
    return plain, fast, exact


def sgd_steps(nets, steps: int):
    """`steps` SGD steps (momentum, weight decay) of each net on the same batches; yields after each
    backward pass, before the update."""
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) for net in nets]
    generator = torch.Generator().manual_seed(3)
    for _ in range(steps):
        images = torch.randn(8, 3, 32, 32, generator=generator).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 5, (8,), generator=generator)
        for net, optimizer in zip(nets, optimizers):
            optimizer.zero_grad()
            inputs = images.to(next(net.parameters()).dtype)
            nn.functional.cross_entropy(net(inputs), labels).backward()
        yield
        for optimizer in optimizers:
            optimizer.step()


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().double().flatten() for t in tensors])


@pytest.mark.parametrize("model", MODELS)
def test_with_fixed_statistics_fused_steps_are_as_exact_as_plain_ones(model):
    """BatchNorm in eval mode (--freeze-bn, fine-tuning). The oracle is the same step in float64, not the
    plain fp32 step: at initialisation the gradients vanish towards the input (norms of 1e-8), and a
    pre-activation that is within rounding of zero passes the ReLU in one fp32 sum and not in another,
    so any two fp32 implementations disagree on a few tensors (measured on an AVX2 EPYC, V2: the plain
    step's worst tensor 1.1e-3 from float64, the fused step's 3.4e-3, each through one such element;
    the whole gradient 1.8e-7 and 1.5e-7). After each of three steps: the whole gradient as close to
    float64 as the plain step's (with 1e-5 of slack), every tensor within 1e-2 of it (a wrong kernel
    or a dropped activation is off by order 1), and the same of the weights after the steps."""
    plain, fast, exact = three_models(model, "eval")
    for _ in sgd_steps((plain, fast, exact), 3):
        truth = flat(p.grad for p in exact.parameters())
        error = {name: (flat(p.grad for p in net.parameters()) - truth).norm() / truth.norm()
                 for name, net in (("plain", plain), ("fused", fast))}
        assert error["fused"] <= 1.5 * error["plain"] + 1e-5, error
        for (name, a), b in zip(exact.named_parameters(), fast.parameters()):
            assert (b.grad.double() - a.grad).norm() <= 1e-2 * a.grad.norm(), name
    assert plain.state_dict().keys() == fast.state_dict().keys() == exact.state_dict().keys()
    truth = flat(exact.state_dict().values())
    assert (flat(fast.state_dict().values()) - truth).norm() <= 1e-5 * truth.norm()
    for (name, a), b in zip(exact.state_dict().items(), fast.state_dict().values()):  # biases start at 0: as their gradients
        assert (b.double() - a.double()).norm() <= 1e-2 * a.double().norm(), name


@pytest.mark.parametrize("model", MODELS)
def test_a_trained_fused_model_folds_for_inference_with_its_activations(model):
    """Export folds BatchNorm into the convolutions; a model still holding the training step's modules
    (BatchNormAct2d carries the ReLU/ReLU6) must come out as the same function, activations kept."""
    from mobilenet.export.fold import inference_model

    plain, fast, _ = three_models(model, "train")
    for _ in sgd_steps((plain, fast), 2):
        pass
    images = torch.randn(4, 3, 32, 32)
    for net in (fast, plain):
        folded = inference_model(net)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(images), net.eval()(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_with_batch_statistics_fused_steps_are_as_exact_as_plain_ones(model):
    """BatchNorm in training mode. Here a deep network at initialisation amplifies rounding: PyTorch's
    own fp32 step differs from the same step in float64 by up to 2% in its gradients (V1, measured),
    so two fp32 implementations cannot agree to 1e-5. The oracle is float64: after each of three
    steps the fused gradients are at least as close to it as the plain ones (with 1e-5 of slack),
    and the running statistics, which are well conditioned, equal the plain ones to 1e-5."""
    plain, fast, exact = three_models(model, "train")
    for step, _ in enumerate(sgd_steps((plain, fast, exact), 3)):
        truth = flat(p.grad for p in exact.parameters())
        error = {name: (flat(p.grad for p in net.parameters()) - truth).norm() / truth.norm()
                 for name, net in (("plain", plain), ("fused", fast))}
        assert error["fused"] <= 1.5 * error["plain"] + 1e-5, error
        if step == 0:  # the same weights so far: the statistics of the same batch
            ours = fast.state_dict()
            for key, value in plain.state_dict().items():
                if key.endswith("running_var"):  # means near 0 are compared on the scale of the spread
                    spread = value.sqrt().norm()
                    assert (ours[key] - value).norm() <= 1e-5 * value.norm(), key
                    mean = key.replace("running_var", "running_mean")
                    assert (ours[mean] - plain.state_dict()[mean]).norm() <= 1e-5 * spread, mean
    for key, value in plain.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert fast.state_dict()[key] == value == 3


DEPTHWISE = {  # (n, channels, height, width, kernel, stride, padding): channel blocks of 16, 8 and single ones
    "s1": (2, 16, 9, 7, 3, 1, 1), "s1-blocks": (2, 29, 7, 9, 3, 1, 1), "s2": (3, 24, 8, 8, 3, 2, 1), "s2-odd": (2, 29, 7, 9, 3, 2, 1),
    "s2-no-pad": (2, 8, 10, 10, 3, 2, 0), "5x5": (1, 40, 12, 11, 5, 2, 2), "no-pad": (2, 16, 6, 6, 3, 1, 0),
    "s3": (1, 5, 5, 5, 3, 3, 1), "1x1-image": (4, 48, 1, 1, 3, 1, 1)}


@pytest.mark.parametrize("case", DEPTHWISE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_depthwise_forward_and_gradients_equal_pytorchs_in_float64(case, dtype):
    """The depthwise kernel's output and both gradients against PyTorch's convolution in float64 on the
    same (rounded) inputs: fp32 within 1e-6; bf16 outputs and input gradients within one bf16 rounding
    (they are stored in bf16), weight gradients (fp32) within 1e-6 of the float64 sums."""
    n, c, h, w, k, stride, pad = DEPTHWISE[case]
    torch.manual_seed(0)
    conv = fuse_depthwise_one(nn.Conv2d(c, c, k, stride, pad, groups=c, bias=False))
    x = torch.randn(n, c, h, w).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):  # as training runs it
        y = conv(x)
    assert y.dtype == dtype and type(y.grad_fn).__name__ == "_DepthwiseFunctionBackward"  # the kernel's path
    grad = torch.randn(y.shape).to(dtype).contiguous(memory_format=torch.channels_last)
    y.backward(grad)
    weight = conv.weight.detach().to(dtype).double()  # the weight the forward pass used
    x64 = x.detach().double().requires_grad_()
    y64 = nn.functional.conv2d(x64, weight.requires_grad_(), None, stride, pad, 1, c)
    y64.backward(grad.double())
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert relative(y, y64) < (1e-6 if dtype == torch.float32 else 2 ** -8)
    assert x.grad.dtype == dtype and x.grad.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.grad.dtype == torch.float32
    assert relative(x.grad, x64.grad) < (1e-6 if dtype == torch.float32 else 2 ** -8)
    assert relative(conv.weight.grad, weight.grad) < 1e-6


def fuse_depthwise_one(conv: nn.Conv2d) -> nn.Module:
    holder = nn.Sequential(conv)
    assert fuse_depthwise(holder) == 1 and isinstance(holder[0], DepthwiseConv2d)
    return holder[0]


def test_swapping_in_the_depthwise_kernel_keeps_weights_keys_and_random_numbers():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", width_mult=0.35, num_classes=5, small_input=True)
    keys, weights = list(model.state_dict()), [p.clone() for p in model.parameters()]
    state = torch.get_rng_state()
    swapped = fuse_depthwise(model)
    assert swapped == 17 and torch.equal(torch.get_rng_state(), state)  # one per inverted residual
    assert list(model.state_dict()) == keys
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), weights))


class Pair(nn.Module):
    """A 1x1 ConvBNAct then a depthwise ConvBNAct (as V2's expansion and depthwise layers), and, with
    `reuse`, the 1x1 layer's output also added to the result (a second reader of that activation)."""

    def __init__(self, stride: int, activation: str, reuse: bool = False):
        super().__init__()
        from mobilenet.models.layers import ConvBNAct

        self.expand = ConvBNAct(5, 19, 1, activation=activation)
        self.depthwise = ConvBNAct(19, 19, 3, stride=stride, groups=19, activation=activation)
        self.reuse = reuse

    def forward(self, x):
        expanded = self.expand(x)
        y = self.depthwise(expanded)
        return y + expanded if self.reuse else y


def paired(model: nn.Module) -> nn.Module:
    fuse(model, ("bn_act", "depthwise"))
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("stride", [1, 2], ids=["s1", "s2"])
@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_batchnorm_applied_by_the_depthwise_layer_is_the_same_arithmetic(dtype, stride, activation, bn_mode):
    """The pair (BatchNorm deferred to the depthwise layer, which normalises each row as it reads it)
    against the same two kernels unpaired (the activation stored, then read): the same operations in
    the same order, so the outputs, every gradient and the running statistics are equal bit for bit
    (in bfloat16 too: the normalised values are rounded as the stored activation would be)."""
    torch.manual_seed(0)
    separate = paired(Pair(stride, activation)).to(memory_format=torch.channels_last).train()
    separate.expand.bn.train(bn_mode == "train")
    bn = separate.expand.bn
    with torch.no_grad():  # statistics and an affine map that are not the initial ones
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.3)
    together = copy.deepcopy(separate)
    assert fuse_bn_depthwise(together) == 2
    assert type(together.expand.bn) is DeferredBatchNormAct2d and type(together.depthwise.conv) is NormedDepthwiseConv2d
    x = torch.randn(3, 5, 9, 8).contiguous(memory_format=torch.channels_last)
    outputs = []
    for net in (separate, together):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = net(x)
        y.float().square().sum().backward()
        outputs.append(y)
    assert outputs[0].dtype == outputs[1].dtype == dtype
    assert torch.equal(outputs[0], outputs[1])
    for (name, a), b in zip(separate.named_parameters(), together.parameters()):
        assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(separate.state_dict().items(), together.state_dict().values()):
        assert torch.equal(a, b), name
    assert not together.expand.bn.deferred  # taken back by the depthwise layer


def test_batchnorm_is_deferred_only_to_its_only_reader():
    """A pair only where the depthwise layer is the sole reader of the BatchNorm's output (traced): not
    with a residual reading it too. Every V1 depthwise layer reads a BatchNorm alone, as does every V2
    one; a run where the depthwise layer cannot take the input (NCHW, or no gradient) normalises in the
    BatchNorm itself, with the same result."""
    assert fuse_bn_depthwise(paired(Pair(1, "relu", reuse=True))) == 0
    assert fuse_bn_depthwise(Pair(1, "relu")) == 0  # the kernels it pairs not swapped in
    for name, pairs in (("mobilenet_v1", 13), ("mobilenet_v2", 17)):
        model = paired(create_model(name, width_mult=0.35, num_classes=5, small_input=True))
        assert fuse_bn_depthwise(model) == 2 * pairs, name
    torch.manual_seed(1)
    plain = Pair(2, "relu6").train()
    together = copy.deepcopy(plain)
    fuse(together, ("bn_act", "depthwise", "bn_depthwise"))
    x = torch.randn(2, 5, 7, 7)
    torch.testing.assert_close(together(x), plain(x))  # NCHW: PyTorch's modules throughout
    assert not together.expand.bn.deferred
    with torch.no_grad():
        cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(together(cl), plain(cl))


def test_depthwise_kernel_leaves_other_inputs_to_pytorch():
    """NCHW input, no gradient, float64: nn.Conv2d's own path, the same numbers."""
    torch.manual_seed(4)
    plain = nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False)
    ours = fuse_depthwise_one(copy.deepcopy(plain))
    x = torch.randn(2, 8, 7, 7)
    torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)
    with torch.no_grad():
        cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(ours(cl), plain(cl), rtol=0, atol=0)
    torch.testing.assert_close(ours.double()(x.double()), plain.double()(x.double()), rtol=0, atol=0)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("shape", [(4, 24, 5, 7), (32, 64, 1, 1)], ids=["image", "one-pixel"])
def test_pointwise_as_a_matrix_product_equals_the_convolution_in_float64(shape, bias):
    """Output and both gradients of the 1x1 convolution computed as `mm`, against nn.Conv2d in float64."""
    torch.manual_seed(5)
    plain = nn.Conv2d(shape[1], 40, 1, bias=bias)
    holder = nn.Sequential(copy.deepcopy(plain))
    assert fuse_pointwise(holder) == 1 and isinstance(holder[0], PointwiseConv2d)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = holder(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and type(y.grad_fn).__name__ == "PermuteBackward0"
    grad = torch.randn(y.shape)
    y.backward(grad)
    exact = copy.deepcopy(plain).double()
    x64 = x.detach().double().requires_grad_()
    y64 = exact(x64)
    y64.backward(grad.double())
    assert relative(y, y64) < 1e-6 and relative(x.grad, x64.grad) < 1e-6
    assert relative(holder[0].weight.grad, exact.weight.grad) < 1e-6
    if bias:
        assert relative(holder[0].bias.grad, exact.bias.grad) < 1e-6
    nchw = torch.randn(2, shape[1], 3, 3)  # not channels-last: nn.Conv2d's own path, the same numbers
    torch.testing.assert_close(holder(nchw), plain(nchw), rtol=0, atol=0)


def test_other_inputs_take_pytorchs_path():
    """NCHW tensors (and anything the kernel does not take) run BatchNorm2d and the activation."""
    torch.manual_seed(2)
    reference, ours = nn.BatchNorm2d(8), BatchNormAct2d(8, activation=nn.ReLU6)
    x = torch.randn(2, 8, 5, 5) * 4  # NCHW
    assert not x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x), nn.functional.relu6(reference(x)))


def test_without_a_compiler_training_says_so_once_and_runs_plain(tmp_path):
    script = (
        "import torch, mobilenet.fused as f\n"
        "from mobilenet.models import create_model\n"
        "m = create_model('mobilenet_v1', width_mult=0.25, num_classes=3, small_input=True)\n"
        "f.fuse(m)\n"
        "x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)\n"
        "m(x).sum().backward(); m(x).sum().backward()\n"
        "print('available', f.available())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "CC": str(tmp_path / "no-such-compiler"), "MOBILENET_DATA": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "available False"
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no-such-compiler" in notes[0] and "PyTorch's BatchNorm" in notes[0]


def test_the_kernel_is_built_once_per_cpu_and_source(tmp_path, monkeypatch):
    """Once, also when several processes start on a new machine together (a torchrun job's ranks):
    the others wait for the one building (threads here, each with its own lock descriptor as a
    process has). The compiler is stood in for by a copy of this run's real build, slowly."""
    good = fused.build().read_bytes()
    compiled = []

    def compile_(command, **kwargs):
        compiled.append(command)
        time.sleep(0.3)  # long enough for the other builders to find the lock taken
        Path(command[command.index("-o") + 1]).write_bytes(good)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setenv("MOBILENET_DATA", str(tmp_path))
    monkeypatch.setattr(fused_library.subprocess, "run", compile_)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        paths = set(pool.map(lambda _: fused.build(), range(3)))
    assert len(compiled) == 1 and len(paths) == 1
    path = paths.pop()
    assert path.parent == tmp_path / "kernels" and path.suffix == ".so" and path.read_bytes() == good
    assert fused.build() == path and len(compiled) == 1  # cached, not rebuilt
    monkeypatch.setenv(fused_library.TARGET_VARIABLE, "x86-64-v3")  # another CPU class: its own library
    assert fused.build() != path and len(compiled) == 2


@pytest.mark.parametrize("damage", ["truncated", "replaced", "no record"])
def test_a_cached_library_that_is_not_the_one_built_is_never_loaded(tmp_path, monkeypatch, capsys, damage):
    """A truncated library crashed every training with SIGBUS and an empty stderr; another library in
    its place ran its own constructor. `build()` (whose path alone `_load` opens) returns the cached
    library only if its SHA-256 is the one recorded when it was built: otherwise it builds it again,
    with one line saying so. The compiler is stood in for by a copy of the real build of this run."""
    good = fused.build().read_bytes()  # this run's real library (built once for the session)

    def compile_(command, **kwargs):  # `cc ... -o OUT SOURCES`: writes the good library to OUT
        Path(command[command.index("-o") + 1]).write_bytes(good)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setenv("MOBILENET_DATA", str(tmp_path))
    monkeypatch.setattr(fused_library.subprocess, "run", compile_)
    library = fused.build()
    record = library.with_name(library.name + ".sha256")
    assert library.read_bytes() == good and record.exists() and fused_library._intact(library)
    if damage == "truncated":
        library.write_bytes(good[:len(good) // 2])
    elif damage == "replaced":  # any other library: its constructor would run when it is loaded
        library.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    else:
        record.unlink()
    capsys.readouterr()
    assert fused.build() == library and library.read_bytes() == good and fused_library._intact(library)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "do not match the checksum" in notes[0] and str(library) in notes[0], err
    assert "compiling the training kernels for this CPU" in err  # no silent wait
    assert fused.build() == library and capsys.readouterr().err == ""  # intact now: used as it is


# The code paths of other CPU classes (common.h's WIDE: AVX-512, AVX2 + FMA, plain vectors), as gcc's
# -march for each, and what a CPU needs to run that build.
CPU_CLASSES = {"x86-64-v3": ("avx2",), "x86-64": ()}


@pytest.mark.parametrize("march", CPU_CLASSES)
def test_the_builds_for_other_cpu_classes_pass_the_kernel_tests_too(march):
    """This file's tests of the kernels' arithmetic (each kernel against PyTorch and float64, every shape
    class and dtype) against the kernels compiled for another CPU class (the native build is the rest of
    this run), so that an AVX-512 machine's CI also checks what an AVX2-only CPU runs, and the other
    way round where the machine runs both."""
    from mobilenet.machine import cpu_flags

    if os.environ.get(fused.TARGET_VARIABLE):
        pytest.skip(f"this run is the {fused.target()} build")
    if platform.machine() not in ("x86_64", "AMD64") or not set(CPU_CLASSES[march]) <= set(cpu_flags()):
        pytest.skip(f"this CPU does not run {march} code")
    kernel_tests = "equal_pytorch or round_like_pytorch or pytorchs_in_float64 or same_arithmetic"
    # a run of its own as `pytest` alone runs it (two threads), not as this pytest-xdist worker's share of
    # the cores: the kernels' per-thread partial sums are tested whatever that share is
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST") and k != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", __file__,
                             "-k", kernel_tests], env={**env, fused.TARGET_VARIABLE: march}, capture_output=True,
                            text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and " passed" in summary and "skipped" not in summary, \
        result.stdout[-3000:] + result.stderr[-2000:]
