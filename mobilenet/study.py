"""`mobilenet study`: the V1 paper's experiments rerun on real data, with measured accuracy and latency
(and the family's members against each other at the same cost).

Each study is a list of points (a model, a width multiplier, and the paper's resolution, taken as
that fraction of 224 of the data's own side: rho = 1, 6/7, 5/7, 4/7 give 28, 24, 20, 16 for
Fashion-MNIST). Every point is trained with one recipe (`recipes.FAST` unless options override it),
from scratch, evaluated on the test split after its last epoch, quantized to INT8 (ONNX Runtime)
and timed at batch 1 with the runtime `auto` chooses. Each point is a run folder of its own in the
study's folder, with a `result.json` once measured: a stopped study continues where it stopped,
finished points are skipped, `--seeds` adds seeds, and `--shard K/N` trains every N-th point so
that several machines share a study; `report` merges their folders into one table.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mobilenet import cache
from mobilenet.checkpoint import load_checkpoint
from mobilenet.checks import some
from mobilenet.cost import check_model_resolution, cost
from mobilenet.data import load_dataset
from mobilenet.data.folder import SMALL_INPUT_SIDE
from mobilenet.export import export_checkpoint, sample_images, training_data
from mobilenet.export.choose import CACHE_FILE, choose
from mobilenet.files import file_digest, write_text
from mobilenet.machine import environment
from mobilenet.models import create_model
from mobilenet.optional import available
from mobilenet.paper import PAPER_ROWS, TF_SLIM_V1
from mobilenet.train import TrainConfig, train
from mobilenet.train.recipes import FAST

PAPER_SIDES = (224, 192, 160, 128)  # Table 7's resolutions: rho = 1, 6/7, 5/7, 4/7
WIDTHS = (1.0, 0.75, 0.5, 0.25)  # Table 6's width multipliers
STUDY_FILE, RESULT_FILE = "study.json", "result.json"  # what a study folder holds, what a measured point holds
DECIDED = ("model", "width", "resolution", "small_input", "seed", "out")  # options the study sets per point


@dataclass(frozen=True)
class Point:
    """One model of a study: `side` is the paper's resolution; ours is the same fraction of the data's."""

    model: str
    width: float
    side: int = 224

    def resolution(self, native: int) -> int:
        return round(native * self.side / 224)

    def name(self, native: int) -> str:
        return f"{self.model}-{self.width:g}-{self.resolution(native)}"

    def label(self, native: int) -> str:
        """The paper's label of a Figure 4 point: width multiplier / resolution."""
        return f"{self.width:g}/{self.resolution(native)}"

    def paper(self) -> dict:
        """The paper's ImageNet figures for this model (its tables; TF-slim's released checkpoints
        for the Figure 4 points the paper does not print), or {}."""
        for row in PAPER_ROWS:
            if (row.model, row.width_mult, row.resolution) == (self.model, self.width, self.side):
                return {"top1": row.top1, "macs_m": row.macs_m, "params_m": row.params_m, "source": row.table}
        if self.model == "mobilenet_v1" and (self.width, self.side) in TF_SLIM_V1:
            macs, params, top1 = TF_SLIM_V1[self.width, self.side]
            return {"top1": top1, "macs_m": macs, "params_m": params, "source": "TF-slim checkpoint"}
        return {}


V1 = "mobilenet_v1"
STUDIES: dict[str, tuple[str, tuple[Point, ...]]] = {
    "table4": ("Table 4: depthwise separable against full convolutions",
               (Point("conv_mobilenet_v1", 1.0), Point(V1, 1.0))),
    "table5": ("Table 5: narrow against shallow", (Point(V1, 0.75), Point("shallow_mobilenet_v1", 1.0))),
    "table6": ("Table 6: the width multiplier", tuple(Point(V1, width) for width in WIDTHS)),
    "table7": ("Table 7: the resolution multiplier", tuple(Point(V1, 1.0, side) for side in PAPER_SIDES)),
    "figure4": ("Figures 4 and 5: 16 models, 4 widths x 4 resolutions",
                tuple(Point(V1, width, side) for width in WIDTHS for side in PAPER_SIDES)),
    "v1-v2": ("V1 against V2 at matched mult-adds", (Point(V1, 0.75), Point("mobilenet_v2", 1.0), Point(V1, 1.0),
                                                      Point("mobilenet_v2", 1.4))),
    "families": ("V1, V2, V3 and V4 at matched mult-adds (150-210 M at 224)",
                 (Point(V1, 0.5), Point("mobilenet_v3_large", 0.75), Point("mobilenet_v4_conv_small", 1.0),
                  Point("mobilenet_v2", 0.75))),
}


