"""Running under `torchrun` (PyTorch DDP): which rank this process is, and its one GPU.

torchrun (or any launcher) sets RANK, WORLD_SIZE and LOCAL_RANK. Dr.Jit renders on the first
visible CUDA device only (DESIGN.md), so each rank must see just its own GPU: `restrict_to_local_gpu`
sets CUDA_VISIBLE_DEVICES to the LOCAL_RANK-th visible device, and must run before torch or Dr.Jit
initialise CUDA (the `mfface` command calls it first thing). Nothing here imports torch at module
level, for that reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_info(environ: dict[str, str] | None = None) -> RankInfo:
    """RANK, WORLD_SIZE and LOCAL_RANK from the environment (a launcher such as torchrun), or from
    `environ`; ValueError when they are not a valid rank of a run."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError(f"RANK={env.get('RANK')!r} and WORLD_SIZE={env.get('WORLD_SIZE')!r} must be whole "
                         f"numbers (as torchrun sets them).") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} do not describe a rank of a distributed "
                         f"run (0 <= RANK < WORLD_SIZE).")
    return RankInfo(rank, world, local)


def restrict_to_local_gpu() -> None:
    """Under a launcher with LOCAL_RANK, make only this rank's GPU visible (see the module doc).

    Keeps an existing CUDA_VISIBLE_DEVICES list and picks its LOCAL_RANK-th entry; does nothing
    outside a distributed run or when this rank's GPU is already the only one visible."""
    if "LOCAL_RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    local = int(os.environ["LOCAL_RANK"])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d for d in visible.split(",") if d.strip()] if visible else None
    if devices is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(local)
    elif len(devices) > 1 and local < len(devices):
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[local]


def init_process_group(info: RankInfo, cuda: bool) -> None:
    """Join the run's process group: NCCL on GPUs, gloo on the CPU (no-op when not distributed)."""
    if not info.distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=info.rank, world_size=info.world)


def barrier(info: RankInfo) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def destroy_process_group(info: RankInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
