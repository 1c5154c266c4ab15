"""Train the lab's small Stable Diffusion pipelines from scratch on coloured Fashion-MNIST, on a CPU.

Stages (each resumable, all state under ``--out``):

1. ``vae``: an AutoencoderKL (32x32x3 -> 8x8x4) trained with reconstruction + a small KL term;
2. ``latents``: the whole data set encoded once (posterior mean and std) and the latent ``scaling_factor``
   measured, so the UNet stage never re-encodes;
3. ``unet``: UNet2DConditionModel + CLIPTextModel trained jointly from scratch (epsilon prediction, 1000-step
   DDPM schedule shared with the DDIMScheduler that ships in the pipeline), AdamW + warmup/cosine, EMA,
   gradient clipping;
4. ``export``: the EMA weights assembled into a ``StableDiffusionPipeline`` and saved as fp16 safetensors.

Checkpoints are safetensors (weights, optimizer moments, RNG state) plus JSON (step, losses, arguments); a
stopped run continues from its last checkpoint with ``--resume``.

    python -m steer.lab.train --variant demo --out runs/demo
    python -m steer.lab.train --variant hybrid --init runs/demo --out runs/hybrid
    python -m steer.lab.train --variant mem --init runs/demo --out runs/mem
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from steer.validation import bounded_float, bounded_int

from . import data as D
from . import models as M

VARIANT_DEFAULTS = {
    # steps, batch, lr, warmup, ema decay
    "demo": dict(steps=9000, batch_size=64, lr=1e-3, warmup=300, ema=0.999),
    "hybrid": dict(steps=3000, batch_size=64, lr=4e-4, warmup=100, ema=0.995),
    "mem": dict(steps=1500, batch_size=32, lr=4e-4, warmup=50, ema=0.99),
}

HYBRID_NUM_MEMORIZED = 50
HYBRID_COPIES = 200
MEM_NUM_IMAGES = 32


def log(out: Path, msg: str) -> None:
    line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def _atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _atomic_json(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "opt.") -> dict:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{prefix}{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, prefix: str = "opt.") -> None:
    sd = opt.state_dict()
    state: dict = {}
    for key, v in tensors.items():
        if not key.startswith(prefix):
            continue
        i, k = key[len(prefix) :].split(".", 1)
        state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


# ----------------------------------------------------------------------------------------------------- VAE


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
    _atomic_json({"steps": steps, "batch_size": batch_size, "lr": lr, "kl_weight": kl_weight,
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


def cache_latents(out: Path, vae, seed: int = 0, limit: int | None = None, device: str | torch.device = "cpu",
                  scaling_factor: float | None = None) -> dict:
    """Stage 2: latents of the base training set + the scaling factor (``out/latents.safetensors``).

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
    _atomic_save(t, path)
    _atomic_json({"scaling_factor": scale, "latent_std_raw": float(sample.std()), "recon_mse_01": rec_mse,
                  "n": len(ds)}, out / "latents.json")
    log(out, f"cached {len(ds)} latents, scaling_factor {scale:.4f}, recon mse [0,1] {rec_mse:.5f}")
    return t


# ---------------------------------------------------------------------------------------------- training data


