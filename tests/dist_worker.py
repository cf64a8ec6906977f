"""Run by tests/test_distributed.py under torchrun: a tiny training run through the library, after
which every rank writes its own weights, so the test can compare them with `config`'s run in one process.

    python tests/dist_worker.py OUT BATCH [--fail-rank R] [--collectives]

--collectives: then check that the backend lets go of the collectives' tensors (dist_collectives.py).
"""

import argparse
import os

from safetensors.torch import save_file

from mobilenet.train import Run, TrainConfig, from_environment

def config(out: str, batch: int) -> TrainConfig:
    """The run every rank (and the one-process reference) trains."""
    return TrainConfig(out=out, model="mobilenet_v1", width=0.25, small_input=True, data="digits",
                       classes=["0", "1", "2"], resolution=16, epochs=1, batch_size=batch, lr=0.05,
                       warmup_epochs=0, seed=5, freeze_bn=True,
                       amp="off")  # the test compares fp32 arithmetic; auto may pick bf16 for one batch shape only


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("batch", type=int)
    parser.add_argument("--fail-rank", type=int, default=None)
    parser.add_argument("--collectives", action="store_true")
    args = parser.parse_args()

    dist = from_environment(timeout_s=60)
    run = Run(config(args.out, args.batch), progress=False, dist=dist)
    if args.fail_rank == dist.rank:
        step = run._step

        def failing_step(*a):
            if run.step == 2:
                raise RuntimeError(f"injected failure on rank {dist.rank}")
            return step(*a)

        run._step = failing_step
    run.run()
    save_file({k: v.contiguous() for k, v in run.model.state_dict().items()},
              os.path.join(args.out, f"rank{dist.rank}.safetensors"))
    if args.collectives and dist.enabled:
        from dist_collectives import check_collectives

        check_collectives(dist)
    dist.close()


if __name__ == "__main__":
    main()
