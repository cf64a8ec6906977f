"""Data-parallel training on PyTorch's own engine: torch.distributed, launched by torchrun.

`torchrun --nproc_per_node=N -m mobilenet train ...` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; `from_environment` joins them into one process group
(NCCL on GPUs, gloo on CPUs) and the trainer wraps its model in DistributedDataParallel. Without
those variables, training runs in one process and nothing here does anything.
"""

from __future__ import annotations

import os
import time
import weakref
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class Distributed:
    """Where this process stands in the job: its rank, the number of processes, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=_default_device)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over all processes, in place (nothing to do in a single process)."""
        if self.enabled:
            shared = [tensor.clone()]
            dist.all_reduce(shared[0])
            tensor.copy_(shared[0])
            _wait_until_released(shared)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every process's copy of an equally shaped tensor, in rank order."""
        if not self.enabled:
            return [tensor]
        shared = [tensor.clone(), *(torch.empty_like(tensor) for _ in range(self.world_size))]
        dist.all_gather(shared[1:], shared[0])
        out = [t.clone() for t in shared[1:]]
        _wait_until_released(shared)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _wait_until_released(shared: list[torch.Tensor], timeout_s: float = 5.0) -> None:
    """Empty `shared` and wait until the backend's own threads have let go of its tensors too.

    A collective returns as soon as its result is ready, but gloo's worker thread still holds the
    work, and with it these tensors, a moment longer; dropping them takes the GIL. If that moment
    falls after the interpreter has begun to exit, Python ends the worker thread mid-destructor and
    the process aborts ("terminate called without an active exception"). DistributedDataParallel
    keeps the process group, and so its worker threads, alive past destroy_process_group, so this
    can happen at the end of every run. Collectives here therefore use private copies and return
    only once the worker has dropped them (a fraction of a millisecond).
    """
    refs = [weakref.ref(t) for t in shared]
    shared.clear()
    deadline = time.monotonic() + timeout_s
    while any(ref() is not None for ref in refs) and time.monotonic() < deadline:
        time.sleep(0)  # let the worker thread take the GIL


def from_environment(timeout_s: float = 600.0) -> Distributed:
    """Join the process group torchrun describes in the environment, or run alone.

    `timeout_s` bounds every collective: a process whose peers have died stops with an error
    instead of waiting forever (torchrun also ends the other processes when one fails).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
        # share the cores: N processes on one machine would otherwise each start one thread per core
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
