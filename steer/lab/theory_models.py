"""The theory lab's two denoisers (a tied-weight ReLU autoencoder and its time-conditioned diffusion version), and
their weights in one safetensors file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from .checkpoints import atomic_save


class ReLUDAE(nn.Module):
    """Tied-weight, bias-free ReLU denoising autoencoder f(x) = Wᵀ ReLU(W x)."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, dim) / math.sqrt(dim))

    def hidden(self, x: Tensor) -> Tensor:
        """Hidden activations ReLU(W x)."""
        return torch.relu(x @ self.weight.T)

    def forward(self, x: Tensor) -> Tensor:
        return self.hidden(x) @ self.weight


class ReLUDiffusion(nn.Module):
    """x0-prediction denoiser D(x, σ) = Wᵀ [ReLU(W x) ⊙ exp(MLP(log σ))]."""

    def __init__(self, dim: int, width: int, cond_hidden: int = 64) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, dim) / math.sqrt(dim))
        self.time_mlp = nn.Sequential(nn.Linear(1, cond_hidden), nn.SiLU(), nn.Linear(cond_hidden, width))
        nn.init.zeros_(self.time_mlp[-1].weight)
        nn.init.zeros_(self.time_mlp[-1].bias)

    def gate(self, sigma: Tensor) -> Tensor:
        """Multiplicative time conditioning exp(MLP(log σ)), shape (n, width)."""
        return torch.exp(self.time_mlp(torch.log(sigma).reshape(-1, 1)))

    def hidden(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Time-modulated hidden activations ReLU(W x) ⊙ exp(MLP(log σ))."""
        return torch.relu(x @ self.weight.T) * self.gate(sigma)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.hidden(x, sigma) @ self.weight


def save_models(path: Path, models: dict[str, dict[str, Tensor]], meta: dict) -> Path:
    """Weights of several models in one safetensors file (``{model}.{param}``), ``meta`` as JSON in its header."""
    tensors = {f"{name}.{k}": v.detach().cpu() for name, sd in models.items() for k, v in sd.items()}
    atomic_save(tensors, path, metadata={"steer_theory": json.dumps(meta)})
    return path


def load_models(path: Path) -> tuple[dict[str, dict[str, Tensor]], dict]:
    """Inverse of `save_models` (no pickle)."""
    models: dict[str, dict[str, Tensor]] = {}
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("steer_theory", "{}"))
        for key in f.keys():
            name, param = key.split(".", 1)
            models.setdefault(name, {})[param] = f.get_tensor(key)
    return models, meta
