"""Checkpoints: safetensors with the configuration in the metadata, atomic, never code."""

import dataclasses
import pickle

import pytest
import torch

from mobilenet import create_model
from mobilenet.checkpoint import ModelMeta, load_checkpoint, save_checkpoint


def meta_for(model, classes=None) -> ModelMeta:
    n = model.config.num_classes
    return ModelMeta(config=model.config, classes=classes or [f"c{i}" for i in range(n)], resolution=64,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "conv_mobilenet_v1"])
def test_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path, name):
    model = create_model(name, width_mult=0.25, num_classes=4, small_input=True).eval()
    for m in model.modules():  # make BatchNorm statistics non-trivial
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, meta_for(model))
    loaded, meta = load_checkpoint(path, with_meta=True)
    assert not loaded.training and loaded.config == model.config
    assert meta.classes == ["c0", "c1", "c2", "c3"] and meta.resolution == 64 and meta.std == (0.25, 0.25, 0.25)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left


def test_truncated_checkpoint(tmp_path):
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=2)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, meta_for(model))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_checkpoint(path)


def test_pickle_is_refused_without_running_it(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "ran"),))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_checkpoint(path)
    assert not (tmp_path / "ran").exists()


def test_plain_safetensors_without_configuration(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a mobilenet checkpoint"):
        load_checkpoint(path)


def test_tensors_that_do_not_fit_the_configuration(tmp_path):
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=2)
    meta = meta_for(model)
    meta.config, meta.classes = dataclasses.replace(meta.config, num_classes=5), list("abcde")  # consistent, but not the tensors
    save_checkpoint(tmp_path / "m.safetensors", model, meta)
    with pytest.raises(ValueError, match="do not fit"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.safetensors")
    model = create_model("mobilenet_v1", width_mult=0.25, num_classes=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "m.safetensors", model, meta_for(model))


def test_resumed_fused_sgd_continues_exactly_on_a_channels_last_model(tmp_path):
    """A saved momentum buffer is contiguous; the channels-last weight it belongs to is not. PyTorch's
    fused SGD reads both as flat memory, so the loaded buffer must take its weight's layout, or the
    resumed step updates each weight with another weight's momentum."""
    from mobilenet.checkpoint import load_training_state, save_training_state

    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    def step(model, optimizer):
        optimizer.zero_grad()
        model(images).square().mean().backward()
        optimizer.step()

    def build(model):
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, fused=True)

    model = create_model("conv_mobilenet_v1", num_classes=10, width_mult=0.25, small_input=True).to(memory_format=torch.channels_last)
    optimizer = build(model)
    step(model, optimizer)
    save_training_state(tmp_path / "state.safetensors", optimizer, {}, {"epoch": 1, "step": 1, "best_top1": 0,
                                                                         "metrics": []})
    resumed = create_model("conv_mobilenet_v1", num_classes=10, width_mult=0.25, small_input=True).to(memory_format=torch.channels_last)
    resumed.load_state_dict(model.state_dict())
    resumed_optimizer = build(resumed)
    load_training_state(tmp_path / "state.safetensors", resumed_optimizer)
    step(model, optimizer)
    step(resumed, resumed_optimizer)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
