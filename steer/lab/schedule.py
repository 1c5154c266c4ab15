"""What changes over a training run's steps: the learning-rate schedule, the EMA of the weights, and the step
count fitted to a wall-clock budget."""

from __future__ import annotations

import math
import time

import torch


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


class EMA:
    """Exponential moving average of the modules' floating-point state (same device as the modules)."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        self.decay = decay
        self.shadow = {f"{n}.{k}": v.detach().clone().float() for n, m in modules.items() for k, v in m.state_dict().items()}
        self.modules = modules

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        live, ema = [], []
        for n, m in self.modules.items():
            for k, v in m.state_dict().items():
                s = self.shadow[f"{n}.{k}"]
                if v.dtype.is_floating_point:
                    live.append(v.float())
                    ema.append(s)
                else:
                    s.copy_(v)
        torch._foreach_lerp_(ema, live, 1 - d)

    def state_for(self, name: str) -> dict:
        p = name + "."
        return {k[len(p) :]: v for k, v in self.shadow.items() if k.startswith(p)}


class TimeBudget:
    """Fit a step count to a wall-clock budget: after ``probe`` steps, ``steps_for`` returns the total step count
    that ends about ``minutes`` after the budget started (never more than the requested total); once the time
    is up it returns the next step, whatever the estimate said."""

    def __init__(self, minutes: float | None, probe: int = 60):
        self.minutes, self.probe = minutes, probe
        self.start = time.time()
        self.t_probe: float | None = None
        self.first: int | None = None

    def steps_for(self, done: int, total: int) -> int | None:
        if self.minutes is None:
            return None
        if self.first is None:
            self.first = done
        if time.time() - self.start > self.minutes * 60:  # out of time before (or despite) the estimate: stop now
            return done + 1
        if done - self.first == 10:  # skip the first steps (allocations, cuDNN autotuning)
            self.t_probe = time.time()
        if self.t_probe is None or done - self.first != 10 + self.probe:
            return None
        per_step = (time.time() - self.t_probe) / self.probe
        left = self.minutes * 60 - (time.time() - self.start)
        return min(total, done + max(0, int(0.97 * left / per_step)))

