"""What several test files train: one tiny configuration, so a change to it is made once."""

from mobilenet.train import TrainConfig


def tiny(out, **overrides) -> TrainConfig:
    """A run of a few seconds: a thin V1 on three digit classes at 16x16."""
    config = dict(out=str(out), model="mobilenet_v1", width=0.25, small_input=True, data="digits",
                  classes=["0", "1", "2"], resolution=16, epochs=2, batch_size=32, lr=0.05, seed=3)
    config.update(overrides)
    return TrainConfig(**config)
