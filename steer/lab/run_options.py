"""The options of ``steer lab train`` resolved against the stage, the variant and, on ``--resume``, the run itself.

An option is *given* when it is not None (its parser default); its documented default is filled in here, after the
checks. A resumed run takes every option that defines it from its ``checkpoint.json`` (a value given that differs is a
one-line error); only the operational ones (``OPERATIONAL``) may change. An option given where it does nothing is a
one-line error too."""

from __future__ import annotations

import json
from pathlib import Path

from .variants import HYBRID_COPIES

# the documented defaults of the options whose parser default is None (so that "given" can be told from "default")
DEFAULTS = {"variant": "demo", "vae_steps": 600, "vae_lr": 2e-3, "seed": 0, "copies": HYBRID_COPIES,
            "decoder_steps": 1000, "decoder_lr": 5e-4, "decoder_latent_noise": 0.0, "mem_fraction": 0.5}
# what defines a run of the train stage: on --resume taken from its checkpoint.json, a differing value refused
# (--unet-channels too, by unet_stage._run_widths)
RUN_DEFINING = ("variant", "steps", "batch_size", "lr", "warmup", "ema", "vae_steps", "vae_lr", "seed", "limit", "copies",
                "init", "vae_from")
OPERATIONAL = ("until", "max_minutes", "threads", "device", "checkpoint_minutes", "export", "export_every_checkpoint")
DECODER_ONLY = ("decoder_steps", "decoder_lr", "decoder_latent_noise", "mem_fraction")
TRAIN_ONLY = ("steps", "lr", "warmup", "ema", "vae_steps", "vae_lr", "copies", "vae_from", "unet_channels", "until",
              "export_every_checkpoint", "resume")
# what the decoder and export stages read besides --out (--variant is accepted there as the run's label: the GPU
# scripts name it on every stage)
STAGE_READS = {"decoder": {"seed", "limit", "init", "batch_size", "max_minutes", *DECODER_ONLY},
               "export": {"export"}}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(args, name: str) -> bool:
    v = getattr(args, name, None)
    return v is not None and v is not False


def _shown(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)


def _same(name: str, given, recorded) -> bool:
    if name in ("init", "vae_from") and given is not None and recorded is not None:
        return given == recorded or Path(given).resolve() == Path(recorded).resolve()
    if isinstance(given, float) or isinstance(recorded, float):
        return recorded is not None and float(given) == float(recorded)
    return given == recorded


def _resume_from_checkpoint(args, out: Path) -> None:
    ckj = out / "checkpoint.json"
    recorded = json.loads(ckj.read_text()).get("args") or {}
    for name in RUN_DEFINING:
        if name not in recorded:  # a checkpoint written before the option existed
            continue
        if not _given(args, name):
            setattr(args, name, recorded[name])
        elif not _same(name, getattr(args, name), recorded[name]):
            was = f"{flag(name)} {_shown(recorded[name])}" if recorded[name] is not None else f"no {flag(name)}"
            raise SystemExit(f"{flag(name)} {_shown(getattr(args, name))} does not match the run being resumed "
                             f"({was} in {ckj}); leave it out to continue that run "
                             f"(only {', '.join(flag(n) for n in OPERATIONAL if n != 'export_every_checkpoint')} may change)")


def resolve(args) -> None:
    """Check the options given against the stage (and variant), take a resumed run's own, fill in the defaults."""
    stage = getattr(args, "stage", None) or "train"
    if stage != "decoder":
        extra = [n for n in DECODER_ONLY if _given(args, n)]
        if extra:
            raise SystemExit(f"{flag(extra[0])} is an option of --stage decoder (fine-tuning a run's decoder); "
                             f"--stage {stage} does not use it")
    if stage in STAGE_READS:
        extra = [n for n in (*TRAIN_ONLY, *RUN_DEFINING, "batch_size", "max_minutes", "unet_channels")
                 if n not in STAGE_READS[stage] and n != "variant" and _given(args, n)]
        if extra:
            raise SystemExit(f"{flag(extra[0])} is not used by --stage {stage}; leave it out")
    user = {n for n in (*RUN_DEFINING, *DECODER_ONLY) if _given(args, n)}  # before a resumed run's own fill in
    out = Path(args.out)
    if stage == "train" and getattr(args, "resume", False) and (out / "checkpoint.json").is_file():
        _resume_from_checkpoint(args, out)
    variant = getattr(args, "variant", None) or DEFAULTS["variant"]
    if stage == "train":
        if variant != "hybrid" and "copies" in user:
            raise SystemExit(f"--copies sets the copies of each memorized item of --variant hybrid; --variant {variant} "
                             "does not use it")
        if variant == "demo" and "init" in user:
            raise SystemExit("--init continues a hybrid or mem run (or pipeline); the demo variant starts from scratch: "
                             "use --vae-from RUN to reuse a VAE")
        source = getattr(args, "vae_from", None) or (getattr(args, "init", None) if variant != "demo" else None)
        for name in ("vae_steps", "vae_lr"):
            if source and name in user and not getattr(args, "resume", False):
                raise SystemExit(f"{flag(name)} trains a VAE from scratch; this run adopts the VAE of {source} "
                                 f"({'--vae-from' if getattr(args, 'vae_from', None) else '--init'}): leave it out")
    for name, value in DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
