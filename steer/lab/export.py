"""Stage 4 of ``steer.lab.train``: a run's EMA weights (or a fine-tuned decoder) written as a standard
``StableDiffusionPipeline`` folder, with the variant's prompt lists and memorized items next to it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_file

from steer.assets import MODEL_DIRECTIONS

from . import data as D
from . import models as M
from .checkpoints import atomic_json

# what an export writes into its folder (and a re-export may replace): anything else there is the user's
_KEPT = ("README.md", "samples.png", "memorized_prompts.txt", "ordinary_prompts.txt", "memorized_images.json", "eval.json",
         "memorized.png")
_RUN_RECORDS = ("train.log", "checkpoint.json", "variant.json", "latents.json", "decoder_ck.json")  # scripts/gpu_lab_models.sh copies them in
_PIPELINE_ENTRIES = frozenset({"model_index.json", "training.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler",
                               "feature_extractor", "safety_checker", "image_encoder", MODEL_DIRECTIONS, *_KEPT, *_RUN_RECORDS})


def check_export_dest(run: Path, dest: Path, writes: frozenset[str] = _PIPELINE_ENTRIES) -> None:
    """Refuse, before any work, an export that would delete what it did not write: ``dest`` being the run folder or a
    folder above it, a symbolic link, or an existing folder that is not a pipeline an earlier export wrote or that holds
    other files (every one was deleted by the replace). One line (SystemExit, as the lab's other refusals)."""
    run, dest = Path(run), Path(dest)
    if dest.is_symlink():
        raise SystemExit(f"--export {dest} is a symbolic link: refusing to replace what it points to")
    if dest.resolve() == run.resolve() or dest.resolve() in run.resolve().parents:
        raise SystemExit(f"--export {dest} would replace the run folder {run} (its checkpoints): export to a new folder "
                         "(the default is OUT/pipeline)")
    if not dest.exists():
        return
    if not dest.is_dir() or not (dest / "model_index.json").is_file():
        raise SystemExit(f"--export {dest} exists and is not a pipeline folder (no model_index.json): refusing to replace "
                         "it; export to a new folder")
    other = sorted(p.name for p in dest.iterdir() if p.name not in writes)
    if other:
        shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        raise SystemExit(f"--export {dest} holds files an export does not write ({shown}): move them away first; "
                         "nothing was replaced")


def export(run: Path, dest: Path, fp16: bool = True) -> Path:
    """Assemble the EMA weights of ``run`` into a StableDiffusionPipeline folder at ``dest`` (`check_export_dest`
    first: an export replaces only a pipeline folder it could have written)."""
    from diffusers import AutoencoderKL

    run, dest = Path(run), Path(dest)
    if not (run / "checkpoint.safetensors").is_file() and (run / "decoder_init.json").is_file():
        return export_decoder(run, dest)  # checks dest against what it writes: the pipeline it started from, whole
    check_export_dest(run, dest)
    t = load_file(str(run / "checkpoint.safetensors"))
    info = json.loads((run / "checkpoint.json").read_text())
    scale = json.loads((run / "latents.json").read_text())["scaling_factor"]
    vae = AutoencoderKL.from_pretrained(run / "vae")
    dec = run / "decoder.safetensors"
    if dec.is_file():  # decoder fine-tuned on this run's training set (finetune_decoder)
        vae.load_state_dict({**vae.state_dict(), **load_file(str(dec))})
    vae.register_to_config(scaling_factor=scale)
    unet = M.build_unet(**M.unet_overrides(M.recorded_unet_widths(run)))
    te = M.build_text_encoder()
    unet.load_state_dict({k[len("ema.unet.") :]: v for k, v in t.items() if k.startswith("ema.unet.")})
    te.load_state_dict({k[len("ema.text_encoder.") :]: v for k, v in t.items() if k.startswith("ema.text_encoder.")})
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(run / "tokenizer")
    pipe = M.assemble_pipeline(vae, te, tok, unet)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    M.save_pipeline(pipe, tmp, fp16=fp16)
    keep = [p for p in _KEPT if (dest / p).exists()]
    for p in keep:
        shutil.copy(dest / p, tmp / p)
    if (dest / MODEL_DIRECTIONS).is_dir() and not (dest / MODEL_DIRECTIONS).is_symlink():
        # directions shipped for the model are kept (learned on the earlier weights: the strict check says so)
        shutil.copytree(dest / MODEL_DIRECTIONS, tmp / MODEL_DIRECTIONS, symlinks=True)
    atomic_json({"step": info["step"], "seconds": info["seconds"],
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
    # it writes the pipeline it started from whole: what that folder holds is its own (a re-export replaces it)
    check_export_dest(run, dest, _PIPELINE_ENTRIES | {p.name for p in src.iterdir()} if src.is_dir() else _PIPELINE_ENTRIES)
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
    atomic_json(info, tmp / "training.json")
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
    atomic_json({"split": "train", "data_seed": args.get("seed", 0), "indices": meta["memorized_indices"],
                  "captions": meta["memorized_captions"], "copies": meta.get("copies", 1),
                  "note": "indices into steer.lab.data.make_coloured_fashion_mnist('train', seed=data_seed)"},
                 dest / "memorized_images.json")


def component_sizes(model_dir: Path) -> dict:
    """Parameter count of each component of a pipeline folder and the folder's size in MiB (for model cards)."""
    out = {}
    for sub in ("unet", "text_encoder", "vae"):
        n = 0
        for f in (Path(model_dir) / sub).glob("*.safetensors"):
            with safe_open(str(f), "pt") as h:
                n += sum(int(np.prod(h.get_slice(k).get_shape())) for k in h.keys())
        out[sub] = n
    out["folder_mb"] = round(sum(f.stat().st_size for f in Path(model_dir).rglob("*") if f.is_file()) / 2**20, 2)
    return out
