"""The torchrun context of one process: its rank, its device and the process group.

Training (DDP) and the search (one search whose scores are shared over the GPUs of one machine)
both run under ``torchrun`` and need the same start: read torchrun's environment, pick
``cuda:LOCAL_RANK`` or the CPU, initialise NCCL or gloo and share the CPU's cores out. It lives
here, once, so that the two cannot drift apart. In a single process it is a no-op context.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from supernet.errors import EfnasError

__all__ = ["Distributed", "torchrun_world_size"]


def torchrun_world_size() -> int:
    """How many processes torchrun started for this job (1 when not started by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class Distributed:
    """Rank and world size from torchrun's environment; a no-op context in a single process.

    ``device`` is auto, cpu or cuda: each rank then uses ``cuda:LOCAL_RANK`` with NCCL, or the CPU
    with gloo. ``threads`` None caps each CPU rank's intra-op threads at its share of the cores.
    """

    def __init__(self, device: str, threads: int | None) -> None:
        self.world_size = torchrun_world_size()
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if device == "cuda" and not torch.cuda.is_available():
            raise EfnasError("--device cuda asked for, but no CUDA device is available")
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        self._owns_group = self.world_size > 1 and not dist.is_initialized()
        if self._owns_group:
            dist.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(self.device)
        elif self.world_size > 1 and threads is None:
            # Ranks on one machine share its cores; oversubscribing them only adds contention.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def same_everywhere(self, value: str) -> bool:
        if self.world_size == 1:
            return True
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return len(set(values)) == 1

    def close(self) -> None:
        """Destroy the process group this context made (torch asks for it before a normal exit:
        NCCL may otherwise still have work in flight); call it once no rank communicates any more."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False
