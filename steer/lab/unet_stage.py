"""Stage 3 of ``steer.lab.train``: the UNet and CLIP text encoder trained jointly from scratch (epsilon
prediction, DDPM noise schedule, AdamW + warmup/cosine, EMA, gradient clipping), checkpointed and resumable."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from . import data as D
from . import models as M
from .checkpoints import atomic_json, atomic_save, load_optimizer, log, optimizer_tensors
from .export import check_export_dest, export
from .models import resolve_device
from .schedule import EMA, TimeBudget, lr_at
from .vae_stage import adopt_vae, cache_latents, check_latents, train_vae
from .variants import MIN_ITEMS, VARIANT_DEFAULTS, variant_items


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


def _run_widths(args, out: Path):
    """The UNet widths of this run: ``--unet-channels``; on ``--resume`` the ones the checkpoint was trained with (a
    resumed run continues the same model; asking for other widths is a one-line error, not a size mismatch); for a
    hybrid/mem variant started from ``--init``, the init's."""
    asked = getattr(args, "unet_channels", None)
    if getattr(args, "resume", False) and (out / "checkpoint.json").is_file():
        recorded = M.recorded_unet_widths(out)
        if asked is not None and list(asked) != list(recorded or M.UNET_CONFIG["block_out_channels"]):
            shown = ",".join(map(str, recorded or M.UNET_CONFIG["block_out_channels"]))
            raise SystemExit(f"--unet-channels {','.join(map(str, asked))} does not match the run being resumed "
                             f"({shown}); leave it out to continue that run")
        args.unet_channels = recorded
    elif asked is None and getattr(args, "init", None) and args.variant != "demo":
        args.unet_channels = M.recorded_unet_widths(Path(args.init))
    return args.unet_channels


def train(args) -> Path:
    out = Path(args.out)
    least = MIN_ITEMS[args.variant]
    if args.limit is not None and args.limit < least:  # numpy's "larger sample than population" deep in the run else
        raise SystemExit(f"--variant {args.variant} needs --limit of at least {least} training items, got {args.limit}")
    earlier = [n for n in ("checkpoint.safetensors", "vae", "latents.safetensors") if (out / n).exists()]
    if earlier and not getattr(args, "resume", False):  # it used to reuse that run's VAE and latents, then replace its weights
        raise SystemExit(f"--out {out} holds an earlier run ({', '.join(earlier)}): pass --resume to continue it, or "
                         "choose another --out")
    check_export_dest(out, Path(args.export) if args.export else out / "pipeline")  # before training, not after it
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    device = resolve_device(getattr(args, "device", None))
    defaults = VARIANT_DEFAULTS[args.variant]
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    log(out, f"command: {' '.join(sys.argv)}  (threads={args.threads}, device={device})")

    # -- VAE + latents (the hybrid and mem variants reuse the VAE/latents of --init or --vae-from, which may be a
    #    run folder or an exported pipeline; a pipeline's latents, or a run's of other data (--seed, --limit), are
    #    re-encoded with the scale it was exported or trained with)
    src = args.vae_from or (args.init if args.variant != "demo" else None)
    fixed_scale = adopt_vae(out, Path(src), args.seed, args.limit) if src else None
    vae = train_vae(out, steps=args.vae_steps, lr=args.vae_lr, seed=args.seed, limit=args.limit)
    vae = vae.float()
    lat = cache_latents(out, vae, seed=args.seed, limit=args.limit, device=device, scaling_factor=fixed_scale)
    ds = D.make_coloured_fashion_mnist("train", seed=args.seed, limit=args.limit)
    check_latents(out, args.seed, args.limit, len(ds), n_latents=len(lat["mean"]))  # cached by an earlier start?
    scale = float(lat["scaling_factor"])
    lat_mean, lat_std = lat["mean"].to(device), lat["std"].to(device)

    item_idx, captions, meta = variant_items(args.variant, ds, args.seed, vae=vae, copies=args.copies)
    if meta:
        atomic_json(meta, out / "variant.json")
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
    unet = M.build_unet(**M.unet_overrides(_run_widths(args, out)))
    te = M.build_text_encoder()
    resuming = args.resume and (out / "checkpoint.safetensors").is_file()  # the checkpoint's weights replace any init
    if args.init and args.variant != "demo" and not resuming:  # (and the init run may have moved since)
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
        load_optimizer(opt, t)
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
        t.update(optimizer_tensors(opt))
        t = {k: v.detach().cpu() for k, v in t.items()}
        t["rng.generator"] = g.get_state()
        t["rng.torch"] = torch.get_rng_state()
        atomic_save(t, ck)
        atomic_json({**state, "args": {k: v for k, v in vars(args).items() if k != "func"}}, ckj)

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