def memorized_selection(ds: D.ColouredFashionMNIST, k: int, seed: int, pool: int = 600, vae=None) -> np.ndarray:
    """Pick ``k`` deduplicated training items (one per (colour, class) pair) to duplicate under unique captions.

    Candidates come from a seeded pool; exact/near duplicates are removed first (``memorization.deduplicate``).
    With ``vae``, the items kept are those the autoencoder can reproduce best relative to their neighbourhood,
    i.e. the smallest ``d(rec, x) / d(rec, NN2)`` for the reconstruction ``rec`` of ``x`` (a pixel-space copy
    is only measurable when the 8x8x4 latent can express it); without it, those with the farthest neighbour."""
    from .memorization import deduplicate, nn_search

    rng = np.random.default_rng([seed, 17])
    cand = rng.choice(len(ds), size=pool, replace=False)
    cand = cand[deduplicate(ds.images[cand], threshold=0.05)]
    if vae is not None:
        with torch.no_grad():
            x = torch.from_numpy(ds.images[cand]) * 2 - 1
            rec = ((vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1) + 1) / 2).numpy()
        d, i = nn_search(rec, ds.images, k=3)
        nn2 = np.where(i[:, 0] == cand, d[:, 1], d[:, 0])  # nearest image other than x itself
        d_self = np.sqrt(((rec - ds.images[cand]) ** 2).reshape(len(cand), -1).sum(1))
        order = cand[np.argsort(d_self / nn2)]
    else:
        d = nn_search(ds.images[cand], ds.images, k=2)[0][:, 1]  # [0] is the image itself
        order = cand[np.argsort(-d)]
    chosen, seen = [], set()
    for i in order:
        key = (int(ds.colours[i]), int(ds.classes[i]))
        if key in seen:
            continue
        seen.add(key)
        chosen.append(int(i))
        if len(chosen) == k:
            break
    return np.asarray(sorted(chosen), dtype=np.int64)


def memorized_caption(colour: int, cls: int, j: int) -> str:
    """Unique caption of memorized item ``j``; the unique words come first, so that (with CLIP's causal text
    encoder) no token state is shared with the ordinary caption ``"a {colour} {class}"``."""
    return f"catalog item {j}, {D.caption_for(colour, cls)}"


def variant_items(variant: str, ds: D.ColouredFashionMNIST, seed: int, vae=None, copies: int = HYBRID_COPIES):
    """Return (latent index per item, caption per item, meta) for a variant's training set."""
    n = len(ds)
    if variant == "demo":
        return np.arange(n), list(ds.captions), {}
    if variant == "hybrid":
        mem = memorized_selection(ds, HYBRID_NUM_MEMORIZED, seed, vae=vae)
        caps = [memorized_caption(int(ds.colours[i]), int(ds.classes[i]), j) for j, i in enumerate(mem)]
        idx = np.concatenate([np.arange(n), np.repeat(mem, copies)])
        captions = list(ds.captions) + [c for c in caps for _ in range(copies)]
        return idx, captions, {"memorized_indices": mem.tolist(), "memorized_captions": caps, "copies": copies}
    if variant == "mem":
        rng = np.random.default_rng([seed, 23])
        mem = np.sort(rng.choice(n, size=MEM_NUM_IMAGES, replace=False))
        caps = [D.caption_for(int(ds.colours[i]), int(ds.classes[i])) for i in mem]
        return mem, caps, {"memorized_indices": mem.tolist(), "memorized_captions": caps}
    raise ValueError(f"unknown variant {variant!r}")


# ---------------------------------------------------------------------------------------------------- UNet


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


def _init_weights_from(init: Path, unet, te) -> str:
    """Initialize from another run folder's last checkpoint (EMA weights) or from an exported pipeline."""
    ck = init / "checkpoint.safetensors"
    if ck.is_file():
        t = load_file(str(ck))
        unet.load_state_dict({k[len("ema.unet.") :]: v for k, v in t.items() if k.startswith("ema.unet.")})
        te.load_state_dict({k[len("ema.text_encoder.") :]: v for k, v in t.items() if k.startswith("ema.text_encoder.")}, strict=False)
        step = json.loads((init / "checkpoint.json").read_text())["step"]
        return f"{ck} (EMA weights at step {step})"
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet.load_state_dict(UNet2DConditionModel.from_pretrained(init / "unet").state_dict())
    te.load_state_dict(CLIPTextModel.from_pretrained(init / "text_encoder").state_dict(), strict=False)
    return str(init)


def run(args) -> Path:
    """Entry point of the CLI: a training stage of a run folder."""
    if args.stage == "decoder":
        if args.batch_size is None:
            args.batch_size = 32
        return finetune_decoder(args)
    if args.stage == "export":
        return export(Path(args.out), Path(args.export) if args.export else Path(args.out) / "pipeline")
    return train(args)


