"""This process's place in a data-parallel launch (`accelerate launch` / torchrun), and gathering across it.

Without a launcher (or with one process) everything here is a no-op: one process, index 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Process:
    """This process's place in the launch."""

    index: int = 0
    count: int = 1
    local_index: int = 0

    @property
    def main(self) -> bool:
        """True on the process that writes outputs."""
        return self.index == 0


def _launched() -> bool:
    """True under a data-parallel launcher with more than one process (read from the environment, without torch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_process() -> Process:
    """Rank and world size from `accelerate launch` (torchrun's environment); one process otherwise."""
    if not _launched():
        return Process()
    import torch
    from accelerate import PartialState

    # Initialises the process group: nccl on GPUs; on CPU, accelerate needs cpu=True to go multi-process (gloo).
    state = PartialState(cpu=not torch.cuda.is_available())
    return Process(state.process_index, state.num_processes, state.local_process_index)


def pin_device(process: Process) -> None:
    """On GPUs, make `cuda` mean this process's own device before the model loads."""
    if process.count <= 1:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(process.local_index % torch.cuda.device_count())


def finish() -> None:
    """End a data-parallel launch cleanly: wait for every process, then tear the process group down.

    A process that leaves the interpreter with the gloo group still alive can abort in C++ ("terminate called
    without an active exception"), and torchrun then kills its peers mid-write; so every command ends here.
    """
    if not _launched():
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather(payload: Any) -> list[Any]:
    """Every process's payload, in process order, on every process."""
    from accelerate.utils import gather_object

    return gather_object([payload])
