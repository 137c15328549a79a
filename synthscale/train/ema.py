"""Exponential moving average of a model's weights, with the usual warmup.

Hand-written rather than `torch.optim.swa_utils.AveragedModel`: that one deep-copies the whole module (a second
model to keep out of DDP/compile) and hides its state in a module; here the EMA is a flat dict of tensors that
checkpoints straight into safetensors and loads into any copy of the model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


class EMA:
    """`shadow[name] ← lerp(shadow, param, 1 − decay_t)` after every optimizer step; buffers are copied.

    decay_t = min(decay, (1 + t) / (10 + t)) with warmup (t = updates so far), so early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.params = {n: p.detach().clone().float() for n, p in model.named_parameters()}
        persistent = set(model.state_dict())  # non-persistent buffers (caches) are not weights
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers() if n in persistent}
        self._names = list(self.params)

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.decay_at(self.updates)
        named = dict(model.named_parameters())
        current = [named[n].detach().float() for n in self._names]
        torch._foreach_lerp_([self.params[n] for n in self._names], current, weight)
        for n, b in model.named_buffers():
            if n in self.buffers:
                self.buffers[n].copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers under the model's own names (loadable with `model.load_state_dict`)."""
        return {**self.params, **self.buffers}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        expected = set(self.params) | set(self.buffers)
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise KeyError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        with torch.no_grad():
            for n, t in tensors.items():
                (self.params if n in self.params else self.buffers)[n].copy_(t)
        self.updates = updates

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """`state_dict` with FSDP2-sharded tensors gathered whole onto the CPU (collective: call on every rank)."""
        return {
            n: (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu() for n, t in self.state_dict().items()
        }

    def load_full_state_dict(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        """Load whole tensors (every rank holds them) into possibly sharded EMA tensors."""
        current, local = self.state_dict(), {}
        for n, src in tensors.items():
            t = current.get(n)
            if isinstance(t, DTensor):  # keep this rank's shard of the whole tensor; no communication
                src = distribute_tensor(src.to(t.device), t.device_mesh, t.placements, src_data_rank=None)
            local[n] = src
        self.load_state_dict(local, updates)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into `model` (e.g. a copy used for sampling)."""
        model.load_state_dict(self.state_dict(), strict=True)