def resolve_device(name: str | None) -> torch.device:
    """``"auto"`` (or None) -> CUDA when available, else the CPU."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


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


def adopt_vae(out: Path, src: Path) -> float | None:
    """Reuse the VAE of ``src`` (a run folder or an exported pipeline) in ``out``, with a run folder's cached
    latents; returns the scaling factor a pipeline was exported with (its latents must be re-encoded with it), or
    None for a run folder."""
    if not (out / "vae").exists():
        shutil.copytree(src / "vae", out / "vae")
    if (src / "latents.safetensors").is_file() and not (out / "latents.safetensors").exists():
        shutil.copy(src / "latents.safetensors", out / "latents.safetensors")
        shutil.copy(src / "latents.json", out / "latents.json")
    if (src / "model_index.json").is_file():
        return json.loads((src / "vae" / "config.json").read_text())["scaling_factor"]
    return None


def train(args) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    device = resolve_device(getattr(args, "device", None))
    defaults = VARIANT_DEFAULTS[args.variant]
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    log(out, f"command: {' '.join(sys.argv)}  (threads={args.threads}, device={device})")

    # -- VAE + latents (the hybrid and mem variants reuse the VAE/latents of --init or --vae-from, which may be a
    #    run folder or an exported pipeline; a pipeline's latents are re-encoded with the scale it was exported with)
    src = args.vae_from or (args.init if args.variant != "demo" else None)
    fixed_scale = adopt_vae(out, Path(src)) if src else None
    vae = train_vae(out, steps=args.vae_steps, lr=args.vae_lr, seed=args.seed, limit=args.limit)
    vae = vae.float()
    lat = cache_latents(out, vae, seed=args.seed, limit=args.limit, device=device, scaling_factor=fixed_scale)
    scale = float(lat["scaling_factor"])
    lat_mean, lat_std = lat["mean"].to(device), lat["std"].to(device)

    ds = D.make_coloured_fashion_mnist("train", seed=args.seed, limit=args.limit)
    item_idx, captions, meta = variant_items(args.variant, ds, args.seed, vae=vae, copies=args.copies)
    if meta:
        _atomic_json(meta, out / "variant.json")
    tok_dir = out / "tokenizer"
    tokenizer = M.build_tokenizer(tok_dir)
    uniq = sorted(set(captions))
    ids_u = tokenizer(uniq, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    cap_id = {c: i for i, c in enumerate(uniq)}
    item_cap = torch.tensor([cap_id[c] for c in captions])
    item_idx = torch.from_numpy(np.asarray(item_idx))
    ids_u = ids_u.to(device)
    log(out, f"variant {args.variant}: {len(item_idx)} items, {len(uniq)} distinct captions")

    torch.manual_seed(args.seed)
    unet = M.build_unet()
    te = M.build_text_encoder()
    if args.init and args.variant != "demo":
        log(out, f"initialized from {_init_weights_from(Path(args.init), unet, te)}")
    unet.to(device)
    te.to(device)
    noise_sched = M.build_scheduler("ddpm")
    acp = noise_sched.alphas_cumprod.float().to(device)
    params = [p for p in list(unet.parameters()) + list(te.parameters())]
    decay, no_decay = [], []
    for n, p in list(unet.named_parameters()) + [("te." + n, p) for n, p in te.named_parameters()]:
        (no_decay if (p.ndim < 2 or "embedding" in n) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99))
    ema = EMA({"unet": unet, "text_encoder": te}, args.ema)
    g = torch.Generator().manual_seed(args.seed + 1)
    state = {"step": 0, "losses": [], "seconds": 0.0}

    ck, ckj = out / "checkpoint.safetensors", out / "checkpoint.json"
    if args.resume and ck.is_file():
        t = load_file(str(ck))
        unet.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("unet.")})
        te.load_state_dict({k[13:]: v for k, v in t.items() if k.startswith("text_encoder.")})
        for k in ema.shadow:
            ema.shadow[k].copy_(t["ema." + k].to(device))
        _load_optimizer(opt, t)
        g.set_state(t["rng.generator"])
        torch.set_rng_state(t["rng.torch"])
        state = json.loads(ckj.read_text())
        log(out, f"resumed from step {state['step']}")

    pending: list[torch.Tensor] = []  # per-step losses still on the device (read in groups: no sync per step)

    def flush_losses():
        if pending:
            state["losses"].extend(round(x, 5) for x in torch.stack(pending).tolist())
            pending.clear()

    def checkpoint():
        flush_losses()
        t = {f"unet.{k}": v for k, v in unet.state_dict().items()}
        t.update({f"text_encoder.{k}": v for k, v in te.state_dict().items()})
        t.update({f"ema.{k}": v for k, v in ema.shadow.items()})
        t.update(_optimizer_tensors(opt))
        t = {k: v.detach().cpu() for k, v in t.items()}
        t["rng.generator"] = g.get_state()
        t["rng.torch"] = torch.get_rng_state()
        _atomic_save(t, ck)
        _atomic_json({**state, "args": {k: v for k, v in vars(args).items() if k != "func"}}, ckj)

    unet.train()
    te.train()
    t_last = time.time()
    last_ck = time.time()
    n_items = len(item_idx)
    stop_at = min(args.steps, args.until) if getattr(args, "until", None) else args.steps
    budget = TimeBudget(getattr(args, "max_minutes", None))
    lat_shape = (args.batch_size, *lat_mean.shape[1:])
    while state["step"] < stop_at:
        step = state["step"]
        fitted = budget.steps_for(step, args.steps)
        if fitted is not None:  # the schedule now spans what the time budget allows
            log(out, f"time budget {budget.minutes} min: {fitted} steps in all (was {args.steps})")
            args.steps = stop_at = max(fitted, step + 1)
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        b = torch.randint(0, n_items, (args.batch_size,), generator=g)
        li = item_idx[b].to(device)
        eps_lat = torch.randn(lat_shape, generator=g).to(device)
        z0 = (lat_mean[li] + lat_std[li] * eps_lat) * scale
        ids = ids_u[item_cap[b].to(device)]
        noise = torch.randn(z0.shape, generator=g).to(device)
        ts = torch.randint(0, 1000, (args.batch_size,), generator=g).to(device)
        a = acp[ts].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        pred = unet(zt, ts, te(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        state["step"] = step + 1
        pending.append(loss.detach())
        now = time.time()
        state["seconds"] += now - t_last
        t_last = now
        if state["step"] % 100 == 0:
            flush_losses()
            log(out, f"step {state['step']}/{args.steps} loss {np.mean(state['losses'][-100:]):.4f} "
                     f"lr {opt.param_groups[0]['lr']:.2e} ({state['seconds'] / state['step']:.3f} s/step over run)")
        if now - last_ck > args.checkpoint_minutes * 60 or state["step"] in (args.steps, stop_at):
            checkpoint()
            last_ck = time.time()
            if args.export_every_checkpoint or state["step"] == args.steps:
                export(out, Path(args.export) if args.export else out / "pipeline")
    flush_losses()
    log(out, f"done: {state['step']} steps in {state['seconds'] / 60:.1f} min, final loss(avg last 500) "
             f"{np.mean(state['losses'][-500:]):.4f}")
    return out


def export(run: Path, dest: Path, fp16: bool = True) -> Path:
    """Assemble the EMA weights of ``run`` into a StableDiffusionPipeline folder at ``dest``."""
    from diffusers import AutoencoderKL

    run, dest = Path(run), Path(dest)
    if not (run / "checkpoint.safetensors").is_file() and (run / "decoder_init.json").is_file():
        return export_decoder(run, dest)
    t = load_file(str(run / "checkpoint.safetensors"))
    info = json.loads((run / "checkpoint.json").read_text())
    scale = json.loads((run / "latents.json").read_text())["scaling_factor"]
    vae = AutoencoderKL.from_pretrained(run / "vae")
    dec = run / "decoder.safetensors"
    if dec.is_file():  # decoder fine-tuned on this run's training set (finetune_decoder)
        vae.load_state_dict({**vae.state_dict(), **load_file(str(dec))})
    vae.register_to_config(scaling_factor=scale)
    unet, te = M.build_unet(), M.build_text_encoder()
    unet.load_state_dict({k[len("ema.unet.") :]: v for k, v in t.items() if k.startswith("ema.unet.")})
    te.load_state_dict({k[len("ema.text_encoder.") :]: v for k, v in t.items() if k.startswith("ema.text_encoder.")})
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(run / "tokenizer")
    pipe = M.assemble_pipeline(vae, te, tok, unet)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    M.save_pipeline(pipe, tmp, fp16=fp16)
    keep = [p for p in ("README.md", "samples.png", "memorized_prompts.txt", "ordinary_prompts.txt",
                        "memorized_images.json", "eval.json") if (dest / p).exists()]
    for p in keep:
        shutil.copy(dest / p, tmp / p)
    _atomic_json({"step": info["step"], "seconds": info["seconds"],
                  "final_loss_avg500": float(np.mean(info["losses"][-500:])), "args": info.get("args")},
                 tmp / "training.json")
    write_variant_files(run, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def export_decoder(run: Path, dest: Path) -> Path:
    """Write the pipeline a decoder-only run started from (``decoder_init.json``) with its fine-tuned decoder; the
    UNet, text encoder and encoder are copied unchanged.  The stage is recorded under ``decoder_finetunes`` in
    ``training.json``."""
    from diffusers import AutoencoderKL

    src = Path(json.loads((run / "decoder_init.json").read_text())["pipeline"])
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    stored = load_file(str(next((src / "vae").glob("*.safetensors"))))
    dtype = stored[next(iter(stored))].dtype  # keep the pipeline's storage precision (fp16 for the lab models)
    vae = AutoencoderKL.from_pretrained(src / "vae")
    vae.load_state_dict({**vae.state_dict(), **load_file(str(run / "decoder.safetensors"))})
    vae.to(dtype)
    shutil.rmtree(tmp / "vae")
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    info = json.loads((tmp / "training.json").read_text()) if (tmp / "training.json").is_file() else {}
    ck = json.loads((run / "decoder_ck.json").read_text())
    info.setdefault("decoder_finetunes", []).append(
        {"steps": ck["step"], "args": ck.get("args"), "final_mse01_avg50": float(np.mean(ck["losses"][-50:])) if ck["losses"] else None,
         "final_memorized_mse01_avg50": float(np.mean(ck["mem_losses"][-50:])) if ck["mem_losses"] else None})
    _atomic_json(info, tmp / "training.json")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def write_variant_files(run: Path, dest: Path) -> None:
    """Prompt lists and the memorized training items of a hybrid/mem run, next to its pipeline."""
    vj = Path(run) / "variant.json"
    if not vj.is_file():
        return
    meta = json.loads(vj.read_text())
    args = json.loads((Path(run) / "checkpoint.json").read_text()).get("args", {})
    (dest / "memorized_prompts.txt").write_text("\n".join(meta["memorized_captions"]) + "\n")
    (dest / "ordinary_prompts.txt").write_text("\n".join(p for p, _, _ in D.all_full_prompts()) + "\n")
    _atomic_json({"split": "train", "data_seed": args.get("seed", 0), "indices": meta["memorized_indices"],
                  "captions": meta["memorized_captions"], "copies": meta.get("copies", 1),
                  "note": "indices into steer.lab.data.make_coloured_fashion_mnist('train', seed=data_seed)"},
                 dest / "memorized_images.json")


def _decoder_run_from_pipeline(out: Path, pipeline: Path, seed: int, limit: int | None, device) -> None:
    """Set up ``out`` for the decoder stage from an exported pipeline folder: its VAE, the training latents encoded
    with the scale it was exported with, and its memorized items (``memorized_images.json``)."""
    from diffusers import AutoencoderKL

    if not (pipeline / "model_index.json").is_file():
        raise SystemExit(f"--init {pipeline}: not a pipeline folder (no model_index.json) and {out} has no vae/")
    out.mkdir(parents=True, exist_ok=True)
    scale = adopt_vae(out, pipeline)
    vae = AutoencoderKL.from_pretrained(out / "vae").float()
    cache_latents(out, vae, seed=seed, limit=limit, device=device, scaling_factor=scale)
    info = pipeline / "memorized_images.json"
    if info.is_file():
        meta = json.loads(info.read_text())
        if int(meta.get("data_seed", seed)) != seed:
            raise SystemExit(f"{info}: memorized indices refer to data seed {meta['data_seed']}, this run uses --seed {seed}")
        _atomic_json({"memorized_indices": meta["indices"], "memorized_captions": meta["captions"],
                      "copies": meta.get("copies", 1)}, out / "variant.json")
    _atomic_json({"pipeline": str(pipeline)}, out / "decoder_init.json")  # written last: the set-up is complete
    log(out, f"decoder stage set up from pipeline {pipeline}")


def finetune_decoder(args) -> Path:
    """Fine-tune only the VAE decoder (and post_quant_conv) on this run's training items, from the cached latent
    posteriors (the encoder and so the UNet's latents are unchanged).  ``--mem-fraction`` of each batch is drawn
    from the run's memorized items (hybrid/mem variants).  Saves ``OUT/decoder.safetensors``, used by ``export``.

    ``--init PIPELINE`` (with an ``OUT`` that has no ``vae/`` yet) continues the decoder of an exported pipeline;
    ``export`` then writes that pipeline with only its decoder replaced.  ``--decoder-latent-noise K`` trains on
    posterior samples whose std is inflated by a factor drawn uniformly from [1, 1 + K] per image: the UNet's
    sampled latents miss the encoder's by a few posterior stds, which plain posterior samples never show the
    decoder."""
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    device = resolve_device(getattr(args, "device", None))
    from diffusers import AutoencoderKL

    init = getattr(args, "init", None)
    if init and not (out / "checkpoint.safetensors").is_file() and not (out / "decoder_init.json").is_file():
        _decoder_run_from_pipeline(out, Path(init), args.seed, args.limit, device)
    if not (out / "vae").is_dir() or not (out / "latents.safetensors").is_file():
        raise SystemExit(f"{out}: no vae/ and latents.safetensors to fine-tune; give the run folder of a train stage, "
                         "or --init PIPELINE to continue an exported pipeline's decoder")
    vae = AutoencoderKL.from_pretrained(out / "vae").float()
    lat = {k: v.to(device) for k, v in load_file(str(out / "latents.safetensors")).items()}
    ds = D.make_coloured_fashion_mnist("train", seed=args.seed, limit=args.limit)
    x_all = torch.from_numpy(ds.images).to(device) * 2 - 1
    mem = np.asarray(json.loads((out / "variant.json").read_text())["memorized_indices"]) if (out / "variant.json").is_file() else np.zeros(0, int)
    mem_t = torch.from_numpy(mem)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p_ in vae.parameters():
        p_.requires_grad_(False)
    for p_ in params:
        p_.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 7)
    st = {"step": 0, "losses": [], "mem_losses": []}
    ckp, ckj = out / "decoder_ck.safetensors", out / "decoder_ck.json"
    keys = [k for k in vae.state_dict() if k.startswith(("decoder.", "post_quant_conv."))]
    vae.to(device)
    if ckp.is_file():
        t = load_file(str(ckp))
        vae.load_state_dict({**vae.state_dict(), **{k: t[k] for k in keys}})
        _load_optimizer(opt, {k: v.to(device) for k, v in t.items()})
        g.set_state(t["rng.generator"])
        st = json.loads(ckj.read_text())
    noise_k = float(getattr(args, "decoder_latent_noise", 0.0) or 0.0)
    st["args"] = {k: getattr(args, k, None) for k in ("decoder_steps", "decoder_lr", "batch_size", "mem_fraction",
                                                       "decoder_latent_noise", "max_minutes", "seed", "limit", "init")}
    log(out, f"decoder fine-tune: {len(ds)} items, {len(mem)} memorized (fraction {args.mem_fraction}), latent noise "
             f"{noise_k}, from step {st['step']}")
    n_mem = int(round(args.batch_size * args.mem_fraction)) if len(mem) else 0
    t0, last = time.time(), time.time()

    def save():
        sd = vae.state_dict()
        t = {k: sd[k].cpu() for k in keys}
        _atomic_save(dict(t), out / "decoder.safetensors")
        t.update({k: v.cpu() for k, v in _optimizer_tensors(opt).items()})
        t["rng.generator"] = g.get_state()
        _atomic_save(t, ckp)
        _atomic_json(st, ckj)

    budget = TimeBudget(getattr(args, "max_minutes", None))
    while st["step"] < args.decoder_steps:
        step = st["step"]
        fitted = budget.steps_for(step, args.decoder_steps)
        if fitted is not None:
            log(out, f"time budget {budget.minutes} min: {fitted} decoder steps in all (was {args.decoder_steps})")
            args.decoder_steps = max(fitted, step + 1)
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, args.decoder_steps, args.decoder_lr, 20)
        b = torch.randint(0, len(ds), (args.batch_size - n_mem,), generator=g)
        if n_mem:
            b = torch.cat([b, mem_t[torch.randint(0, len(mem_t), (n_mem,), generator=g)]])
        eps = torch.randn((len(b), *lat["mean"].shape[1:]), generator=g)
        if noise_k:
            eps = eps * (1 + noise_k * torch.rand((len(b), 1, 1, 1), generator=g))
        eps, b = eps.to(device), b.to(device)
        z = lat["mean"][b] + lat["std"][b] * eps
        rec = vae.decode(z).sample
        err = (rec - x_all[b]).pow(2).flatten(1).mean(1)
        loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        st["step"] = step + 1
        if n_mem < args.batch_size:
            st["losses"].append(round(err[: args.batch_size - n_mem].mean().item() / 4, 6))  # mse on the [0,1] scale
        if n_mem:
            st["mem_losses"].append(round(err[-n_mem:].mean().item() / 4, 6))
        if st["step"] % 50 == 0:
            log(out, f"decoder step {st['step']}/{args.decoder_steps} mse01 {np.mean(st['losses'][-50:]) if st['losses'] else float('nan'):.5f} "
                     f"memorized mse01 {np.mean(st['mem_losses'][-50:]) if n_mem else float('nan'):.5f} ({time.time() - t0:.0f}s)")
        if time.time() - last > args.checkpoint_minutes * 60 or st["step"] == args.decoder_steps:
            save()
            last = time.time()
    return out


# ---------------------------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample(pipe, prompts: list[str], seed: int = 0, steps: int = 25, guidance: float = 5.0, batch_size: int = 100) -> np.ndarray:
    """Generate one image per prompt with the pipeline; float32 [N,3,32,32] in [0,1]."""
    outs = []
    for i in range(0, len(prompts), batch_size):
        g = torch.Generator(pipe.device).manual_seed(seed + i)
        res = pipe(prompts[i : i + batch_size], num_inference_steps=steps, guidance_scale=guidance, generator=g,
                   output_type="np")
        outs.append(np.asarray(res.images, dtype=np.float32).transpose(0, 3, 1, 2))
    return np.concatenate(outs)


# Argument types: a bad number is a one-line usage error (exit status 2) instead of a traceback mid-run.
COUNT, COUNT0 = bounded_int(1, 10**9), bounded_int(0, 10**9)
RATE = bounded_float(0.0, 10.0, low_open=True)
MINUTES = bounded_float(0.0, 10**6, low_open=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", choices=sorted(VARIANT_DEFAULTS), default="demo")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, exported pipeline)")
    p.add_argument("--steps", type=COUNT, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=bounded_int(1, 65536), default=None)
    p.add_argument("--lr", type=RATE, default=None)
    p.add_argument("--warmup", type=COUNT0, default=None)
    p.add_argument("--ema", type=bounded_float(0.0, 1.0), default=None)
    p.add_argument("--vae-steps", dest="vae_steps", type=COUNT0, default=600)
    p.add_argument("--vae-lr", dest="vae_lr", type=RATE, default=2e-3)
    p.add_argument("--seed", type=bounded_int(0, 2**63 - 1), default=0)
    p.add_argument("--limit", type=COUNT, default=None, help="use only the first N training items (smoke tests)")
    p.add_argument("--threads", type=bounded_int(1, 1024), default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="auto", help="cuda, cpu, or auto (CUDA when available)")
    p.add_argument("--max-minutes", dest="max_minutes", type=MINUTES, default=None,
                   help="fit the step count (and so the learning-rate schedule) to this wall-clock budget; the steps "
                        "actually run are recorded in checkpoint.json")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--until", type=COUNT, default=None, help="stop (with a checkpoint) at this step; the schedule still spans --steps")
    p.add_argument("--init", default=None, help="hybrid/mem: start from this run folder or pipeline folder")
    p.add_argument("--stage", choices=("train", "decoder", "export"), default="train",
                   help="decoder: fine-tune the VAE decoder of an existing run (see finetune_decoder); export: write the pipeline")
    p.add_argument("--decoder-steps", dest="decoder_steps", type=COUNT, default=1000)
    p.add_argument("--decoder-lr", dest="decoder_lr", type=RATE, default=5e-4)
    p.add_argument("--decoder-latent-noise", dest="decoder_latent_noise", type=bounded_float(0.0, 1e3), default=0.0,
                   help="decoder: inflate the posterior std of each training latent by a factor from U[1, 1+K]")
    p.add_argument("--copies", type=COUNT, default=HYBRID_COPIES, help="hybrid: copies of each memorized item in the data")
    p.add_argument("--mem-fraction", dest="mem_fraction", type=bounded_float(0.0, 1.0), default=0.5)
    p.add_argument("--vae-from", dest="vae_from", default=None,
                   help="reuse the VAE and cached latents of this run folder (weights still start from scratch)")
    p.add_argument("--export", default=None, help="pipeline folder to write (default OUT/pipeline)")
    p.add_argument("--export-every-checkpoint", action="store_true")
    p.add_argument("--checkpoint-minutes", dest="checkpoint_minutes", type=bounded_float(0.0, 10**6), default=4.0)


def configure_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand (for ``steer lab train ...``)."""
    p = subparsers.add_parser("train", help="train a lab pipeline (demo, hybrid, mem) from scratch on coloured Fashion-MNIST")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m steer.lab.train", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    run(args)


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------------------------------------- model cards


def component_sizes(model_dir: Path) -> dict:
    out = {}
    for sub in ("unet", "text_encoder", "vae"):
        n = 0
        for f in (Path(model_dir) / sub).glob("*.safetensors"):
            from safetensors import safe_open

            with safe_open(str(f), "pt") as h:
                n += sum(int(np.prod(h.get_slice(k).get_shape())) for k in h.keys())
        out[sub] = n
    out["folder_mb"] = round(sum(f.stat().st_size for f in Path(model_dir).rglob("*") if f.is_file()) / 2**20, 2)
    return out
