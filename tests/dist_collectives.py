"""Run by tests/dist_worker.py --collectives under torchrun: after each collective returns, the
backend's worker threads must hold no tensor the caller sees, or a process that exits right after
one can abort (see mobilenet.train.distributed._wait_until_released). Exits 1 naming the first leak."""

import sys
import weakref

import torch


def check_collectives(dist) -> None:
    for i in range(300):
        summed = dist.all_reduce(torch.full((4,), float(dist.rank)))
        assert summed.tolist() == [1.0] * 4, summed
        held = weakref.ref(summed)
        del summed
        if held() is not None:
            sys.exit(f"rank {dist.rank}: all_reduce's tensor still held by the backend after call {i}")
        sent = torch.full((3,), float(dist.rank))
        gathered = dist.all_gather(sent)
        assert [g.tolist() for g in gathered] == [[0.0] * 3, [1.0] * 3], gathered
        held = [weakref.ref(t) for t in (sent, *gathered)]
        del sent, gathered
        if any(ref() is not None for ref in held):
            sys.exit(f"rank {dist.rank}: all_gather's tensors still held by the backend after call {i}")
