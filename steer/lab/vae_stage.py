"""Stages 1 and 2 of ``steer.lab.train``: the AutoencoderKL trained from scratch, the data set encoded once into
cached latent posteriors, and adopting the VAE (and latents) of another run or pipeline."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from . import data as D
from . import models as M
from .checkpoints import atomic_json, atomic_save, log
from .schedule import lr_at


def train_vae(out: Path, steps: int = 600, batch_size: int = 64, lr: float = 2e-3, seed: int = 0, kl_weight: float = 1e-8,
              limit: int | None = None):
    """Stage 1: train the AutoencoderKL, save it to ``out/vae`` (float32)."""
    vae_dir = out / "vae"
    if (vae_dir / "config.json").is_file():
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(vae_dir)
    torch.manual_seed(seed)
    ds = D.make_coloured_fashion_mnist("train", seed=seed, limit=limit)
    x_all = torch.from_numpy(ds.images) * 2 - 1
    vae = M.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    hist = []
    for step in range(steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, lr, 50)
        idx = torch.randint(0, len(x_all), (batch_size,), generator=g)
        x = x_all[idx]
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        kl = dist.kl().mean()
        loss = mse + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        hist.append(mse.item())
        if step % 50 == 0 or step == steps - 1:
            log(out, f"vae step {step} mse {np.mean(hist[-100:]):.5f} kl {kl.item():.1f} ({time.time() - t0:.0f}s)")
    vae.save_pretrained(vae_dir, safe_serialization=True)
    atomic_json({"steps": steps, "batch_size": batch_size, "lr": lr, "kl_weight": kl_weight,
                  "final_mse_100": float(np.mean(hist[-100:])), "seconds": time.time() - t0}, vae_dir / "train_stats.json")
    return vae


@torch.no_grad()
def encode_dataset(vae, images: np.ndarray, batch_size: int = 500, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (float32, on the CPU)."""
    means, stds = [], []
    vae.eval()
    vae.to(device)
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).float().to(device) * 2 - 1
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    vae.to("cpu")
    return torch.cat(means), torch.cat(stds)


def latents_record(folder: Path) -> dict:
    """``folder/latents.json``: the scaling factor, and the data the latents encode (``data_seed``, ``limit``, ``n``;
    the first two are missing from files written before they were recorded)."""
    return json.loads((Path(folder) / "latents.json").read_text())


def data_args(seed, limit) -> str:
    """The data options that make a training set, as a command line shows them."""
    return f"--seed {seed} " + (f"--limit {limit}" if limit is not None else "(no --limit)")


def check_latents(out: Path, seed: int, limit: int | None, n: int, n_latents: int | None = None) -> None:
    """Refuse, in one line, cached latents of other data than this run's ``--seed`` / ``--limit`` (the items'
    colours are drawn from the seed: the captions would name other colours than the images show)."""
    rec = latents_record(out) if (out / "latents.json").is_file() else {}
    made = f"{out / 'latents.safetensors'} encode"
    if "data_seed" in rec and (rec["data_seed"], rec.get("limit")) != (seed, limit):
        raise SystemExit(f"{made} the data of {data_args(rec['data_seed'], rec.get('limit'))}; this run uses "
                         f"{data_args(seed, limit)}")
    for count in (rec.get("n"), n_latents):
        if count is not None and count != n:
            raise SystemExit(f"{made} {count} items; this run's data ({data_args(seed, limit)}) has {n}")


def cache_latents(out: Path, vae, seed: int = 0, limit: int | None = None, device: str | torch.device = "cpu",
                  scaling_factor: float | None = None) -> dict:
    """Stage 2: latents of the base training set + the scaling factor (``out/latents.safetensors``), with the data
    they encode (``data_seed``, ``limit``, ``n``) in ``out/latents.json``.

    The factor is measured (1 / std of posterior samples) unless ``scaling_factor`` is given, e.g. the one a
    pipeline's VAE was exported with, whose UNet was trained on latents scaled by it."""
    path = out / "latents.safetensors"
    if path.is_file():
        return load_file(str(path))
    ds = D.make_coloured_fashion_mnist("train", seed=seed, limit=limit)
    mean, std = encode_dataset(vae, ds.images, device=device)
    sample = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    scale = float(1.0 / sample.std()) if scaling_factor is None else float(scaling_factor)
    with torch.no_grad():
        rec = vae.decode(mean[:2000]).sample
        rec_mse = float(F.mse_loss((rec.clamp(-1, 1) + 1) / 2, torch.from_numpy(ds.images[:2000])))
    t = {"mean": mean, "std": std, "scaling_factor": torch.tensor(scale)}
    atomic_save(t, path)
    atomic_json({"scaling_factor": scale, "latent_std_raw": float(sample.std()), "recon_mse_01": rec_mse,
                  "n": len(ds), "data_seed": seed, "limit": limit}, out / "latents.json")
    log(out, f"cached {len(ds)} latents, scaling_factor {scale:.4f}, recon mse [0,1] {rec_mse:.5f}")
    return t


def adopt_vae(out: Path, src: Path, seed: int, limit: int | None) -> float | None:
    """Reuse the VAE of ``src`` (a run folder or an exported pipeline) in ``out``; returns the scaling factor the
    latents of ``out`` must be encoded with, or None when they are cached already (or are to be measured).

    A pipeline's latents are re-encoded with the scale it was exported with. A run folder's cached latents are
    copied only when its ``latents.json`` records the same data (``--seed``, ``--limit``) as this run; otherwise
    (another seed colours the items differently, or a file too old to say) this run's data is re-encoded with that
    run's VAE and scaling factor."""
    if not (out / "vae").exists():
        shutil.copytree(src / "vae", out / "vae")
    if (src / "model_index.json").is_file():
        return json.loads((src / "vae" / "config.json").read_text())["scaling_factor"]
    if not (src / "latents.safetensors").is_file() or (out / "latents.safetensors").exists():
        return None
    rec = latents_record(src) if (src / "latents.json").is_file() else {}
    if "data_seed" in rec and (rec["data_seed"], rec.get("limit")) == (seed, limit):
        shutil.copy(src / "latents.safetensors", out / "latents.safetensors")
        shutil.copy(src / "latents.json", out / "latents.json")
        return None
    if "scaling_factor" not in rec:
        with safe_open(str(src / "latents.safetensors"), "pt") as f:
            rec["scaling_factor"] = float(f.get_tensor("scaling_factor"))
    was = (f"data of {data_args(rec['data_seed'], rec.get('limit'))}" if "data_seed" in rec
           else "data it does not record (an older latents.json)")
    log(out, f"{src}: its latents encode the {was}; encoding this run's ({data_args(seed, limit)}) with its VAE "
             f"and scaling factor {float(rec['scaling_factor']):.4f}")
    return float(rec["scaling_factor"])