def check_study(name: str) -> tuple[str, tuple[Point, ...]]:
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose one of: {', '.join(STUDIES)}")
    return STUDIES[name]


def parse_shard(text: str | None) -> tuple[int, int]:
    """'K/N' (1 <= K <= N): this machine's share of a study; None is the whole study, 1/1."""
    if text is None:
        return 1, 1
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be K/N, e.g. 2/3, got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be from 1 to N")
    return k, n


def plan(name: str, native: int, seeds: list[int], shard: tuple[int, int] = (1, 1)) -> list[tuple[Point, int]]:
    """The (point, seed) runs of this shard: every N-th of the study's points x seeds, in order."""
    _, points = check_study(name)
    every = [(point, seed) for seed in seeds for point in points]
    k, n = shard
    return [run for i, run in enumerate(every) if i % n == k - 1]


def point_config(point: Point, seed: int, native: int, out: Path, options: dict) -> TrainConfig:
    """The training run of one point: the recipe, the user's options over it, and what the point sets."""
    resolution = point.resolution(native)
    config = {**FAST, **options}
    config.setdefault("eval_every", config["epochs"])  # a study reports the last epoch: evaluate only there
    return TrainConfig(out=str(out), model=point.model, width=point.width, resolution=resolution,
                       small_input=native <= SMALL_INPUT_SIDE, seed=seed, **config).validate()


def _study_record(name: str, data: str, native: int, options: dict) -> dict:
    return {"study": name, "data": data, "native_resolution": native,
            "recipe": {**FAST, **options}, "recipe_source": "mobilenet.train.recipes.FAST"}


def open_study(out: Path, name: str, data: str, native: int, options: dict) -> None:
    """Write the study's record in `out`, or check that `out` holds this study with this recipe."""
    record = _study_record(name, data, native, options)
    path = out / STUDY_FILE
    if path.exists():
        try:
            held = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{path} is not a study record: move {out} away or choose another --out") from None
        if held.get("study") != name or held.get("data") != data:
            raise ValueError(f"{out} holds the study {held.get('study')!r} of {held.get('data')!r}, not {name!r} of "
                             f"{data!r}: choose another --out")
        if held.get("recipe") != record["recipe"]:
            raise ValueError(f"{out} was started with other training options ({held.get('recipe')}): give the same "
                             "ones to continue it, or choose another --out")
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a study folder: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(record, indent=2) + "\n")


def native_side(data: str, options: dict) -> int:
    """The data's own side (rho = 1): --resolution if given, else its training images'."""
    if options.get("resolution"):
        return int(options["resolution"])
    dataset = load_dataset(data, "train", classes=options.get("classes"), root=options.get("data_root"),
                           channels=options.get("in_chans"))
    return dataset.resolution


def run_study(name: str, data: str, out: str | Path, *, seeds: list[int] | None = None, shard: str | None = None,
              options: dict | None = None, progress: bool = True, say=print) -> list[Path]:
    """Train and measure this shard's points of study `name` on `data` in `out` (skipping measured
    ones), then write the table and figures of all that `out` holds. Returns the files written."""
    options = dict(options or {})
    given = sorted(key for key in DECIDED if key in options and key != "resolution")
    if given:
        raise ValueError(f"the study sets {', '.join(given)} for each point: drop "
                         f"{', '.join('--' + key.replace('_', '-') for key in given)}")
    title, points = check_study(name)
    k_n = parse_shard(shard)
    seeds = seeds if seeds is not None else [0]
    if not seeds or any(seed < 0 for seed in seeds):
        raise ValueError(f"--seeds must be one or more seeds >= 0, got {seeds}")
    out = Path(out)
    native = native_side(data, options)
    options.pop("resolution", None)
    for point in points:  # before any work: every point's side must pass the model's strides
        resolution = point.resolution(native)
        model = create_model(point.model, width_mult=point.width, small_input=native <= SMALL_INPUT_SIDE)
        try:
            check_model_resolution(resolution, model)
        except ValueError as error:
            raise ValueError(f"study {name} on {native}-pixel data: {point.name(native)}: {error}") from None
    open_study(out, name, data, native, options)
    runs = plan(name, native, seeds, k_n)
    for i, (point, seed) in enumerate(runs, 1):
        folder = out / f"{point.name(native)}-seed{seed}"
        if (folder / RESULT_FILE).exists():
            say(f"study {name}: {i}/{len(runs)} {point.name(native)} seed {seed}: measured already, skipped")
            continue
        say(f"study {name}: {i}/{len(runs)} {point.name(native)} seed {seed}: training")
        measure_point(point, seed, native, folder, {**options, "data": data}, progress)
    return write_report(name, [out], out)


