"""Training: exact resume, the run directory, optimizer groups, schedule, divergence."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mobilenet import create_model
from mobilenet.checkpoint import load_checkpoint, read_safetensors
from mobilenet.train import Run, TrainConfig, TrainingError, learning_rate, parameter_groups, train
from runs import tiny


def final_weights(out) -> dict[str, torch.Tensor]:
    tensors, _ = read_safetensors(out / "state.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith(("extra.model.", "extra.ema.", "optimizer."))}


@pytest.mark.parametrize("overrides", [
    {},
    {"model": "mobilenet_v2", "optimizer": "rmsprop", "lr": 0.01, "ema_decay": 0.9, "label_smoothing": 0.1,
     "schedule": "exponential", "val_split": 0.2, "min_resolution": 8, "resize_start": 0, "resize_end": 0.5},
], ids=["v1-sgd", "v2-rmsprop-ema-dropout-val-progressive"])
def test_resume_is_exact(tmp_path, overrides):
    train(tiny(tmp_path / "straight", **overrides), progress=False)
    train(tiny(tmp_path / "broken", **overrides), stop_after=1, progress=False)
    assert json.loads((tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    train(TrainConfig(out=str(tmp_path / "broken")), resume=True, progress=False)
    straight, broken = final_weights(tmp_path / "straight"), final_weights(tmp_path / "broken")
    assert straight.keys() == broken.keys()
    assert sum(k.startswith("extra.model.") for k in straight) > 50
    for key in straight:
        torch.testing.assert_close(broken[key], straight[key], rtol=1e-6, atol=1e-7, msg=key)
    # and the run really trained: the weights moved from their initialisation
    assert not torch.equal(straight["extra.model.classifier.weight"], create_model(
        overrides.get("model", "mobilenet_v1"), width_mult=0.25, num_classes=3, small_input=True).classifier.weight)


def test_a_run_resumed_with_another_configuration_is_refused_naming_the_difference(tmp_path):
    """`Run(config, resume=True)` continues the run in config.out as it was configured: a library user
    who gives a fresh TrainConfig(out=...) (as `train` takes one) hears which setting differs, not
    that the data is not what the run trained on."""
    out = tmp_path / "run"
    train(tiny(out), stop_after=1, progress=False)
    with pytest.raises(TrainingError, match=r"trained with width=0.25, not 1.0: a resumed run keeps its own"):
        Run(TrainConfig(out=str(out)), resume=True, progress=False)
    with pytest.raises(TrainingError, match=r"trained with lr=0.05, not 0.1"):
        Run(tiny(out, lr=0.1), resume=True, progress=False)
    Run(TrainConfig.load(out / "config.json"), resume=True, progress=False).close()  # its own: accepted
    assert train(TrainConfig(out=str(out)), resume=True, progress=False)["epoch"] == 2  # train reads it


def test_run_directory_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    metrics = train(tiny(out), progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "last.safetensors", "best.safetensors", "state.safetensors",
            "curves.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and lines[-1] == metrics
    assert json.loads((out / "config.json").read_text())["classes"] == ["0", "1", "2"]
    model, meta = load_checkpoint(out / "last.safetensors", with_meta=True)
    assert not model.training
    assert meta.classes == ["0", "1", "2"] and meta.resolution == 16 and meta.num_classes == 3
    assert (model.config.name, model.config.width_mult, model.config.small_input) == ("mobilenet_v1", 0.25, True)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_a_run_is_repeatable_with_its_seed(tmp_path):
    train(tiny(tmp_path / "a", epochs=1), progress=False)
    train(tiny(tmp_path / "b", epochs=1), progress=False)
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_existing_run_is_never_overwritten(tmp_path):
    train(tiny(tmp_path, epochs=1), progress=False)
    before = (tmp_path / "last.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="already holds a run"):
        train(tiny(tmp_path, epochs=1), progress=False)
    assert (tmp_path / "last.safetensors").read_bytes() == before


def test_resume_without_state(tmp_path):
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(TrainConfig(out=str(tmp_path / "empty")), resume=True)


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = Run(tiny(tmp_path, epochs=3), progress=False)
    run.run(stop_after=1)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.safetensors")}
    run.criterion = lambda logits, labels: F.cross_entropy(logits, labels) * float("nan")
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, step 1 \(global step \d+\)"):
        run.run()
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.safetensors")} == before
    assert load_checkpoint(tmp_path / "last.safetensors") is not None


def test_no_weight_decay_on_depthwise_batchnorm_and_bias():
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=3)
    decay, no_decay = parameter_groups(model, 1e-4)
    depthwise = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    batchnorm = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    decayed = {id(p) for p in decay["params"]}
    assert len(depthwise) == 13 and not decayed & (depthwise | batchnorm | {id(model.classifier.bias)})
    assert id(model.classifier.weight) in decayed and id(model.features[1].pointwise.conv.weight) in decayed
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 1e-4
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    decay_dw, _ = parameter_groups(model, 1e-4, depthwise_decay=True)
    assert depthwise <= {id(p) for p in decay_dw["params"]}


def test_learning_rate_schedule():
    config = TrainConfig(lr=0.2, epochs=10, warmup_epochs=1)
    steps = 100
    assert learning_rate(config, 0, steps) == pytest.approx(0.2 / 100)
    assert learning_rate(config, 99, steps) == pytest.approx(0.2)
    assert learning_rate(config, 100 + 450, steps) == pytest.approx(0.1)  # half way through the cosine
    assert learning_rate(config, 999, steps) < 1e-4
    paper = TrainConfig(lr=0.045, schedule="exponential", lr_gamma=0.98, warmup_epochs=0, epochs=300)
    assert learning_rate(paper, 250, steps) == pytest.approx(0.045 * 0.98**2)


@pytest.mark.parametrize("field,value,message", [
    ("epochs", 0, "epochs"), ("batch_size", 0, "batch size"), ("lr", -1.0, "learning rate"),
    ("optimizer", "adamw", "optimizer"), ("schedule", "step", "schedule"), ("label_smoothing", 1.0, "smoothing"),
])
def test_bad_training_options(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        train(tiny(tmp_path, **{field: value}), progress=False)
    assert not (tmp_path / "config.json").exists()


def test_labels_and_logits_through_cross_entropy_are_finite(tmp_path):
    result = train(tiny(tmp_path, epochs=1), progress=False)
    assert math.isfinite(result["train_loss"]) and 0 <= result["test_top1"] <= 1


def pretrained_checkpoint(tmp_path, num_classes: int):
    """A 'converted' checkpoint: a TF-style V2 with its own normalisation and random weights."""
    from mobilenet.checkpoint import ModelMeta, save_checkpoint

    model = create_model("mobilenet_v2", width_mult=0.25, num_classes=num_classes, small_input=True,
                         activation="relu6", bn_eps=1e-3, padding="tf_same")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.bias.data.uniform_(-0.1, 0.1)
    path = tmp_path / "pretrained.safetensors"
    save_checkpoint(path, model, ModelMeta(config=model.config, classes=[f"c{i}" for i in range(num_classes)],
                                           resolution=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    return path, model.state_dict()


def test_fine_tune_replaces_the_classifier_and_keeps_everything_else(tmp_path):
    path, source = pretrained_checkpoint(tmp_path, num_classes=7)
    run = Run(tiny(tmp_path / "run", pretrained=str(path), freeze_epochs=1, epochs=2), progress=False)
    assert run.model.config.padding == "tf_same" and run.model.config.bn_eps == 1e-3
    assert run.model.classifier.out_features == 3 and run.meta.mean == (0.5, 0.5, 0.5)
    start = {k: v.clone() for k, v in run.model.state_dict().items()}
    for key, value in source.items():
        if not key.startswith("classifier."):
            assert torch.equal(start[key], value), key
    run.run(stop_after=1)  # epoch 1: only the classifier learns
    after_frozen = run.model.state_dict()
    assert all(torch.equal(after_frozen[k], start[k]) for k in start if not k.startswith("classifier."))
    assert not torch.equal(after_frozen["classifier.weight"], start["classifier.weight"])
    run.run()  # epoch 2: everything learns
    assert not torch.equal(run.model.state_dict()["features.1.depthwise.conv.weight"],
                           start["features.1.depthwise.conv.weight"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"] == "mobilenet_v2" and saved["model_options"]["padding"] == "tf_same"
    run.close()  # lets go of the run folder, as `train` does at the end
    resumed_run = Run(TrainConfig.load(tmp_path / "run" / "config.json"), resume=True, progress=False)
    assert resumed_run.model.config == run.model.config  # rebuilt without the pretrained file


def test_fine_tune_with_the_same_classes_keeps_the_classifier(tmp_path):
    path, source = pretrained_checkpoint(tmp_path, num_classes=3)
    run = Run(tiny(tmp_path / "run", pretrained=str(path)), progress=False)
    assert torch.equal(run.model.classifier.weight, source["classifier.weight"])


def test_pretrained_that_does_not_fit(tmp_path):
    from mobilenet.checkpoint import ModelMeta, save_model_state

    path, source = pretrained_checkpoint(tmp_path, num_classes=3)
    source.pop("features.2.expand.conv.weight")
    meta = ModelMeta(config=create_model("mobilenet_v2", width_mult=0.25, num_classes=3, small_input=True).config,
                     classes=["a", "b", "c"], resolution=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    save_model_state(path, source, meta)
    with pytest.raises(TrainingError, match="missing tensor features.2.expand.conv.weight"):
        Run(tiny(tmp_path / "run", pretrained=str(path)), progress=False)


def test_each_epoch_reports_its_share_of_the_compute_bound(tmp_path):
    """ImageNet strides at 32x32 end in a 1x1 map: the FLOP count behind the bound must not run
    BatchNorm in training mode on a batch of one."""
    metrics = train(tiny(tmp_path / "run", small_input=False, resolution=32, epochs=1), progress=False)
    assert isinstance(metrics["fused_modules"], int) and metrics["matmul_gflops"] > 1
    assert 0 < metrics["of_bound"] < 1
    assert metrics["of_bound"] == pytest.approx(metrics["images_per_s"] / metrics["bound_images_per_s"])


def test_a_given_matrix_peak_stands_for_the_probe_and_a_malformed_one_is_refused_before_the_run(tmp_path, monkeypatch):
    from mobilenet import machine
    from mobilenet.cost import cost

    try:
        for given in ("123.5", "0", "-4", "fast", "inf"):
            monkeypatch.setenv(machine.PEAK_VARIABLE, given)
            machine.matmul_probe.cache_clear()
            out = tmp_path / given
            if given == "123.5":
                metrics = train(tiny(out, epochs=1), progress=False)
                assert metrics["matmul_gflops"] == pytest.approx(123.5)
                step = 3 * 2 * cost("mobilenet_v1", 16, width_mult=0.25, small_input=True, num_classes=3).macs
                assert metrics["bound_images_per_s"] == pytest.approx(123.5e9 / step, rel=1e-6)
            else:
                with pytest.raises(ValueError, match=r"\$MOBILENET_MATMUL_GFLOPS must be a positive number"):
                    train(tiny(out, epochs=1), progress=False)
                assert not out.exists()  # refused before anything was written
    finally:
        machine.matmul_probe.cache_clear()  # the next run in this process makes its own again


def test_the_fused_optimizer_steps_like_pytorchs_reference_sgd():
    """The trainer's SGD (PyTorch's fused kernel, momentum buffers zero from the start so that a
    backbone unfrozen later can join) against torch.optim.SGD's plain for-loop, Nesterov, decay
    groups, a channels-last model: the same weights after three steps."""
    from mobilenet.train.optim import build_optimizer

    torch.manual_seed(0)
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=3, small_input=True)
    model = model.to(memory_format=torch.channels_last)
    reference = create_model("mobilenet_v1", width_mult=0.25, num_classes=3, small_input=True)
    reference = reference.to(memory_format=torch.channels_last)
    reference.load_state_dict(model.state_dict())
    config = TrainConfig(out="unused", lr=0.1, momentum=0.9, weight_decay=5e-4)
    ours = build_optimizer(model, config)
    plain = torch.optim.SGD(parameter_groups(reference, 5e-4), lr=0.1, momentum=0.9, nesterov=True, foreach=False)
    assert ours.defaults["fused"]
    for step in range(3):
        images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(step))
        for net, optimizer in ((model, ours), (reference, plain)):
            optimizer.zero_grad()
            F.cross_entropy(net(images), torch.tensor([0, 1, 2, 0])).backward()
            optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_training_keeps_freed_memory_so_each_step_does_not_fault_it_in_again():
    """Each step allocates its activations afresh; with glibc's defaults blocks of a few MB go back to
    the kernel when freed and are faulted in again page by page on the next step (the demo's model and
    batch; benchmarks/allocator.py measures the whole training step)."""
    script = (
        "import resource, sys, torch\n"
        "from mobilenet import create_model\n"
        "from mobilenet.train.memory import keep_freed_memory\n"
        "if sys.argv[1] == 'kept': assert keep_freed_memory()\n"
        "model = create_model('mobilenet_v1', width_mult=0.5, num_classes=10, small_input=True)\n"
        "images = torch.randn(32, 3, 32, 32)\n"
        "def step():\n"
        "    model.zero_grad(set_to_none=True)\n"
        "    model(images).sum().backward()\n"
        "step(); step()\n"
        "faults = []\n"
        "for _ in range(5):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    step()\n"
        "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "print(sorted(faults)[2])\n")  # the median step: one the kernel's reclaim happened to touch is not the rule
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's allocator")
    faults = {how: float(subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True,
                                        check=True).stdout.split()[-1]) for how in ("default", "kept")}
    assert 5 * faults["kept"] < faults["default"] and faults["default"] > 5000, faults


def test_the_curves_figure_kept_between_epochs_draws_what_a_new_one_draws(tmp_path):
    """plot_curves keeps one figure per process and gives it each epoch's data: after another run's
    curves (other epochs, other scale, other title) it must draw exactly what a new figure draws."""
    from mobilenet import plots

    def metrics(epochs: int, scale: float) -> list[dict]:
        return [dict(epoch=e, train_loss=scale / e, test_loss=1.1 * scale / e, train_acc=0.4 + e / 100,
                     test_top1=0.45 + e / 90) for e in range(1, epochs + 1)]

    plots.plot_curves(metrics(30, 20.0), tmp_path / "other.png", "another run")
    plots.plot_curves(metrics(2, 0.5), tmp_path / "kept.png", "this run")
    plots.CurvesFigure().draw(metrics(2, 0.5), tmp_path / "new.png", "this run")
    assert (tmp_path / "kept.png").read_bytes() == (tmp_path / "new.png").read_bytes()
    ticks = plots._curves_figure().axes["loss"].get_xticks()
    assert all(float(t).is_integer() for t in ticks)  # whole epochs, not 1.0, 1.5, 2.0


def test_training_compute_is_what_the_flop_counter_sees_the_model_run(tmp_path):
    """Each epoch's `train_pflop` is 3 x the forward FLOPs (PyTorch's FlopCounterMode on the model as
    built, at the run's resolution) x the training images seen (whole batches: the last partial one
    is dropped); `eval_pflop` the forward FLOPs of the test images; `pflop` the running total."""
    from torch.utils.flop_counter import FlopCounterMode

    from mobilenet.data import load_dataset

    train_images = len(load_dataset("digits", "train", classes=["0", "1", "2"])) // 32 * 32
    test_images = len(load_dataset("digits", "test", classes=["0", "1", "2"]))
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=3, small_input=True).eval()
    per_image = {}
    for side in (16, 24):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(1, 3, side, side))
        per_image[side] = counter.get_total_flops()
    # each epoch's side: fixed, or progressive resizing from 16 in epoch 1 to 24 in epoch 2
    for resolution, sides, options in ((16, (16, 16), {}), (24, (24, 24), {}),
                                       (24, (16, 24), dict(min_resolution=16, resize_start=0, resize_end=0.5))):
        out = tmp_path / f"r{resolution}-{sides[0]}"
        train(tiny(out, resolution=resolution, **options), progress=False)
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        trained = [3 * per_image[side] * train_images / 1e15 for side in sides]
        assert [m["resolution"] for m in metrics] == list(sides)
        assert [m["train_pflop"] for m in metrics] == pytest.approx(trained)
        assert [m["eval_pflop"] for m in metrics] == pytest.approx([per_image[resolution] * test_images / 1e15] * 2)
        assert [m["pflop"] for m in metrics] == pytest.approx([trained[0], trained[0] + trained[1]])


def test_the_resolution_schedule_is_ffcvs_definition():
    """Progressive resizing over 10 epochs from 16 to 32, growing between 20% and 60% of the run:
    the minimum through epoch 2 (index 2 is the start of the ramp), then the linear interpolation
    (epoch - 2) / (6 - 2) of the way, rounded to 4-pixel steps, then the full side from epoch 6 on."""
    from mobilenet.train.optim import resolution_at

    config = TrainConfig(epochs=10, min_resolution=16, resize_start=0.2, resize_end=0.6)
    by_hand = [16, 16, 16, 16 + 4 * round(0.25 * 16 / 4), 16 + 4 * round(0.5 * 16 / 4), 16 + 4 * round(0.75 * 16 / 4),
               32, 32, 32, 32]
    assert [resolution_at(config, epoch, 32) for epoch in range(10)] == by_hand == [16, 16, 16, 20, 24, 28, 32, 32,
                                                                                    32, 32]
    assert [resolution_at(TrainConfig(epochs=10), epoch, 32) for epoch in range(10)] == [32] * 10  # off
    odd = TrainConfig(epochs=4, min_resolution=8, resize_start=0, resize_end=0.75)  # 14 is not a step from 8
    assert [resolution_at(odd, epoch, 14) for epoch in range(4)] == [8, 8, 12, 14]


def test_progressive_resizing_trains_on_the_resized_batch(tmp_path, monkeypatch):
    """The images the step sees are the augmented batch resized to the epoch's side with
    antialiased bilinear interpolation (F.interpolate by hand on what the loader gave); the
    evaluation sees the full side."""
    seen, loaded = [], []
    real_step = Run._step

    def step(self, images, labels):
        seen.append(images.clone())
        return real_step(self, images, labels)

    from mobilenet.data.loader import InMemoryLoader

    real_iter = InMemoryLoader.__iter__

    def loader_iter(self):
        for images, labels in real_iter(self):
            if self.train:
                loaded.append(images.clone())
            yield images, labels

    monkeypatch.setattr(Run, "_step", step)
    monkeypatch.setattr(InMemoryLoader, "__iter__", loader_iter)
    train(tiny(tmp_path / "run", epochs=2, min_resolution=8, resize_start=0, resize_end=0.5), progress=False)
    assert [images.shape[-1] for images in seen] == [8] * (len(seen) // 2) + [16] * (len(seen) // 2)
    assert len(seen) == len(loaded) > 2
    torch.testing.assert_close(seen[0], F.interpolate(loaded[0], size=(8, 8), mode="bilinear", antialias=True))
    assert torch.equal(seen[-1], loaded[-1])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["resolution"] for m in metrics] == [8, 16]


def test_eval_every_skips_evaluations_and_changes_nothing_else(tmp_path):
    """--eval-every 2 over 3 epochs evaluates after epochs 2 and 3 (the last always): the weights and
    the evaluated epochs' results are those of the run that evaluates every epoch, a resume in the
    middle ends the same, and the curves draw the test series where it exists."""
    from mobilenet.checkpoint import read_safetensors

    def lines(out):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    every, sparse, resumed = tmp_path / "every", tmp_path / "sparse", tmp_path / "resumed"
    train(tiny(every, epochs=3), progress=False)
    train(tiny(sparse, epochs=3, eval_every=2), progress=False)
    train(tiny(resumed, epochs=3, eval_every=2), stop_after=1, progress=False)
    train(tiny(resumed), resume=True, progress=False)
    dense, few = lines(every), lines(sparse)
    assert [("test_top1" in m) for m in few] == [False, True, True]
    for e in (1, 2):
        assert few[e]["test_top1"] == dense[e]["test_top1"] and few[e]["test_loss"] == dense[e]["test_loss"]
    assert sum(m.get("eval_pflop", 0) for m in few) == pytest.approx(2 / 3 * sum(m["eval_pflop"] for m in dense))
    for out in (sparse, resumed):
        got, _ = read_safetensors(out / "last.safetensors")
        expected, _ = read_safetensors(every / "last.safetensors")
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    timing = ("images_per_s", "epoch_time_s", "eval_time_s", "matmul_gflops", "bound_images_per_s", "of_bound")
    assert [{k: v for k, v in m.items() if k not in timing} for m in lines(resumed)] == \
        [{k: v for k, v in m.items() if k not in timing} for m in few]
    assert (sparse / "curves.png").exists() and (sparse / "best.safetensors").exists()


def test_flip_test_time_augmentation_averages_two_forward_passes(tmp_path):
    """--tta-flip: each test image's logits are the mean of the model's on it and on its mirror, by
    hand here with two forward passes; the evaluation's compute counts both; refused for data that
    is never mirrored in training (the digits)."""
    from mobilenet.checkpoint import load_checkpoint
    from mobilenet.data import load_dataset, make_loader
    from mobilenet.train import TrainingError

    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (folder / split / name).mkdir(parents=True)
            for i in range(20):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / split / name / f"{i}.png")
    out = tmp_path / "run"
    train(tiny(out, data=str(folder), classes=None, epochs=1, batch_size=8, tta_flip=True), progress=False)
    (m,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    model, meta = load_checkpoint(out / "last.safetensors", with_meta=True)
    test = load_dataset(folder, "val", resolution=meta.resolution, channels=3)
    total, right = 0.0, 0
    with torch.no_grad():
        for images, labels in make_loader(test, 8, train=False, mean=meta.mean, std=meta.std, channels_last=False):
            logits = (model(images) + model(images.flip(-1))) / 2
            total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            right += int((logits.argmax(1) == labels).sum())
    assert m["test_top1"] == right / 40 and m["test_loss"] == pytest.approx(total / 40, rel=1e-5)
    assert m["eval_pflop"] == pytest.approx(m["train_pflop"] * 2 / 3)  # 40 images each, twice forward against 3x
    with pytest.raises(TrainingError, match="never mirrored"):
        train(tiny(tmp_path / "digits", tta_flip=True), progress=False)
