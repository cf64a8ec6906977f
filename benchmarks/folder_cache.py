"""Image folders at speed: the same small images trained from a folder of PNG files (decoded once,
`mobilenet.data.decoded`) and from memory (the IDX files), interleaved in one process.

Fashion-MNIST's 70,000 images are written out as an ImageNet-layout folder of PNGs (train/ and
val/), as a user with their own small images would have them. Each variant then trains the same
model for `--steps` steps of its second epoch (the first one pays for the one-time decoding, and
is timed too); the figures are images/s, the folder's as a share of memory's.

    .venv/bin/python benchmarks/folder_cache.py           # writes benchmarks/results/folder_cache.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from mobilenet.bench import environment
from mobilenet.data import load_dataset
from mobilenet.files import write_text
from mobilenet.train import Run, TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"


def write_folder(root: Path) -> Path:
    """Fashion-MNIST as root/{train,val}/<class>/<index>.png (class names made folder-safe)."""
    for split, folder in (("train", "train"), ("test", "val")):
        data = load_dataset("fashion-mnist", split)
        names = [name.replace("/", "-") for name in data.classes]
        for name in names:
            (root / folder / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(data.images[:, 0].numpy(), data.labels.tolist())):
            Image.fromarray(image).save(root / folder / names[label] / f"{i}.png", compress_level=1)
    return root


def images_per_second(data: str, steps: int, out: Path, workers: int) -> tuple[float, float]:
    """(epoch 1 setup + `steps` steps, then `steps` steps of epoch 2): images/s of the training step
    with its loader, for V1 0.5 small-input at 28x28 in one channel."""
    start = time.perf_counter()
    run = Run(TrainConfig(out=str(out), model="mobilenet_v1", width=0.5, small_input=True, data=data, in_chans=1,
                          resolution=28, batch_size=128, epochs=2, lr=0.1, workers=workers), progress=False)
    rates = []
    for epoch in range(2):
        run.model.train()
        run.train_loader.set_epoch(epoch)
        seen, begin = 0, time.perf_counter() if epoch else start
        for i, (images, labels) in enumerate(run.train_loader):
            if i == steps:
                break
            run._step(images, labels)
            run.optimizer.step()
            seen += len(labels)
        rates.append(seen / (time.perf_counter() - begin))
    run.close()
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="--workers as given to train (default 2, train's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        began = time.perf_counter()
        folder = write_folder(work / "fashion-png")
        written_s = time.perf_counter() - began
        runs: dict[str, list[tuple[float, float]]] = {"memory": [], "folder": []}
        for repeat in range(args.repeats):
            for name, data in (("memory", "fashion-mnist"), ("folder", str(folder))):
                runs[name].append(images_per_second(data, args.steps, work / f"{name}{repeat}", args.workers))
                print(name, [round(r) for r in runs[name][-1]], flush=True)
    epoch2 = {name: statistics.median(r[1] for r in rates) for name, rates in runs.items()}
    result = {"steps": args.steps, "repeats": args.repeats, "workers": args.workers, "png_write_s": written_s,
              "images_per_s_epoch2": epoch2, "images_per_s_epoch1_with_setup": {
                  name: statistics.median(r[0] for r in rates) for name, rates in runs.items()},
              "folder_share_of_memory": epoch2["folder"] / epoch2["memory"], "runs": runs,
              "environment": environment(__import__("torch").get_num_threads())}
    RESULTS.mkdir(exist_ok=True)
    write_text(RESULTS / "folder_cache.json", json.dumps(result, indent=2) + "\n")
    print(f"epoch 2: folder {epoch2['folder']:.0f} images/s, memory {epoch2['memory']:.0f}: "
          f"{100 * result['folder_share_of_memory']:.0f}% ({result['environment']['cpu']})")


if __name__ == "__main__":
    main()
