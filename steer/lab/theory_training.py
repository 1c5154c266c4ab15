"""Training and sampling of the theory lab's denoisers: the paper's optimiser settings, one training loop for the
DAE and the x0-prediction diffusion model, and the Euler probability-flow sampler."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from .theory_models import ReLUDAE, ReLUDiffusion

Model = TypeVar("Model", bound=nn.Module)


@dataclass
class TrainConfig:
    """Optimiser settings for one denoiser."""

    optimizer: str  # "rmsprop" or "adam"
    lr: float
    weight_decay: float
    batch: int | None  # None = full batch
    iters: int


MEMORIZE = TrainConfig("rmsprop", 1e-3, 1e-2, None, 50_000)
GENERALIZE = TrainConfig("adam", 1e-4, 1e-4, 256, 50_000)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """RMSprop or Adam with (coupled, L2) weight decay, as in the paper's setting."""
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _batches(n: int, batch: int | None, gen: torch.Generator):
    """Endless stream of index batches (full batch, or shuffled epochs)."""
    while True:
        if batch is None or batch >= n:
            yield None
            continue
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - batch + 1, batch):
            yield perm[start : start + batch]


def _fit(
    make_model: Callable[[], Model],
    data: Tensor,
    cfg: TrainConfig,
    seed: int,
    loss_fn: Callable[[Model, Tensor, torch.Generator], Tensor],
    log: Callable | None = None,
) -> tuple[Model, list[float]]:
    """The training loop shared by both denoisers: ``loss_fn(model, clean batch, generator)`` for ``cfg.iters``
    steps; returns the model and a trace of 20 losses."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = make_model()
    opt = make_optimizer(model.parameters(), cfg)
    trace: list[float] = []
    for step, idx in zip(range(cfg.iters), _batches(len(data), cfg.batch, gen), strict=False):
        x = data if idx is None else data[idx]
        loss = loss_fn(model, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, cfg.iters // 20) == 0 or step == cfg.iters - 1:
            trace.append(float(loss.detach()))
            if log:
                log(f"  iter {step:6d}  loss {trace[-1]:.4f}")
    return model, trace


def train_dae(
    data: Tensor, cfg: TrainConfig, width: int, noise: float, seed: int, log: Callable | None = None
) -> tuple[ReLUDAE, list[float]]:
    """Train a ReLU-DAE with MSE on x + noise·ε → x; returns the model and a loss trace."""

    def loss(model: ReLUDAE, x: Tensor, gen: torch.Generator) -> Tensor:
        noisy = x + noise * torch.randn(x.shape, generator=gen)
        return ((model(noisy) - x) ** 2).sum(1).mean()

    return _fit(lambda: ReLUDAE(data.shape[1], width), data, cfg, seed, loss, log)


def sample_sigma(n: int, lo: float, hi: float, gen: torch.Generator) -> Tensor:
    """σ log-uniform in [lo, hi]."""
    u = torch.rand(n, generator=gen)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def train_diffusion(
    data: Tensor, cfg: TrainConfig, width: int, sigma_range: tuple[float, float], seed: int, log: Callable | None = None
) -> tuple[ReLUDiffusion, list[float]]:
    """Train the x0-prediction ReLU diffusion model with VE noise (plain x0 MSE)."""

    def loss(model: ReLUDiffusion, x: Tensor, gen: torch.Generator) -> Tensor:
        sigma = sample_sigma(len(x), *sigma_range, gen)
        noisy = x + sigma[:, None] * torch.randn(x.shape, generator=gen)
        return ((model(noisy, sigma) - x) ** 2).sum(1).mean()

    return _fit(lambda: ReLUDiffusion(data.shape[1], width), data, cfg, seed, loss, log)


def gaussian_prior(data: Tensor, max_rank: int = 784) -> tuple[Tensor, Tensor]:
    """Mean and a covariance square-root factor (dim, rank) of the training set.

    σ_max = 2 is small next to the data scale (‖x‖ ≈ 22), so the σ_max marginal is far from N(0, σ_max² I);
    sampling starts from N(μ, Σ + σ_max² I), the Gaussian with the marginal's first two moments.
    """
    mean = data.double().mean(0)
    centered = data.double() - mean
    cov = centered.T @ centered / max(1, len(data) - 1)
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > 1e-8 * evals.max()
    factor = evecs[:, keep] * evals[keep].sqrt()
    return mean.float(), factor[:, -max_rank:].float()


@torch.no_grad()
def sample_euler(
    model: ReLUDiffusion,
    n: int,
    prior: tuple[Tensor, Tensor],
    sigma_range: tuple[float, float],
    steps: int,
    seed: int,
) -> Tensor:
    """Euler solver of the VE probability-flow ODE dx/dσ = (x − D(x, σ)) / σ on a geometric σ grid.

    Starts from x ~ N(μ, Σ + σ_max² I) (see ``gaussian_prior``). The x0 prediction is clipped to the data range
    [-1, 1] as in DDPM/DDIM samplers: the bias-free ReLU denoiser is 1-homogeneous in x, so without clipping
    a gain > 1 off the data can make the ODE blow up.
    """
    lo, hi = sigma_range
    mean, factor = prior
    sigmas = torch.exp(torch.linspace(math.log(hi), math.log(lo), steps))
    gen = torch.Generator().manual_seed(seed)
    x = mean + torch.randn(n, factor.shape[1], generator=gen) @ factor.T
    x = x + hi * torch.randn(n, len(mean), generator=gen)
    for i in range(steps - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = model(x, s.expand(n)).clamp(-1.0, 1.0)
        x = x + (s_next - s) * (x - x0) / s
    return model(x, sigmas[-1].expand(n)).clamp(-1.0, 1.0)


def with_iters(cfg: TrainConfig, iters: int | None) -> TrainConfig:
    """``cfg`` with ``iters`` iterations (unchanged when ``iters`` is None or 0)."""
    return TrainConfig(cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.batch, iters if iters else cfg.iters)
