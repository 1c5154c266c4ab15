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
stopped run continues from its last checkpoint with ``--resume``, with the options recorded there
(``run_options``).

This module is the command line; the stages live in ``vae_stage`` (1, 2), ``unet_stage`` (3), ``decoder_stage``
(``--stage decoder``) and ``export`` (4), the variants' training sets in ``variants``.

    python -m steer.lab.train --variant demo --out runs/demo
    python -m steer.lab.train --variant hybrid --init runs/demo --out runs/hybrid
    python -m steer.lab.train --variant mem --init runs/demo --out runs/mem
"""

from __future__ import annotations

import argparse
from pathlib import Path

from steer.validation import bounded_float, bounded_int

from . import models as M
from .decoder_stage import finetune_decoder
from .export import export
from .run_options import resolve
from .unet_stage import train
from .variants import HYBRID_COPIES, VARIANT_DEFAULTS


def run(args) -> Path:
    """Entry point of the CLI: a training stage of a run folder."""
    resolve(args)  # options given where they do nothing refused, a resumed run's own taken, defaults filled in
    if args.stage == "decoder":
        if args.batch_size is None:
            args.batch_size = 32
        return finetune_decoder(args)
    if args.stage == "export":
        return export(Path(args.out), Path(args.export) if args.export else Path(args.out) / "pipeline")
    return train(args)


# Argument types: a bad number is a one-line usage error (exit status 2) instead of a traceback mid-run.
COUNT, COUNT0 = bounded_int(1, 10**9), bounded_int(0, 10**9)
RATE = bounded_float(0.0, 10.0, low_open=True)
MINUTES = bounded_float(0.0, 10**6, low_open=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", choices=sorted(VARIANT_DEFAULTS), default=None,
                   help="demo (the embedded demo model; the default), hybrid (50 memorized items among ordinary data) or mem "
                        "(32 items, memorized)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, exported pipeline)")
    p.add_argument("--steps", type=COUNT, default=None, help="UNet training steps (default: the variant's: demo 9000, hybrid 3000, mem 1500)")
    p.add_argument("--batch-size", dest="batch_size", type=bounded_int(1, 65536), default=None, help="default: the variant's (64; mem 32); decoder stage 32")
    p.add_argument("--lr", type=RATE, default=None, help="peak learning rate (default: the variant's: demo 1e-3, else 4e-4)")
    p.add_argument("--warmup", type=COUNT0, default=None, help="linear warm-up steps (default: the variant's)")
    p.add_argument("--ema", type=bounded_float(0.0, 1.0), default=None, help="EMA decay of the exported weights (default: the variant's)")
    p.add_argument("--vae-steps", dest="vae_steps", type=COUNT0, default=None, help="autoencoder training steps (default 600)")
    p.add_argument("--vae-lr", dest="vae_lr", type=RATE, default=None, help="autoencoder learning rate (default 2e-3)")
    p.add_argument("--seed", type=bounded_int(0, 2**63 - 1), default=None, help="seed of the data order, noise and initial weights (default 0)")
    p.add_argument("--limit", type=COUNT, default=None, help="use only the first N training items (smoke tests)")
    p.add_argument("--threads", type=bounded_int(1, 1024), default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="auto", help="cuda, cpu, or auto (CUDA when available)")
    p.add_argument("--max-minutes", dest="max_minutes", type=MINUTES, default=None,
                   help="fit the step count (and so the learning-rate schedule) to this wall-clock budget; the steps "
                        "actually run are recorded in checkpoint.json")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.safetensors with the run's own options (from its checkpoint.json); "
                        "only --until, --max-minutes, --threads, --device, --checkpoint-minutes and --export may change")
    p.add_argument("--until", type=COUNT, default=None, help="stop (with a checkpoint) at this step; the schedule still spans --steps")
    p.add_argument("--init", default=None,
                   help="hybrid/mem: start from this run folder or pipeline folder; --stage decoder: continue this pipeline's decoder")
    p.add_argument("--stage", choices=("train", "decoder", "export"), default="train",
                   help="decoder: fine-tune the VAE decoder of an existing run (see finetune_decoder); export: write the pipeline")
    p.add_argument("--decoder-steps", dest="decoder_steps", type=COUNT, default=None, help="decoder stage: fine-tuning steps (default 1000)")
    p.add_argument("--decoder-lr", dest="decoder_lr", type=RATE, default=None, help="decoder stage: learning rate (default 5e-4)")
    p.add_argument("--decoder-latent-noise", dest="decoder_latent_noise", type=bounded_float(0.0, 1e3), default=None,
                   help="decoder stage: inflate the posterior std of each training latent by a factor from U[1, 1+K] (default 0)")
    p.add_argument("--copies", type=COUNT, default=None, help=f"hybrid: copies of each memorized item in the data (default {HYBRID_COPIES})")
    p.add_argument("--mem-fraction", dest="mem_fraction", type=bounded_float(0.0, 1.0), default=None,
                   help="decoder stage: share of each batch drawn from the memorized items (default 0.5)")
    p.add_argument("--vae-from", dest="vae_from", default=None,
                   help="reuse the VAE of this run or pipeline folder, with a run's cached latents when they encode this run's "
                        "data (the same --seed and --limit; else this run's are encoded with its VAE); weights still start "
                        "from scratch")
    p.add_argument("--unet-channels", dest="unet_channels", type=M.parse_unet_channels, default=None,
                   help="the UNet's three block widths, multiples of 16 (default 32,64,64; 64,128,128 is ~4x the parameters)")
    p.add_argument("--export", default=None, help="pipeline folder to write (default OUT/pipeline)")
    p.add_argument("--export-every-checkpoint", action="store_true", help="write the pipeline folder at every checkpoint, not only at the end")
    p.add_argument("--checkpoint-minutes", dest="checkpoint_minutes", type=bounded_float(0.0, 10**6), default=4.0,
                   help="minutes between checkpoints (default 4; 0: every step)")


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