def measure_point(point: Point, seed: int, native: int, folder: Path, options: dict, progress: bool = True) -> dict:
    """Train (or finish training: a run folder with a state resumes) one point, then measure it and
    write its result.json."""
    start = time.perf_counter()
    if (folder / "state.safetensors").exists():
        train(TrainConfig(out=str(folder)), resume=True, progress=progress)
    else:
        train(point_config(point, seed, native, folder, options), progress=progress)
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    checkpoint = folder / "last.safetensors"
    model, meta = load_checkpoint(checkpoint, with_meta=True)
    report = cost(model, meta.resolution)
    latency_ms, runtime = batch1_latency(checkpoint)
    result = {"point": point.name(native), "label": point.label(native), "model": point.model, "width": point.width,
              "paper_side": point.side, "resolution": meta.resolution, "seed": seed, "epochs": last["epoch"],
              "top1": last["test_top1"], "test_images": last.get("test_images"),
              "macs": report.macs, "params": report.params, "latency_ms": latency_ms, "runtime": runtime,
              "train_minutes": sum(m["epoch_time_s"] + m.get("eval_time_s", 0.0) for m in metrics) / 60,
              "train_pflop": last.get("pflop"), "int8": int8_accuracy(checkpoint),
              "measure_minutes": (time.perf_counter() - start) / 60}
    write_text(folder / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    return result


def int8_accuracy(checkpoint: Path) -> dict:
    """INT8 (ONNX Runtime, static, calibrated on training images) against fp32 on the whole test split."""
    if not (available("onnx") and available("onnxruntime")):
        return {"skipped": "onnx and onnxruntime are not installed"}
    try:
        report = export_checkpoint(checkpoint, checkpoint.with_name("last-int8.onnx"), "onnx", int8=True,
                                   min_agreement=0)  # measured and reported, not shipped: no guard
    except ValueError as error:  # e.g. a diverged model whose export fails its check: the study goes on
        return {"failed": str(error).splitlines()[0]}
    return {key: report[key] for key in ("agreement", "fp32_top1", "int8_top1", "images")}


def batch1_latency(checkpoint: Path) -> tuple[float, str]:
    """Median latency at batch 1 (ms) of the runtime `auto` chooses for the checkpoint, and its name
    (the decision is cached under the data root, as `eval` and `predict` cache it)."""
    model, meta = load_checkpoint(checkpoint, with_meta=True)
    source = training_data(meta, checkpoint)
    images = sample_images(source.load("test", meta), 256, meta=meta)
    calibration = sample_images(source.load("train", meta), 256, seed=1, meta=meta)
    _, decision = choose(model, meta.resolution, 1, images=images, calibration=calibration,
                         model_id=file_digest(checkpoint, "sha256"), cache=cache.folder() / CACHE_FILE)
    return decision.median_ms[decision.chosen], decision.chosen


def collect(name: str, folders: list[Path]) -> tuple[dict, list[dict]]:
    """The study record and every measured point of `folders` (each must hold study `name`; the
    same point and seed measured in two folders is counted once)."""
    record, results, seen = None, [], set()
    for folder in folders:
        path = folder / STUDY_FILE
        if not path.is_file():
            raise ValueError(f"{folder} holds no study ({STUDY_FILE} not found)")
        held = json.loads(path.read_text())
        if held.get("study") != name:
            raise ValueError(f"{folder} holds the study {held.get('study')!r}, not {name!r}")
        if record is not None and (held.get("data"), held.get("recipe")) != (record.get("data"), record.get("recipe")):
            raise ValueError(f"{folder} ran study {name} on other data or with another recipe than {folders[0]}: "
                             "their points do not belong in one table")
        record = record or held
        for result_path in sorted(folder.glob(f"*/{RESULT_FILE}")):
            result = json.loads(result_path.read_text())
            if (result["point"], result["seed"]) not in seen:
                seen.add((result["point"], result["seed"]))
                results.append(result)
    return record, results


def summarise(name: str, native: int, results: list[dict]) -> list[dict]:
    """One row per point of the study, in the study's order: its seeds' mean and spread, the paper's figures."""
    _, points = check_study(name)
    rows = []
    for point in points:
        runs = [r for r in results if r["point"] == point.name(native)]
        if not runs:
            continue

        def mean(key, runs=runs):
            values = [r[key] for r in runs if r.get(key) is not None]
            return statistics.fmean(values) if values else None

        top1 = [r["top1"] for r in runs]
        int8 = [r["int8"]["int8_top1"] for r in runs if "int8_top1" in r["int8"]]
        rows.append({"point": point.name(native), "label": point.label(native), "model": point.model,
                     "width": point.width, "resolution": point.resolution(native), "seeds": sorted(r["seed"] for r in runs),
                     "top1": statistics.fmean(top1), "top1_spread": max(top1) - min(top1),
                     "int8_top1": statistics.fmean(int8) if int8 else None, "macs": runs[0]["macs"],
                     "params": runs[0]["params"], "latency_ms": mean("latency_ms"),
                     "runtime": "/".join(sorted({r["runtime"] for r in runs})), "train_minutes": mean("train_minutes"),
                     "train_pflop": mean("train_pflop"), "paper": point.paper()})
    return rows


def markdown(name: str, record: dict, rows: list[dict], environment: dict) -> str:
    title, points = check_study(name)
    recipe = ", ".join(f"{key} {value}" for key, value in record["recipe"].items())
    lines = [f"# {title}, on {record['data']}", "",
             f"Every point trained from scratch with one recipe ({record['recipe_source']}: {recipe}), evaluated on "
             f"the test split after its last epoch; the paper's resolutions are taken as fractions of the data's "
             f"{record['native_resolution']} pixels. Latency: batch 1, the runtime `auto` chose, on {environment['cpu']} "
             f"({environment['threads']} threads). ImageNet columns: the paper's tables (TF-slim's released checkpoints "
             "for the Figure 4 points the paper does not print).", "",
             "| model | width | resolution | ImageNet top-1 | ImageNet M mult-adds | ImageNet M params | top-1 % | "
             "INT8 top-1 % | M mult-adds | M params | latency ms (runtime) | training min | PFLOP | seeds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]

    def figure(value, form="{:.1f}"):
        return "-" if value is None else form.format(value)

    for row in rows:
        paper = row["paper"]
        spread = f" ± {100 * row['top1_spread'] / 2:.2f}" if len(row["seeds"]) > 1 else ""
        lines.append(
            f"| {row['model']} | {row['width']:g} | {row['resolution']} | {figure(paper.get('top1'))} | "
            f"{figure(paper.get('macs_m'), '{:g}')} | {figure(paper.get('params_m'), '{:g}')} | "
            f"{100 * row['top1']:.2f}{spread} | {figure(row['int8_top1'] and 100 * row['int8_top1'], '{:.2f}')} | "
            f"{row['macs'] / 1e6:.2f} | {row['params'] / 1e6:.3f} | "
            f"{figure(row['latency_ms'], '{:.3f}')} ({row['runtime']}) | {figure(row['train_minutes'])} | "
            f"{figure(row['train_pflop'], '{:.3g}')} | {','.join(map(str, row['seeds']))} |")
    missing = [p.name(record["native_resolution"]) for p in points
               if p.name(record["native_resolution"]) not in {row["point"] for row in rows}]
    if missing:
        lines += ["", f"Not measured yet: {some(missing, 8)}."]
    return "\n".join(lines) + "\n"


def write_report(name: str, folders: list[Path], out: Path) -> list[Path]:
    """The table (Markdown, JSON) and the trade-off PNGs of study `name` from `folders`, in `out`."""
    from mobilenet.plots import plot_tradeoff  # here, not at the top: matplotlib takes 0.4 s to import

    record, results = collect(name, [Path(folder) for folder in folders])
    rows = summarise(name, record["native_resolution"], results)
    env = environment(torch.get_num_threads())
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.md", out / f"{name}-table.json"]
    write_text(written[0], markdown(name, record, rows, env))
    write_text(written[1], json.dumps({**record, "environment": env, "rows": rows, "runs": results}, indent=2) + "\n")
    title = f"{check_study(name)[0]}, on {record['data']}"
    for key, label, suffix in (("macs", "million mult-adds (log scale)", "macs"), ("params", "million parameters "
                               "(log scale)", "params"), ("latency_ms", f"latency at batch 1, ms ({env['cpu']})",
                                                          "latency")):
        path = out / f"{name}-top1-vs-{suffix}.png"
        plot_tradeoff(rows, key, label, path, title)
        written.append(path)
    return written


__all__ = ["PAPER_SIDES", "Point", "STUDIES", "WIDTHS", "collect", "parse_shard", "plan", "run_study", "summarise",
           "write_report"]
