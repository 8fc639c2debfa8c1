"""Exponential moving average of a model's weights (``--ema-decay``): evaluated and shipped instead of the raw
weights, it smooths the last epochs' noise, which matters most when a few hundred films give few steps."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """``ema = d * ema + (1 - d) * weights`` after each optimiser step, with ``d = min(decay, (1 + n) / (10 + n))``
    at step n, so early steps (random init) are forgotten quickly; buffers (BatchNorm statistics) are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
