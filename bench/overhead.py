"""Steering overhead: the plain pipeline vs the same call steered on 5 layers, alternating runs, median ratio.

    python bench/overhead.py                        # tiny random pipeline on the CPU
    python bench/overhead.py --model assets/models/demo
    python bench/overhead.py --sd15-random --device cuda --dtype fp16 --batch 8   # SD1.5-sized, random weights

Writes one markdown row per run to stdout (and appends it to ``--append`` if given).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steer.denoisers import CONTEXT_SITE, default_layers, layer_channels
from steer.vectors import SteeringVector  # noqa: E402


def sd15_random_pipeline(device: str, dtype: torch.dtype):
    """SD1.5-sized UNet / VAE / CLIP-L text encoder from configs with random weights (same FLOPs, no download)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from steer.pipelines.stable_diffusion import SteeringStableDiffusionPipeline
    from steer.testing import clip_tokenizer

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = SteeringStableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe.to(device=device, dtype=dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="pipeline directory (default: tiny random pipeline)")
    ap.add_argument("--sd15-random", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--pairs", type=int, default=7, help="alternating plain/steered pairs (after one warm-up pair)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--append", default=None, help="append the result row to this markdown file")
    ap.add_argument("--site", choices=("paper", "text"), default="paper",
                    help="paper: 5 up-block resnets, uniform add on cond; text: the text-token site with the calibrated "
                    "default settings (split branch, token-norm units, norm preserved)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    if args.sd15_random:
        pipe, label = sd15_random_pipeline(args.device, dtype), "SD1.5-sized random"
    elif args.model:
        from steer.cli.loading import load_pipeline

        pipe, label = load_pipeline(args.model, args.device, dtype), Path(args.model).name
    else:
        from steer.testing import tiny_pipeline

        pipe, label = tiny_pipeline().to(args.device, dtype), "tiny random (1.1M UNet)"
    pipe.set_progress_bar_config(disable=True)
    layers = [CONTEXT_SITE] if args.site == "text" else default_layers(pipe.unet)
    channels = layer_channels(pipe.unet, layers)
    meta: dict = {"name": "random"}
    if args.site == "text":
        meta["recommended"] = {"layers": layers, "window": [0.0, 1.0], "branch": "split", "mode": "token", "preserve_norm": True}
    vec = SteeringVector({n: torch.randn(c) / c**0.5 for n, c in channels.items()}, meta)

    prompts = ["a red sneaker"] * args.batch
    kwargs = dict(num_inference_steps=args.steps, output_type="latent", height=args.height, width=args.height)

    def run(steered: bool) -> float:
        gen = [torch.Generator("cpu").manual_seed(i) for i in range(args.batch)]
        extra = dict(steering=vec, steering_scale=0.5, steering_window=(0.0, 1.0)) if steered else {}
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            pipe(prompts, generator=gen, **kwargs, **extra)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(False), run(True)  # warm-up
    ratios, plain_times, steer_times = [], [], []
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        t = {s: run(s) for s in order}
        plain_times.append(t[False])
        steer_times.append(t[True])
        ratios.append(t[True] / t[False])
    med = statistics.median(ratios)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    row = (
        f"| {label} | {device_name} | {args.dtype} | {args.batch} | {args.steps} | {args.site}: {len(layers)} | "
        f"{statistics.median(plain_times):.3f} s | {statistics.median(steer_times):.3f} s | {100 * (med - 1):+.2f} % |"
    )
    print("| model | device | dtype | batch | steps | layers | plain (median) | steered (median) | overhead (median of paired ratios) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(row)
    if args.append:
        with open(args.append, "a") as f:
            f.write(row + "\n")


if __name__ == "__main__":
    main()
