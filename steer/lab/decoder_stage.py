"""The ``decoder`` stage of ``steer.lab.train``: fine-tune only the VAE decoder of a run (or of an exported
pipeline) on its training items, from the cached latent posteriors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from . import data as D
from .checkpoints import atomic_json, atomic_save, load_optimizer, log, optimizer_tensors
from .models import resolve_device
from .schedule import TimeBudget, lr_at
from .vae_stage import adopt_vae, cache_latents, check_latents


def _decoder_run_from_pipeline(out: Path, pipeline: Path, seed: int, limit: int | None, device) -> None:
    """Set up ``out`` for the decoder stage from an exported pipeline folder: its VAE, the training latents encoded
    with the scale it was exported with, and its memorized items (``memorized_images.json``)."""
    from diffusers import AutoencoderKL

    if not (pipeline / "model_index.json").is_file():
        raise SystemExit(f"--init {pipeline}: not a pipeline folder (no model_index.json) and {out} has no vae/")
    out.mkdir(parents=True, exist_ok=True)
    scale = adopt_vae(out, pipeline, seed, limit)
    vae = AutoencoderKL.from_pretrained(out / "vae").float()
    cache_latents(out, vae, seed=seed, limit=limit, device=device, scaling_factor=scale)
    info = pipeline / "memorized_images.json"
    if info.is_file():
        meta = json.loads(info.read_text())
        if int(meta.get("data_seed", seed)) != seed:
            raise SystemExit(f"{info}: memorized indices refer to data seed {meta['data_seed']}, this run uses --seed {seed}")
        atomic_json({"memorized_indices": meta["indices"], "memorized_captions": meta["captions"],
                      "copies": meta.get("copies", 1)}, out / "variant.json")
    atomic_json({"pipeline": str(pipeline)}, out / "decoder_init.json")  # written last: the set-up is complete
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
    check_latents(out, args.seed, args.limit, len(ds), n_latents=len(lat["mean"]))  # images and latents paired by index
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
        load_optimizer(opt, {k: v.to(device) for k, v in t.items()})
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
        atomic_save(dict(t), out / "decoder.safetensors")
        t.update({k: v.cpu() for k, v in optimizer_tensors(opt).items()})
        t["rng.generator"] = g.get_state()
        atomic_save(t, ckp)
        atomic_json(st, ckj)

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

