"""The training run, top to bottom: set up, train one epoch, evaluate, save, repeat.

A run directory holds:
    config.json         the resolved TrainConfig
    metrics.jsonl       one JSON line per epoch
    last.safetensors    the model after the latest epoch (a loadable checkpoint)
    best.safetensors    the model with the best test top-1 so far
    state.safetensors   what `--resume` needs: weights, optimizer, averaged weights, generators, metrics
    curves.png          loss and accuracy per epoch
Every file is written atomically, once per epoch, in the order `mobilenet.train.rundir` gives: a
stop at any moment loses at most the epoch in progress, and resuming continues as if nothing had
happened (same weights as an unbroken run).
"""

from __future__ import annotations

import functools
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mobilenet import cache
from mobilenet.checkpoint import (
    ModelMeta, load_training_state, read_checkpoint, save_model_state, save_training_state,
)
from mobilenet.cost import check_model_resolution, cost
from mobilenet.data import load_dataset, make_loader
from mobilenet.data.folder import SMALL_INPUT_SIDE, ImageFolder
from mobilenet.data.load import fingerprint, hold_out, split_name
from mobilenet.data.memory import stats_to_channels
from mobilenet.evaluate import EvalResult, evaluate
from mobilenet.files import write_text
from mobilenet.fused import KERNELS, fuse
from mobilenet.machine import forward_flops, matmul_probe
from mobilenet.models import create_model
from mobilenet.train.amp import CACHE_FILE as AMP_CACHE
from mobilenet.train.amp import StepChoice, choose_step
from mobilenet.train.config import TrainConfig
from mobilenet.train.distributed import Distributed, from_environment
from mobilenet.train.memory import keep_freed_memory
from mobilenet.train.optim import build_optimizer, learning_rate, resolution_at
from mobilenet.train.rundir import BEST, CONFIG, CURVES, LAST, METRICS, STATE, RunFolder, TrainingError


@functools.lru_cache(maxsize=64)
def _macs(model: str, resolution: int, kwargs: str) -> int:
    """The cost table's mult-adds, kept for the process: the runs of a study or a test suite that
    share a model do not build it again for each run (tens of ms each)."""
    return cost(model, resolution, **json.loads(kwargs)).macs


def _ema_model(model: nn.Module, decay: float):
    avg = torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=avg, use_buffers=True)


def resolve_pretrained(config: TrainConfig) -> tuple[TrainConfig, tuple[dict, ModelMeta]]:
    """The configuration a run from `config.pretrained` really has: the checkpoint's architecture
    (model, width, small input, activation, eps, padding, its dropout unless one is given) and
    normalisation; and the checkpoint's tensors and metadata. `config` itself is not changed."""
    tensors, meta = read_checkpoint(config.pretrained)
    arch = meta.config.to_dict()
    model, width, small_input = arch.pop("name"), arch.pop("width_mult"), arch.pop("small_input")
    arch.pop("num_classes")
    arch.pop("in_chans")  # the data's, as the classes are: the stem is adapted (`adapt_stem`)
    dropout = arch.pop("dropout")
    resolved = replace(config, model=model, width=width, small_input=small_input, model_options=arch,
                       dropout=dropout if config.dropout is None else config.dropout,
                       mean=list(meta.mean), std=list(meta.std))
    return resolved, (tensors, meta)


def adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A pretrained stem's filters (`out x C x k x k`) for `in_chans` input channels, by timm's rule
    (`adapt_input_conv`): to one channel, summed over the colours (a grey image then gives what its
    RGB copy gave); from one, or from 3 to more, repeated and scaled by C / in_chans."""
    have = weight.shape[1]
    if have == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // have)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (have / in_chans)


class Run:
    """The state of one training run and the steps that advance it."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, progress: bool = True,
                 dist: Distributed | None = None, resized: bool = False) -> None:
        self.config = config
        self.resized = resized  # a resumed run given another number of epochs (`train(..., epochs=)`)
        self.dist = dist or Distributed()
        self.device = self.dist.device
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults for each step's fresh activations (mobilenet.train.memory)
        self.is_main = self.dist.is_main
        self.progress = progress and self.is_main
        self.folder = RunFolder(config.out)
        self.out = self.folder.path
        try:
            self._setup(resume)
        except BaseException:
            self.folder.release(failed=True)
            raise

    def close(self) -> None:
        """Let go of the run folder (its lock): another process may write it from now on."""
        self.folder.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _setup(self, resume: bool) -> None:
        """The run in named steps: its folder, its data, its model, its optimizer, its state."""
        pretrained = None
        if self.device.type == "cpu":
            matmul_probe()  # made now (the first epoch would): a malformed $MOBILENET_MATMUL_GFLOPS stops it here
        if self.config.pretrained and not resume:
            self.config, pretrained = resolve_pretrained(self.config)
        self._prepare_out(resume)
        if resume:
            self._check_resumed_config()
        self._load_data()
        self._build_model(pretrained)
        self._build_optimizer()
        self.epoch, self.step, self.best_top1 = 0, 0, -1.0
        self.metrics: list[dict] = []
        if resume:
            self._load_state()
            if self.resized:
                self._resize()
        elif self.is_main:  # written once everything it names was found and built: exactly what runs
            write_text(self.folder / CONFIG, self.config.to_json())
        self.amp = self._choose_step()

    def _probe_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch of the run's shape and layout, for the probes of the training step."""
        batch, channels, side = self.config.batch_size, self.train_set.channels, self.train_set.resolution
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(batch, channels, side, side, generator=generator).to(self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, len(self.train_set.classes), (batch,), generator=generator).to(self.device)
        return images, labels

    def _choose_step(self) -> StepChoice:
        """Which of `mobilenet.fused`'s kernels and whether bf16 autocast (`mobilenet.train.amp`): as
        asked, as this run recorded it (a resumed run keeps its decision), or probed and cached. Not
        under torch.compile, which fuses by itself. The chosen kernels are swapped into the model."""
        config, last = self.config, self.metrics[-1] if self.metrics else {}
        fused = config.fused_bn and not config.compile
        if last.get("amp") in ("bf16", "fp32"):
            kernels = last.get("kernels", ["bn_act"] if last.get("fused_bn") else [])  # older runs: BatchNorm only
            choice = StepChoice(tuple(kernels) if fused else (), last["amp"] == "bf16", "recorded by this run",
                                last.get("amp_probe"), last.get("step_probes"))
        else:
            report = (lambda what: print(f"probing the training step (once per machine, model and batch): {what}",
                                         flush=True)) if self.is_main else None  # facts, not a bar: always said
            choice = choose_step(config.amp, fused, self.model, *self._probe_batch(), self.criterion,
                                 cache=cache.folder() / AMP_CACHE, report=report)
            if self.dist.enabled:  # every process must compute alike: a choice only if every one made it
                names = list(KERNELS)
                votes = self.dist.all_reduce(torch.tensor([float(choice.bf16)] + [float(k in choice.kernels)
                                                                                 for k in names]))
                kept = votes == self.dist.world_size
                unanimous = bool(((votes == 0) | kept).all())
                choice = StepChoice(tuple(k for k, ok in zip(names, kept[1:]) if ok), bool(kept[0]),
                                    choice.why if unanimous else "what every process chose", choice.speedup,
                                    choice.probes)
            if self.is_main and choice.probes:
                print(f"training step: kernels {'+'.join(choice.kernels) or 'none'} (probes: "
                      + ", ".join(f"{k} {v:.2f}x" for k, v in choice.probes.items())
                      + f"); bf16 autocast {'on' if choice.bf16 else 'off'}: {choice.why}", flush=True)
        self.fused = fuse(self.model, choice.kernels) if choice.kernels else 0
        return choice

    def _load_data(self) -> None:
        """Both splits (rank 0 downloads first) and their loaders, normalised as the model expects."""
        config = self.config
        if config.download and not self.is_main:
            self.dist.barrier()  # rank 0 downloads first, the others then read what it wrote
        self.train_set = load_dataset(config.data, "train", classes=config.classes, resolution=config.resolution,
                                      download=config.download and self.is_main, root=config.data_root,
                                      channels=config.in_chans)
        if config.download and self.is_main:
            self.dist.barrier()
        self._data_defaults()
        config = self.config
        if config.val_split:  # tuning: the test split is not even loaded
            self.train_set, self.test_set = hold_out(self.train_set, config.val_split)
            self.held_out = f"val ({config.val_split:g} of train)"
        else:
            self.test_set = load_dataset(config.data, "test", classes=config.classes, resolution=config.resolution,
                                         root=config.data_root, channels=config.in_chans)
            self.held_out = split_name(self.test_set)
        if config.min_resolution is not None and config.min_resolution >= self.train_set.resolution:
            raise TrainingError(f"--min-resolution {config.min_resolution} must be below the resolution "
                                f"({self.train_set.resolution})")
        if not len(self.train_set) or not len(self.test_set):
            raise TrainingError(f"{config.data}: the train or {self.held_out} split holds no images")
        self.data_fingerprint = fingerprint(self.train_set, self.test_set)
        if config.tta_flip and not getattr(self.train_set, "flip", True):
            raise TrainingError(f"--tta-flip averages each image with its mirror, but {config.data} is never mirrored "
                                "in training (its mirror images are not of their class)")
        self.channels_last = config.channels_last and self.device.type in ("cpu", "cuda")
        channels = self.train_set.channels  # a pretrained model brings its own statistics, for its channels
        self.mean = stats_to_channels(config.mean or self.train_set.mean, channels)
        self.std = stats_to_channels(config.std or self.train_set.std, channels)
        common = dict(seed=config.seed, rank=self.dist.rank, world_size=self.dist.world_size, workers=config.workers,
                      channels_last=self.channels_last, mean=self.mean, std=self.std)
        self.train_loader = make_loader(self.train_set, config.batch_size, train=True, erasing=config.random_erasing,
                                        **common)
        self.test_loader = make_loader(self.test_set, config.batch_size, train=False, **common)

    def _data_defaults(self) -> None:
        """What was left to the data, decided from the training split and recorded in the run's
        configuration (so a resume and the test split use the same): an image folder's resolution and
        channels (`folder.folder_defaults`), and the small-input variant, on for a folder of images
        `SMALL_INPUT_SIDE` pixels or smaller. The line that starts the run says what and why."""
        config, data = self.config, self.train_set
        folder = isinstance(data, ImageFolder)
        small = config.small_input
        if small is None:
            small = folder and data.resolution <= SMALL_INPUT_SIDE
        said = [data.chosen] if folder and data.chosen else []
        if config.small_input is None and small:
            said.append(f"small-input (images of {SMALL_INPUT_SIDE} pixels or fewer)")
        self.config = replace(config, small_input=small,
                              resolution=data.resolution if folder else config.resolution,
                              in_chans=data.channels if folder else config.in_chans,
                              mean=list(data.mean) if folder and data.chosen and data.channels == 1 and not config.mean
                              else config.mean,
                              std=list(data.std) if folder and data.chosen and data.channels == 1 and not config.std
                              else config.std)
        if said and self.is_main:
            print(f"{config.data}: {'; '.join(said)}", flush=True)

    def _build_model(self, pretrained: tuple[dict, ModelMeta] | None) -> None:
        """The model for this data (from the pretrained weights if any), on its device and layout,
        and what its checkpoints will say about it."""
        config = self.config
        torch.manual_seed(config.seed)
        kwargs = {**(config.model_options or {}), "width_mult": config.width, "in_chans": self.train_set.channels,
                  "num_classes": len(self.train_set.classes), "small_input": config.small_input}
        if config.dropout is not None:
            kwargs["dropout"] = config.dropout
        self.model = create_model(config.model, **kwargs)
        self._model_key = json.dumps(kwargs, sort_keys=True)  # what `image_flops` rebuilds the cost table from
        self._forward_flops: dict[int, int] = {}  # the measured forward FLOPs per side, for the compute bound
        if pretrained is not None:
            self._load_pretrained(*pretrained)
        self.model = self.model.to(self.device)
        check_model_resolution(self.train_set.resolution, self.model)
        if config.min_resolution is not None:
            check_model_resolution(config.min_resolution, self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.sync_bn and self.dist.enabled:
            if self.device.type == "cpu":
                raise TrainingError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm does not run on CPU "
                                    "(use --freeze-bn, or per-process BatchNorm)")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        source = {"data": config.data, "root": config.data_root, "classes": config.classes}
        self.meta = ModelMeta(config=self.model.config, classes=list(self.train_set.classes),
                              resolution=self.train_set.resolution, mean=self.mean, std=self.std,
                              extra={"crop_fraction": self.train_set.crop_fraction, "data": source})

    def _build_optimizer(self) -> None:
        config = self.config
        self.optimizer = build_optimizer(self.model, config)
        self.ema = _ema_model(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.frozen = False
        self._wrap()

    def _wrap(self) -> None:
        """What the training step calls: the model, in DDP when distributed (DDP registers the
        parameters that need gradients when it is built, so freezing re-wraps), compiled if asked."""
        self.forward = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.config.compile:
            self.forward = torch.compile(self.forward)

    def _set_frozen(self, frozen: bool) -> None:
        """Train only the classifier (its BatchNorm statistics fixed too) while `frozen`."""
        if frozen == self.frozen:
            return
        classifier = {id(p) for p in self.model.classifier.parameters()}
        for param in self.model.parameters():
            param.requires_grad_(not frozen or id(param) in classifier)
        self.frozen = frozen
        self._wrap()

    # --- pretrained weights --------------------------------------------------------------------

    def _load_pretrained(self, tensors: dict, meta: ModelMeta) -> None:
        """Every tensor of the checkpoint, but a classifier for another number of classes."""
        replaced = meta.num_classes != self.model.config.num_classes
        if replaced:
            tensors = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
        stem = "features.0.conv.weight"
        if stem in tensors:
            tensors = {**tensors, stem: adapt_stem(tensors[stem], self.model.config.in_chans)}
        own = self.model.state_dict()
        for key, value in tensors.items():
            if key in own and own[key].shape != value.shape:
                raise TrainingError(f"{self.config.pretrained} does not fit {self.config.model}: tensor {key} has "
                                    f"shape {tuple(value.shape)}, the model's is {tuple(own[key].shape)}")
        missing, unexpected = self.model.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if not (replaced and k.startswith("classifier."))]
        if missing or unexpected:
            first = (missing or unexpected)[0]
            raise TrainingError(f"{self.config.pretrained} does not fit {self.config.model}: "
                                f"{'missing' if missing else 'unexpected'} tensor {first}")

    # --- files ---------------------------------------------------------------------------------

    def _check_resumed_config(self) -> None:
        """A resumed run is the run in its folder (`train(..., resume=True)` reads its config.json): a
        `Run` given another configuration is refused, naming the first difference, before it reads data
        or builds a model that the saved state would not fit (which said only that the data differed)."""
        saved = asdict(TrainConfig.load(self.folder / CONFIG))
        given = asdict(self.config)
        skip = {"out", "epochs"} if self.resized else {"out"}
        for key, value in saved.items():
            if key not in skip and given.get(key) != value:
                raise TrainingError(f"{self.out} was trained with {key}={value!r}, not {given.get(key)!r}: a resumed "
                                    f"run keeps its own configuration (train(config, resume=True) reads it; for Run, "
                                    f"pass TrainConfig.load of its config.json)")

    def _prepare_out(self, resume: bool) -> None:
        """Check the folder, then (rank 0) lock it: a run folder has one writer. A fresh start may
        take over a folder whose run was stopped before it committed its first epoch."""
        folder = self.folder
        if resume:
            folder.check_resumable()
        else:
            restart = folder.check_fresh()
        if not self.is_main:
            return
        folder.acquire()
        if resume:
            folder.check_resumable()  # again, now that no other process can change it
            return
        if folder.check_fresh() or restart:
            folder.clear()
            print(f"{self.out}: its run stopped before finishing an epoch; starting it afresh", flush=True)

    def _save(self, result: EvalResult | None) -> None:
        """Commit the epoch (rank 0 only): the best checkpoint if it improved, then the state file,
        which is the commit point, then the views derived from it (`_write_views`)."""
        generators = self.dist.all_gather(torch.get_rng_state())  # every rank's, for its dropout
        if not self.is_main:
            return
        if result is not None and result.top1 > self.best_top1:
            self.best_top1 = result.top1
            save_model_state(self.folder / BEST, self._weights(), self.meta)
        extra = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema:
            extra.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        extra.update({f"rng.torch.{rank}": state for rank, state in enumerate(generators)})
        info = {"epoch": self.epoch, "step": self.step, "best_top1": self.best_top1, "metrics": self.metrics,
                "data": {"data": self.config.data, "root": self.config.data_root, "fingerprint": self.data_fingerprint}}
        save_training_state(self.folder / STATE, self.optimizer, extra, info)
        self._write_views()

    def _weights(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint holds: the averaged ones when the run keeps an average."""
        return (self.ema.module if self.ema else self.model).state_dict()

    def _write_views(self) -> None:
        """last.safetensors, metrics.jsonl and curves.png as the committed state says (also on
        resume, so a kill between the state and these files loses nothing)."""
        save_model_state(self.folder / LAST, self._weights(), self.meta)
        write_text(self.folder / METRICS, "".join(json.dumps(m) + "\n" for m in self.metrics))
        from mobilenet.plots import plot_curves  # here, not at the top: matplotlib takes 0.4 s to import

        plot_curves(self.metrics, self.folder / CURVES,
                    title=f"{self.config.model} x{self.config.width:g} on {self.config.data}")

    def _resize(self) -> None:
        """A resumed run given another number of epochs: refused below what it has done, else its
        config.json records the new length (written after the state it extends was read)."""
        if self.config.epochs < self.epoch:
            raise TrainingError(f"{self.out} has run {self.epoch} epochs: --epochs with --resume can extend it or "
                                f"end it sooner, not undo epochs (give at least {self.epoch})")
        if self.is_main:
            write_text(self.folder / CONFIG, self.config.to_json())
            print(f"{self.out}: {self.config.epochs} epochs in all now (the learning-rate schedule's new length); "
                  f"{self.config.epochs - self.epoch} to go from epoch {self.epoch}", flush=True)

    def _load_state(self) -> None:
        extra, info = load_training_state(self.folder / STATE, self.optimizer)
        trained_on = info.get("data")  # absent from runs saved before it was recorded
        if isinstance(trained_on, dict) and trained_on.get("fingerprint") != self.data_fingerprint:
            now = self.config.data_root or self.config.data
            raise TrainingError(f"the data {self.config.data} (read from {now}) is not what {self.out} trained on "
                                f"(from {trained_on.get('root') or trained_on.get('data')}): resuming would mix "
                                "two datasets; bring the run's data back, or start a new run")
        self.model.load_state_dict({k[6:]: v for k, v in extra.items() if k.startswith("model.")})
        if self.ema:
            self.ema.load_state_dict({k[4:]: v for k, v in extra.items() if k.startswith("ema.")})
        saved = extra.get(f"rng.torch.{self.dist.rank}")
        if saved is None:
            raise TrainingError(f"{self.out} was saved by a run of fewer processes: resume it with as many as it had")
        torch.set_rng_state(saved)
        self.epoch, self.step, self.best_top1 = info["epoch"], info["step"], info["best_top1"]
        self.metrics = info["metrics"]
        if self.is_main:
            self._write_views()

    # --- training ------------------------------------------------------------------------------

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp.bf16 else nullcontext():
            logits = self.forward(images)
            loss = self.criterion(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach(), (logits.argmax(1) == labels).sum()

    def train_epoch(self) -> dict:
        config, loader = self.config, self.train_loader
        self._set_frozen(self.epoch < config.freeze_epochs)
        self.model.train()
        if config.freeze_bn or self.frozen:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        loader.set_epoch(self.epoch)
        steps = len(loader)
        sums = torch.zeros(3, dtype=torch.float64)  # loss * images, correct, images: this rank's
        start = time.perf_counter()
        bar = tqdm(total=steps, desc=f"epoch {self.epoch + 1}/{config.epochs}", unit="batch",
                   disable=None if self.progress else True, leave=False, dynamic_ncols=True)  # None: off when not a terminal
        side = resolution_at(config, self.epoch, self.train_set.resolution)
        for i, (images, labels) in enumerate(loader):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            if side != images.shape[-1]:  # progressive resizing: the augmented batch, made smaller
                images = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True)
            lr = learning_rate(config, self.step, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss, correct = self._step(images, labels)
            # every rank sees the same sum, so a NaN on any rank stops all of them at the same step
            check = self.dist.all_reduce(loss.detach().float().clone())
            if not torch.isfinite(check):
                raise TrainingError(
                    f"loss became {check.item()} at epoch {self.epoch + 1}, step {i + 1} (global step {self.step + 1}); "
                    f"stopped, and the last good checkpoint is kept in {self.out}"
                )
            self.optimizer.step()
            if self.ema:
                self.ema.update_parameters(self.model)
            self.step += 1
            sums += torch.tensor([loss.item() * len(labels), int(correct), len(labels)], dtype=torch.float64)
            if self.progress:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{100 * sums[1] / sums[2]:.1f}%",
                                img_s=f"{sums[2] * self.dist.world_size / elapsed:.0f}", lr=f"{lr:.3g}")
                bar.update()
        bar.close()
        elapsed = time.perf_counter() - start
        loss_sum, correct, seen = self.dist.all_reduce(sums).tolist()
        # training compute as the speedrun literature counts it: forward, and backward at twice that
        pflop = 3 * self.image_flops(side) * seen / 1e15
        return {"train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                "images_per_s": seen / elapsed, "epoch_time_s": elapsed, "lr": lr, "train_pflop": pflop,
                "resolution": side, **self._share_of_bound(seen / elapsed, elapsed, side)}

    def _share_of_bound(self, images_per_s: float, epoch_s: float, side: int) -> dict:
        """On the CPU: the compute-bound limit of this training step (3 x the forward FLOPs at the fp32
        matrix peak: the best product this process has timed, two more after each epoch, each process
        on its own cores; after an epoch shorter than 50 products, as in tests, only if none was timed
        yet) and the share of it the epoch reached."""
        if self.device.type != "cpu":
            return {}
        if side not in self._forward_flops:
            self._forward_flops[side] = forward_flops(self.model, 1, side)
        probe = matmul_probe()
        if probe.best_s == float("inf") or epoch_s > 50 * probe.best_s:
            probe.time(2)
        bound = probe.gflops * 1e9 / (3 * self._forward_flops[side]) * self.dist.world_size
        return {"matmul_gflops": probe.gflops, "bound_images_per_s": bound, "of_bound": images_per_s / bound}

    def image_flops(self, resolution: int) -> int:
        """FLOPs of one image's forward pass at `resolution` (2 per mult-add of the analytic cost
        table, which equals what PyTorch's FLOP counter sees the model run: tests/test_cost.py)."""
        return 2 * _macs(self.config.model, resolution, self._model_key)

    def evaluate(self) -> EvalResult:
        model = self.ema.module if self.ema else self.model
        return evaluate(model, self.test_loader, len(self.train_set.classes), reduce=self.dist.all_reduce,
                        flip=self.config.tta_flip)

    def run(self, stop_after: int | None = None) -> dict:
        """Train until `config.epochs` (or `stop_after` more epochs); return the last epoch's metrics."""
        last = self.metrics[-1] if self.metrics else {}
        done_here = 0
        while self.epoch < self.config.epochs and (stop_after is None or done_here < stop_after):
            train = self.train_epoch()
            start = time.perf_counter()
            evaluated = (self.epoch + 1) % self.config.eval_every == 0 or self.epoch + 1 == self.config.epochs
            result = self.evaluate() if evaluated else None
            self.epoch += 1
            done_here += 1
            train["pflop"] = train["train_pflop"] + (last.get("pflop") or 0.0)  # all training so far
            last = {"epoch": self.epoch, "step": self.step, **train}
            if result is not None:
                last.update(eval_time_s=time.perf_counter() - start, test_loss=result.loss, test_top1=result.top1,
                            test_top5=result.top5, test_images=result.num_images,
                            eval_pflop=(1 + self.config.tta_flip) * self.image_flops(self.test_set.resolution)
                * result.num_images / 1e15)
            last.update(test_split=self.held_out, fused_modules=self.fused, **self.amp.to_metrics())
            self.metrics.append(last)
            self._save(result)
            if self.is_main:
                bound = f" ({100 * train['of_bound']:.0f}% of the bound)" if "of_bound" in train else ""
                held_out = "(not evaluated: --eval-every) "
                if result is not None:
                    top5 = f"top-5 {100 * result.top5:.2f}% " if len(self.train_set.classes) > 5 else ""  # else 100%
                    held_out = f"{self.held_out} loss {result.loss:.4f} top-1 {100 * result.top1:.2f}% {top5}"
                side = f" at {train['resolution']} px" if train["resolution"] != self.train_set.resolution else ""
                print(f"epoch {self.epoch}/{self.config.epochs}{side}  train loss {train['train_loss']:.4f} "
                      f"acc {100 * train['train_acc']:.2f}%  {held_out} {train['images_per_s']:.0f} img/s{bound}  "
                      f"{train['epoch_time_s']:.1f}s", flush=True)
        return last


def train(config: TrainConfig, *, resume: bool = False, stop_after: int | None = None,
          progress: bool = True, epochs: int | None = None) -> dict:
    """Train a model as `config` says; with `resume`, continue the run in `config.out` exactly.

    Returns the metrics of the last epoch trained. `stop_after` ends this call after that many
    epochs (a later `resume` goes on), for jobs with a time limit. A resumed run takes its
    configuration from the run directory's config.json: only `config.out` is read here, and the
    run is the one in that folder wherever it was first started (a copied or moved run resumes
    where it is). `epochs` with `resume` changes the run's length (a finished run goes on: the
    learning-rate schedule is stretched to the new length from where the run stands; the epochs
    already run stay as they ran), as timm's `--epochs` does on resume. A new run records its data,
    data root and pretrained file as absolute paths, so that resume and export work from any
    working directory.
    """
    if resume:
        folder = RunFolder(config.out)
        folder.check_resumable()
        saved = TrainConfig.load(folder / CONFIG)
        saved.out = config.out
        resized = epochs is not None and epochs != saved.epochs
        if resized:
            saved.epochs = epochs
        config = saved
    else:
        config, resized = config.with_absolute_paths(), False
    config.validate()
    dist = from_environment()
    try:
        with Run(config, resume=resume, progress=progress, dist=dist, resized=resized) as run:
            return run.run(stop_after)
    finally:
        dist.close()


__all__ = ["Run", "TrainingError", "adapt_stem", "resolve_pretrained", "train"]
