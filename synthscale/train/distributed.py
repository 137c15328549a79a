"""torch.distributed glue: one process or many under `torchrun`, the same code path.

`torchrun --nproc_per_node=N -m synthscale train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; we then join a
process group (NCCL on GPUs, gloo on CPU), each rank takes a disjoint shard of every global batch, gradients
are averaged by DDP (or FSDP2's `fully_shard` for models too big to replicate), and only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from synthscale.compute.device import pick_device


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we called init_process_group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def enable_tf32(device: torch.device) -> None:
    """On CUDA, let float32 matmuls use TF32 tensor cores (~8× the fp32 rate on an A100/H100; 10-bit mantissa
    products, fp32 accumulation; cuDNN convolutions already default to it). Under bf16 autocast it covers what
    stays in float32. Only called for CUDA runs, so CPU numbers (and the determinism tests) are untouched.
    The one global setter: mixing it with the per-backend `fp32_precision` flags makes torch raise."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def setup(device_preference: str = "auto") -> Dist:
    """Join torchrun's process group when launched by it; otherwise a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # the global rank comes from the process group
    device = pick_device(device_preference, local_rank)
    enable_tf32(device)
    if world == 1:
        return Dist(0, 1, 0, device, owns_group=False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=owns)


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, d: Dist, parallel: str) -> nn.Module:
    """DDP, or FSDP2: every block of every ModuleList is sharded on its own, then the root."""
    if not d.active:
        return module
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for sub in list(module.modules()):
            if isinstance(sub, nn.ModuleList):
                for block in sub:
                    fully_shard(block)
        return fully_shard(module)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_int(value: int, d: Dist) -> int:
    """Rank 0's `value` on every rank."""
    if not d.active:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return int(t.item())


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def rng_states(d: Dist) -> dict[str, torch.Tensor]:
    """Every rank's global torch RNG states, gathered to all ranks (rank 0 saves them)."""
    mine = {"cpu": torch.get_rng_state()}
    if d.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(d.device)
    out = {}
    for key, state in mine.items():
        if d.active:
            parts = [torch.empty_like(state) for _ in range(d.world)]
            backend_device = d.device if d.device.type == "cuda" else "cpu"
            gathered = [p.to(backend_device) for p in parts]
            dist.all_gather(gathered, state.to(backend_device))
            parts = [g.cpu() for g in gathered]
        else:
            parts = [state]
        out.update({f"{key}.rank{r}": p for r, p in enumerate(parts)})
    return out


def set_rng_states(states: dict[str, torch.Tensor], d: Dist) -> bool:
    """Restore this rank's RNG states; False when the checkpoint holds none for it (another world size)."""
    cpu = states.get(f"cpu.rank{d.rank}")
    if cpu is None:
        return False
    torch.set_rng_state(cpu)
    cuda = states.get(f"cuda.rank{d.rank}")
    if cuda is not None and d.device.type == "cuda":
        torch.cuda.set_rng_state(cuda, d.device)
    return True
