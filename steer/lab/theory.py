"""Theory lab: tiny ReLU denoisers that memorize or generalize (Zhang et al., ICLR 2026).

Two experiments on Fashion-MNIST vectors in [-1, 1]:

* ``relu-dae``: a tied-weight ReLU denoising autoencoder f(x) = Wᵀ ReLU(W x). Trained on 5 images it
  memorizes (the surviving weight rows are built from the training images, hidden activations are
  spiky); trained on 10,000
  images it generalizes (many moderate activations). A hybrid set with a few heavily duplicated images
  shows both regimes inside one model.
* ``relu-diffusion``: the same layer as an x0-prediction diffusion model with multiplicative time
  conditioning, sampled with a 60-step Euler ODE solver; memorized samples are detected with the
  nearest-neighbour ratio d(x, NN1) / d(x, NN2) < 1/3.

Run ``python -m steer.lab.theory relu-dae --quick --out DIR`` (or through ``steer lab``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from steer.validation import bounded_int

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MEMORIZED_NN_RATIO = 1.0 / 3.0
COSINE_MATCH = 0.9


# --------------------------------------------------------------------------------------------- data


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (ubyte images or labels) into a numpy array."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_images(split: str = "train", root: Path = FASHION_DIR) -> np.ndarray:
    """Fashion-MNIST images as uint8 (n, 28, 28); a clear error if the dataset is not installed."""
    path = Path(root) / f"{'train' if split == 'train' else 't10k'}-images-idx3-ubyte.gz"
    if not path.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {path}. Install it with `apt-get install dataset-fashion-mnist`."
        )
    return _read_idx(path)


def to_vectors(images: np.ndarray) -> Tensor:
    """Flatten uint8 images to float vectors in [-1, 1]."""
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1.0)


def training_vectors(n: int, seed: int) -> Tensor:
    """n distinct training images chosen at random, as vectors."""
    images = load_images("train")
    idx = np.random.default_rng(seed).choice(len(images), size=n, replace=False)
    return to_vectors(images[np.sort(idx)])


# --------------------------------------------------------------------------------------------- models


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


# --------------------------------------------------------------------------------------------- training


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


def train_dae(
    data: Tensor, cfg: TrainConfig, width: int, noise: float, seed: int, log: Callable | None = None
) -> tuple[ReLUDAE, list[float]]:
    """Train a ReLU-DAE with MSE on x + noise·ε → x; returns the model and a loss trace."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = ReLUDAE(data.shape[1], width)
    opt = make_optimizer(model.parameters(), cfg)
    trace: list[float] = []
    for step, idx in zip(range(cfg.iters), _batches(len(data), cfg.batch, gen), strict=False):
        x = data if idx is None else data[idx]
        noisy = x + noise * torch.randn(x.shape, generator=gen)
        loss = ((model(noisy) - x) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, cfg.iters // 20) == 0 or step == cfg.iters - 1:
            trace.append(float(loss.detach()))
            if log:
                log(f"  iter {step:6d}  loss {trace[-1]:.4f}")
    return model, trace


def sample_sigma(n: int, lo: float, hi: float, gen: torch.Generator) -> Tensor:
    """σ log-uniform in [lo, hi]."""
    u = torch.rand(n, generator=gen)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def train_diffusion(
    data: Tensor, cfg: TrainConfig, width: int, sigma_range: tuple[float, float], seed: int, log: Callable | None = None
) -> tuple[ReLUDiffusion, list[float]]:
    """Train the x0-prediction ReLU diffusion model with VE noise (plain x0 MSE)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = ReLUDiffusion(data.shape[1], width)
    opt = make_optimizer(model.parameters(), cfg)
    trace: list[float] = []
    for step, idx in zip(range(cfg.iters), _batches(len(data), cfg.batch, gen), strict=False):
        x = data if idx is None else data[idx]
        sigma = sample_sigma(len(x), *sigma_range, gen)
        noisy = x + sigma[:, None] * torch.randn(x.shape, generator=gen)
        loss = ((model(noisy, sigma) - x) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, cfg.iters // 20) == 0 or step == cfg.iters - 1:
            trace.append(float(loss.detach()))
            if log:
                log(f"  iter {step:6d}  loss {trace[-1]:.4f}")
    return model, trace


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


# --------------------------------------------------------------------------------------------- statistics


def activation_stats(acts: Tensor) -> dict[str, float]:
    """Mean over inputs of per-input statistics of hidden activation vectors (rows of ``acts``).

    ``std`` is the raw standard deviation over units (the paper's measure); ``l4_l2`` = ‖a‖₄/‖a‖₂ and
    ``cv`` = std/mean are scale-free spikiness measures; ``top1_share`` = max(a)/Σa; ``active`` counts
    units above 1% of the input's largest activation.
    """
    acts = acts.double()
    std = acts.std(1, unbiased=False)
    mean = acts.mean(1).clamp_min(1e-12)
    l2 = acts.norm(p=2, dim=1).clamp_min(1e-12)
    l4 = acts.norm(p=4, dim=1)
    top = acts.max(1).values
    active = (acts > 0.01 * top[:, None].clamp_min(1e-12)).sum(1).double()
    return {
        "std": float(std.mean()),
        "l4_l2": float((l4 / l2).mean()),
        "cv": float((std / mean).mean()),
        "top1_share": float((top / acts.sum(1).clamp_min(1e-12)).mean()),
        "active": float(active.mean()),
        "n_inputs": int(acts.shape[0]),
    }


def noisy_inputs(data: Tensor, n: int, noise: float, seed: int) -> tuple[Tensor, Tensor]:
    """n noisy copies of training images (cycling through the set); returns (noisy, index)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(n) % len(data) if len(data) < n else torch.randperm(len(data), generator=gen)[:n]
    return data[idx] + noise * torch.randn(n, data.shape[1], generator=gen), idx


def weight_match(weight: Tensor, data: Tensor, norm_frac: float = 0.1) -> dict[str, float]:
    """How many weight rows are (cosine > 0.9) copies of a training image.

    Rows whose norm is below ``norm_frac`` × the largest row norm are negligible (decayed, unused units).
    """
    w = weight.detach().double()
    norms = w.norm(dim=1)
    keep = norms > norm_frac * norms.max()
    cos = (w / norms[:, None].clamp_min(1e-12)) @ (data.double() / data.double().norm(dim=1, keepdim=True)).T
    best = cos.max(1).values
    match = best > COSINE_MATCH
    return {
        "rows": int(len(w)),
        "rows_nonnegligible": int(keep.sum()),
        "frac_all_rows": float(match.double().mean()),
        "frac_nonnegligible_rows": float(match[keep].double().mean()) if keep.any() else 0.0,
        "mean_best_cosine_nonnegligible": float(best[keep].mean()) if keep.any() else 0.0,
        "images_covered": int(cos[keep & match].argmax(1).unique().numel()) if (keep & match).any() else 0,
    }


def span_energy(weight: Tensor, data: Tensor) -> float:
    """Fraction of the total squared weight norm Σ‖w_k‖² lying in span(training images).

    Meaningful only when the set is small (N ≪ dim): ~1 means the rows are built from training images.
    """
    w = weight.detach().double()
    q, _ = torch.linalg.qr(data.double().T)
    return float((w @ q).pow(2).sum() / w.pow(2).sum())


def nn_ratio(samples: Tensor, data: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-sample d(x, NN1) / d(x, NN2) in pixel space, and the index of NN1."""
    best = torch.full((len(samples), 2), float("inf"), dtype=torch.float64)
    best_idx = torch.zeros(len(samples), dtype=torch.long)
    s = samples.double()
    for start in range(0, len(data), chunk):
        d = torch.cdist(s, data[start : start + chunk].double())
        cand = torch.cat([best, d], 1)
        vals, pos = cand.topk(2, dim=1, largest=False)
        first_new = pos[:, 0] >= 2
        best_idx = torch.where(first_new, pos[:, 0] - 2 + start, best_idx)
        best = vals
    return best[:, 0] / best[:, 1].clamp_min(1e-12), best_idx


# --------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tile(ax, vec: Tensor, title: str | None = None) -> None:
    img = vec.detach().reshape(28, 28).numpy()
    lim = float(np.abs(img).max()) or 1.0
    ax.imshow(img, cmap="gray", vmin=-lim if img.min() < 0 else 0, vmax=lim)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def plot_weights(path: Path, train_small: Tensor, w_mem: Tensor, w_gen: Tensor, n_show: int = 16) -> None:
    """Training images, the memorizing model's non-negligible weight rows, and the generalizing model's top rows.

    Each memorizing row is titled with its best cosine similarity to a training image.
    """
    plt = _plt()
    norms = w_mem.detach().norm(dim=1)
    mem_rows = _top_rows(w_mem, int((norms > 0.1 * norms.max()).sum()))[:n_show]
    unit = train_small / train_small.norm(dim=1, keepdim=True)
    cos = (mem_rows / mem_rows.norm(dim=1, keepdim=True)) @ unit.T
    rows = [
        ("memorizing: the 5 training images", train_small, None),
        ("memorizing: non-negligible weight rows (best cos to a training image)", mem_rows, cos.max(1).values),
        ("generalizing: largest weight rows", _top_rows(w_gen, n_show), None),
    ]
    fig, axes = plt.subplots(3, n_show, figsize=(n_show * 0.8, 3 * 1.15))
    for r, (label, vecs, notes) in enumerate(rows):
        for c in range(n_show):
            if c < len(vecs):
                _tile(axes[r, c], vecs[c], f"{float(notes[c]):.2f}" if notes is not None else None)
            else:
                axes[r, c].axis("off")
        fig.text(0.01, 1 - (r + 0.02) / 3, label, fontsize=8, va="top")
    fig.tight_layout(rect=(0, 0, 1, 0.97), h_pad=1.6)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _top_rows(weight: Tensor, n: int) -> Tensor:
    w = weight.detach()
    order = w.norm(dim=1).argsort(descending=True)
    return w[order[:n]]


def plot_activation_bars(path: Path, panels: list[tuple[str, Tensor, Tensor]]) -> None:
    """Bar plots of hidden activations: one panel per (title, noisy image, activation vector)."""
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 2, figsize=(9, 2.2 * len(panels)), gridspec_kw={"width_ratios": [1, 6]})
    axes = np.atleast_2d(axes)
    for r, (title, image, acts) in enumerate(panels):
        _tile(axes[r, 0], image)
        a = acts.detach().numpy()
        axes[r, 1].bar(np.arange(len(a)), a, width=1.0, color="C0" if r % 2 == 0 else "C3")
        axes[r, 1].set_title(
            f"{title}   std={a.std():.3f}  L4/L2={np.linalg.norm(a, 4) / max(np.linalg.norm(a), 1e-12):.3f}", fontsize=9
        )
        axes[r, 1].set_xlim(-1, len(a))
        axes[r, 1].set_ylabel("ReLU(W x̃)")
    axes[-1, 1].set_xlabel("hidden unit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(path: Path, groups: list[tuple[str, Tensor, Tensor, Tensor]], n_show: int = 12) -> None:
    """Rows of samples and their nearest training images: (label, samples, neighbours, nn ratios)."""
    plt = _plt()
    fig, axes = plt.subplots(2 * len(groups), n_show, figsize=(n_show * 0.9, 2 * len(groups) * 1.05))
    for g, (label, samples, neighbours, ratios) in enumerate(groups):
        for c in range(n_show):
            _tile(axes[2 * g, c], samples[c].clamp(-1, 1), f"r={float(ratios[c]):.2f}")
            _tile(axes[2 * g + 1, c], neighbours[c])
        axes[2 * g, 0].set_ylabel(f"{label}\nsample", fontsize=7)
        axes[2 * g + 1, 0].set_ylabel("nearest\ntrain", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- experiments


def _logger(out: Path) -> Callable[[str], None]:
    log_path = out / "log.txt"

    def log(msg: str) -> None:
        msg = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(msg, flush=True)
        with open(log_path, "a") as fh:
            fh.write(msg + "\n")

    return log


def _with_iters(cfg: TrainConfig, iters: int | None) -> TrainConfig:
    return TrainConfig(cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.batch, iters if iters else cfg.iters)


def hybrid_set(n_total: int, n_dup: int, copies: int, seed: int) -> tuple[Tensor, Tensor]:
    """A training set of n_total vectors where n_dup images appear ``copies`` times each.

    Returns (data, is_duplicated) where the mask marks the rows that are copies.
    """
    n_unique = n_total - n_dup * copies
    base = training_vectors(n_unique + n_dup, seed)
    dup = base[:n_dup].repeat(copies, 1)
    data = torch.cat([dup, base[n_dup:]])
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[: len(dup)] = True
    return data, mask


def save_models(path: Path, models: dict[str, dict[str, Tensor]], meta: dict) -> Path:
    """Weights of several models in one safetensors file (``{model}.{param}``), ``meta`` as JSON in its header."""
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, sd in models.items() for k, v in sd.items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={"steer_theory": json.dumps(meta)})
    tmp.replace(path)
    return path


def load_models(path: Path) -> tuple[dict[str, dict[str, Tensor]], dict]:
    """Inverse of `save_models` (no pickle)."""
    from safetensors import safe_open

    models: dict[str, dict[str, Tensor]] = {}
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("steer_theory", "{}"))
        for key in f.keys():
            name, param = key.split(".", 1)
            models.setdefault(name, {})[param] = f.get_tensor(key)
    return models, meta


def _train_or_load(out: Path, reuse: bool, train_mem: Callable, train_gen: Callable, log) -> tuple:
    """Train the memorizing and generalizing DAEs, or load them from ``out/dae_models.safetensors`` when reusing."""
    ckpt = out / "dae_models.safetensors"
    if reuse and ckpt.exists():
        log(f"reusing trained models from {ckpt}")
        state, meta = load_models(ckpt)
        models = []
        for name in ("memorizing", "generalizing"):
            model = ReLUDAE(*reversed(state[name]["weight"].shape))
            model.load_state_dict(state[name])
            models.append(model)
        return models[0], models[1], meta.get("timings", {}) | {"reused": True}, meta.get("final_loss", {})
    t, c = time.time(), time.process_time()
    mem, mem_loss = train_mem()
    timings = {"memorizing": round(time.time() - t, 1), "memorizing_cpu": round(time.process_time() - c, 1)}
    t, c = time.time(), time.process_time()
    gen, gen_loss = train_gen()
    timings |= {"generalizing": round(time.time() - t, 1), "generalizing_cpu": round(time.process_time() - c, 1)}
    final = {"memorizing": mem_loss[-1], "generalizing": gen_loss[-1]}
    save_models(ckpt, {"memorizing": mem.state_dict(), "generalizing": gen.state_dict()},
                {"timings": timings, "final_loss": final})
    return mem, gen, timings, final


def dae_configs(quick: bool, iters: int | None) -> tuple[TrainConfig, TrainConfig, TrainConfig]:
    """(memorizing, generalizing, hybrid) optimiser settings; ``--quick`` shortens them."""
    mem = _with_iters(MEMORIZE, iters or (3000 if quick else None))
    gen = _with_iters(GENERALIZE, iters or (1000 if quick else None))
    if quick:  # a much shorter schedule needs a larger step to reach the same (balanced) regime
        gen = TrainConfig("adam", 1e-3, gen.weight_decay, gen.batch, gen.iters)
    hybrid = TrainConfig("rmsprop", 1e-3, 1e-2, 256, iters or (1200 if quick else 10_000))
    return mem, gen, hybrid


def run_relu_dae(args: argparse.Namespace) -> dict:
    """Memorizing vs generalizing ReLU-DAE, plus the hybrid (duplicated images) set."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = _logger(out)
    quick = args.quick
    width, noise = 100, 0.2
    n_gen = 2000 if quick else 10_000
    mem_cfg, gen_cfg, hybrid_cfg = dae_configs(quick, args.iters)
    if getattr(args, "hybrid_iters", None):
        hybrid_cfg = _with_iters(hybrid_cfg, getattr(args, "hybrid_iters", None))
    t0 = time.time()
    log(f"relu-dae quick={quick} seed={args.seed} mem={asdict(mem_cfg)} gen={asdict(gen_cfg)} n_gen={n_gen}")

    mem_data = training_vectors(5, args.seed)
    gen_data = training_vectors(n_gen, args.seed + 100)

    def train_mem() -> tuple[ReLUDAE, list[float]]:
        log("training memorizing model (N=5)")
        return train_dae(mem_data, mem_cfg, width, noise, args.seed, log)

    def train_gen() -> tuple[ReLUDAE, list[float]]:
        log(f"training generalizing model (N={n_gen})")
        return train_dae(gen_data, gen_cfg, width, noise, args.seed, log)

    mem, gen, timings, final = _train_or_load(out, getattr(args, "reuse", None), train_mem, train_gen, log)
    stats = dae_statistics(mem, gen, mem_data, gen_data, noise, args.seed)
    stats["final_loss"] = final
    plot_weights(out / "dae_weights.png", mem_data, mem.weight, gen.weight)
    with torch.no_grad():
        mem_x, _ = noisy_inputs(mem_data, 1, noise, args.seed + 7)
        gen_x, _ = noisy_inputs(gen_data, 1, noise, args.seed + 7)
    plot_activation_bars(
        out / "dae_activations.png",
        [
            ("memorizing (N=5)", mem_x[0], mem.hidden(mem_x)[0]),
            (f"generalizing (N={n_gen})", gen_x[0], gen.hidden(gen_x)[0]),
        ],
    )
    if not getattr(args, "no_hybrid", None):
        t, c = time.time(), time.process_time()
        stats["hybrid"] = run_hybrid(args, hybrid_cfg, width, noise, out, log)
        timings |= {"hybrid": round(time.time() - t, 1), "hybrid_cpu": round(time.process_time() - c, 1)}
    stats["config"] = {
        "quick": quick,
        "seed": args.seed,
        "width": width,
        "noise": noise,
        "n_memorizing": 5,
        "n_generalizing": n_gen,
        "memorizing_train": asdict(mem_cfg),
        "generalizing_train": asdict(gen_cfg),
        "hybrid_train": asdict(hybrid_cfg),
        "threads": args.threads,
        "reused_models": bool(timings.get("reused", False)),
    }
    stats["wall_s"] = timings | {
        "this_invocation": round(time.time() - t0, 1),
        "this_invocation_cpu": round(time.process_time(), 1),
    }
    (out / "dae_stats.json").write_text(json.dumps(stats, indent=2))
    log(json.dumps({k: stats[k] for k in ("memorizing", "generalizing", "ratios", "weight_match")}, indent=2))
    return stats


def dae_statistics(mem: ReLUDAE, gen: ReLUDAE, mem_data: Tensor, gen_data: Tensor, noise: float, seed: int) -> dict:
    """Activation statistics over 100 noisy training inputs per model, ratios, and weight-row matches."""
    with torch.no_grad():
        mem_x, _ = noisy_inputs(mem_data, 100, noise, seed + 7)
        gen_x, _ = noisy_inputs(gen_data, 100, noise, seed + 7)
        mem_acts, gen_acts = mem.hidden(mem_x), gen.hidden(gen_x)
        stats = {
            "memorizing": activation_stats(mem_acts),
            "generalizing": activation_stats(gen_acts),
            # the memorizing model's 100 noisy inputs, seen by the generalizing model
            "generalizing_on_memorizing_inputs": activation_stats(gen.hidden(mem_x)),
            # tied weights: ‖ReLU(Wx)‖² = f(x)·x, so a good denoiser of either kind has ‖a‖ ≈ ‖x‖
            "sq_norm_identity": {
                "memorizing_a2": float(mem_acts.pow(2).sum(1).mean()),
                "memorizing_x2": float(mem_x.pow(2).sum(1).mean()),
                "generalizing_a2": float(gen_acts.pow(2).sum(1).mean()),
                "generalizing_x2": float(gen_x.pow(2).sum(1).mean()),
            },
        }
    stats["ratios"] = _ratios(stats["memorizing"], stats["generalizing"])
    stats["weight_match"] = {
        "memorizing": weight_match(mem.weight, mem_data) | {"span_energy": span_energy(mem.weight, mem_data)},
        "generalizing": weight_match(gen.weight, gen_data)
        | {"span_energy_of_memorizing_set": span_energy(gen.weight, mem_data)},
    }
    return stats


def _ratios(mem: dict, gen: dict) -> dict[str, float]:
    return {k: mem[k] / max(gen[k], 1e-12) for k in ("std", "cv", "l4_l2", "top1_share")}


def _median_cv_index(acts: Tensor) -> int:
    """Index of the input whose std/mean is the median of its group (a typical example to plot)."""
    cv = acts.std(1, unbiased=False) / acts.mean(1).clamp_min(1e-12)
    return int(cv.argsort()[len(cv) // 2])


def run_hybrid(args, cfg: TrainConfig, width: int, noise: float, out: Path, log) -> dict:
    """One model on 500 unique images + 5 images x 100 copies: duplicated vs unique activations."""
    n_total, n_dup, copies = 1000, 5, 100
    data, mask = hybrid_set(n_total, n_dup, copies, args.seed + 200)
    log(f"training hybrid model (N={n_total}, {n_dup} images x {copies} copies) {asdict(cfg)}")
    model, trace = train_dae(data, cfg, width, noise, args.seed, log)
    dup_imgs = data[:n_dup]
    unique = data[~mask]
    with torch.no_grad():
        dup_x, _ = noisy_inputs(dup_imgs, 100, noise, args.seed + 9)
        uni_x, _ = noisy_inputs(unique, 100, noise, args.seed + 9)
        dup_acts, uni_acts = model.hidden(dup_x), model.hidden(uni_x)
    i, j = _median_cv_index(dup_acts), _median_cv_index(uni_acts)
    plot_activation_bars(
        out / "hybrid_activations.png",
        [
            (f"hybrid: duplicated image ({copies} copies)", dup_x[i], dup_acts[i]),
            ("hybrid: unique image", uni_x[j], uni_acts[j]),
        ],
    )
    save_models(out / "hybrid_model.safetensors", {"model": model.state_dict()}, {"trace": trace})
    res = {
        "duplicated": activation_stats(dup_acts),
        "unique": activation_stats(uni_acts),
        "n_total": n_total,
        "n_duplicated_images": n_dup,
        "copies": copies,
        "weight_match_duplicated": weight_match(model.weight, dup_imgs),
        "final_loss": trace[-1],
    }
    res["ratios"] = _ratios(res["duplicated"], res["unique"])
    return res


def run_relu_diffusion(args: argparse.Namespace) -> dict:
    """Memorizing (N=5) vs generalizing (large N) ReLU diffusion models: samples, NN ratios, activations."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = _logger(out)
    quick = args.quick
    width, sigma_range, steps, n_samples = 256, (0.02, 2.0), 60, 64
    n_gen = 2000 if quick else 60_000
    mem_cfg = _with_iters(MEMORIZE, getattr(args, "mem_iters", None) or args.iters or (4000 if quick else None))
    # the generalizing diffusion model uses Adam lr 1e-3 and 5k iterations (50k at lr 1e-4 is ~30 CPU-minutes)
    gen_iters = getattr(args, "gen_iters", None) or args.iters or (1000 if quick else 5000)
    gen_cfg = TrainConfig("adam", 1e-3, GENERALIZE.weight_decay, GENERALIZE.batch, gen_iters)
    t0 = time.time()
    log(f"relu-diffusion quick={quick} seed={args.seed} mem={asdict(mem_cfg)} gen={asdict(gen_cfg)} n_gen={n_gen}")
    mem_data = training_vectors(5, args.seed)
    gen_data = training_vectors(n_gen, args.seed + 100)

    results: dict = {}
    groups = []
    timings = {}
    for name, data, cfg in (("memorizing", mem_data, mem_cfg), ("generalizing", gen_data, gen_cfg)):
        if getattr(args, "only", None) and getattr(args, "only", None) != name:
            continue
        t, c = time.time(), time.process_time()
        ckpt = out / f"diffusion_{name}.safetensors"
        if getattr(args, "reuse", None) and ckpt.exists():
            log(f"reusing {ckpt}")
            state, meta = load_models(ckpt)
            model = ReLUDiffusion(len(data[0]), width)
            model.load_state_dict(state["model"])
            trace, timings[f"{name}_train"] = meta["trace"], meta["timings"]
        else:
            log(f"training {name} diffusion model (N={len(data)})")
            model, trace = train_diffusion(data, cfg, width, sigma_range, args.seed, log)
            timings[f"{name}_train"] = {"wall": round(time.time() - t, 1), "cpu": round(time.process_time() - c, 1)}
            save_models(ckpt, {"model": model.state_dict()}, {"trace": trace, "timings": timings[f"{name}_train"]})
        samples = sample_euler(model, n_samples, gaussian_prior(data), sigma_range, steps, args.seed + 11)
        ratios, nn_idx = nn_ratio(samples, data)
        with torch.no_grad():
            x, _ = noisy_inputs(data, 100, 0.2, args.seed + 7)
            acts = model.hidden(x, torch.full((100,), 0.2))
        results[name] = {
            "activations_sigma_0.2": activation_stats(acts),
            "nn_ratio_mean": float(ratios.mean()),
            "nn_ratio_median": float(ratios.median()),
            "frac_memorized": float((ratios < MEMORIZED_NN_RATIO).double().mean()),
            "nn_distance_mean": float((samples.double() - data[nn_idx].double()).norm(dim=1).mean()),
            "weight_match": weight_match(model.weight, data),
            "final_loss": trace[-1],
            "n_train": len(data),
        }
        groups.append((f"{name} (N={len(data)})", samples, data[nn_idx], ratios))
        timings[name] = round(time.time() - t, 1)
        timings[f"{name}_cpu"] = round(time.process_time() - c, 1)
        log(f"{name}: {json.dumps(results[name])}")
    if getattr(args, "only", None):  # training one model only (e.g. two processes in parallel, then --reuse)
        return results
    results["ratios"] = _ratios(
        results["memorizing"]["activations_sigma_0.2"], results["generalizing"]["activations_sigma_0.2"]
    )
    plot_samples(out / "diffusion_samples.png", groups)
    results["config"] = {
        "quick": quick,
        "seed": args.seed,
        "width": width,
        "sigma_range": sigma_range,
        "steps": steps,
        "sampler": "Euler, geometric sigma grid, x0 clipped, start N(mu, Sigma + sigma_max^2 I)",
        "n_samples": n_samples,
        "memorizing_train": asdict(mem_cfg),
        "generalizing_train": asdict(gen_cfg),
        "threads": args.threads,
    }
    results["wall_s"] = {**timings, "total": round(time.time() - t0, 1), "total_cpu": round(time.process_time(), 1)}
    (out / "diffusion_stats.json").write_text(json.dumps(results, indent=2))
    return results


# --------------------------------------------------------------------------------------------- CLI


ITERS = bounded_int(1, 10**9)  # a bad number is a one-line usage error, not a traceback after the data loads


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--quick", action="store_true", help="small, fast run (about a minute on 2 CPU cores)")
    p.add_argument("--out", default=default_out, help="output folder for figures and JSON")
    p.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0)
    p.add_argument("--iters", type=ITERS, default=None, help="override the iteration count of every model")
    p.add_argument("--threads", type=bounded_int(1, 1024), default=1, help="torch CPU threads")


def configure_parser(subparsers) -> None:
    """Add the ``relu-dae`` and ``relu-diffusion`` subcommands to an argparse sub-parser group."""
    p = subparsers.add_parser("relu-dae", help="memorizing vs generalizing ReLU denoising autoencoder")
    _common(p, "runs/relu-dae")
    p.add_argument("--no-hybrid", action="store_true", help="skip the duplicated-images experiment")
    p.add_argument("--reuse", action="store_true", help="load the two models from OUT/dae_models.safetensors if present")
    p.add_argument("--hybrid-iters", type=ITERS, default=None, help="iterations of the hybrid model only")
    p.set_defaults(func=run_relu_dae)
    p = subparsers.add_parser("relu-diffusion", help="memorizing vs generalizing ReLU diffusion model")
    _common(p, "runs/relu-diffusion")
    p.add_argument("--gen-iters", type=ITERS, default=None, help="iterations of the generalizing model only")
    p.add_argument("--mem-iters", type=ITERS, default=None, help="iterations of the memorizing model only")
    p.add_argument("--reuse", action="store_true", help="load trained models from OUT/diffusion_*.safetensors if present")
    p.add_argument("--only", choices=["memorizing", "generalizing"], help="train and evaluate one model only")
    p.set_defaults(func=run_relu_diffusion)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m steer.lab.theory", description=__doc__.split("\n\n")[0])
    configure_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
