"""Steering overhead: the plain pipeline vs the same call steered at the family's default layers, alternating runs,
median ratio.

    python bench/overhead.py                        # tiny random SD pipeline on the CPU
    python bench/overhead.py --family sdxl          # tiny random pipeline of another family (sd sdxl sd3 pixart flux)
    python bench/overhead.py --model assets/models/demo
    python bench/overhead.py --family sdxl --random-weights --device cuda --dtype fp16 --batch 4   # real size
    python bench/overhead.py --sd15-random --device cuda --dtype fp16 --batch 8   # = --family sd --random-weights
    python bench/overhead.py --sd15-random --site text --readers layout ...       # text read by the layout blocks only
    python bench/overhead.py --sd15-random --site text --take-away [--compile] ...  # add one direction, remove another
    python bench/overhead.py --sd15-random --site text --mixed-branches ...  # two directions, each on its own CFG branch

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

from family_pipelines import FAMILIES, real_call_kwargs, real_size, tiny, tiny_call_kwargs  # noqa: E402

from steer.denoisers import CONTEXT_SITE, default_layers, denoiser_of, layer_channels  # noqa: E402
from steer.vectors import SteeringVector  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="pipeline directory (default: tiny random pipeline)")
    ap.add_argument("--family", choices=FAMILIES, default="sd", help="denoiser family (default sd)")
    ap.add_argument("--random-weights", action="store_true", help="the family's denoiser at real size, random weights")
    ap.add_argument("--sd15-random", action="store_true", help="same as --family sd --random-weights")
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
    ap.add_argument("--readers", default=None, help="with --site text: which cross-attentions read the steered tokens "
                    "(layout, detail, all; UNet families)")
    ap.add_argument("--take-away", action="store_true", help="with --site text: steer [v, w] at [0.5, -1] with "
                    "steering_negative='remove' (the contradicting-prompt recipe: add one direction, remove another)")
    ap.add_argument("--mixed-branches", action="store_true", help="with --site text: steer [v, w] at [0.5, 0.5], v "
                    "recording the split branch and w the conditional one (a slider beside a one-sided direction)")
    ap.add_argument("--inference-mode", action="store_true", help="call the pipeline under torch.inference_mode() (the runs "
                    "before 2026-12-04 did); default torch.no_grad(), as the pipeline itself runs: inference tensors keep no "
                    "version counter, so the steered text tokens are not reused across the run's denoiser calls under it")
    ap.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                    help="pipe.compile_unet(backend=...) first (plain and steered runs both compiled)")
    args = ap.parse_args()
    if (args.readers or args.take_away or args.mixed_branches) and args.site != "text":
        ap.error("--readers, --take-away and --mixed-branches need --site text")
    if args.take_away and args.mixed_branches:
        ap.error("choose one of --take-away and --mixed-branches")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    if args.sd15_random:
        args.family, args.random_weights = "sd", True
    call: dict = {}
    if args.random_weights:
        pipe = real_size(args.family, args.device, dtype)
        label = f"{args.family} real-size random"
        call = real_call_kwargs(args.family, args.batch, args.device, dtype)
    elif args.model:
        from steer.cli.loading import load_pipeline

        pipe, label = load_pipeline(args.model, args.device, dtype), Path(args.model).name
    else:
        pipe = tiny(args.family).to(args.device, dtype)
        label, call = f"{args.family} tiny random", tiny_call_kwargs(args.family)
    pipe.set_progress_bar_config(disable=True)
    denoiser = denoiser_of(pipe)
    layers = [CONTEXT_SITE] if args.site == "text" else default_layers(denoiser)
    channels = layer_channels(denoiser, layers)
    meta: dict = {"name": "random"}
    if args.site == "text":
        meta["recommended"] = {"layers": layers, "window": [0.0, 1.0], "branch": "split", "mode": "token", "preserve_norm": True}
        if args.readers:
            meta["recommended"]["readers"] = [args.readers]
    vec = SteeringVector({n: torch.randn(c) / c**0.5 for n, c in channels.items()}, meta)
    steering: dict = dict(steering=vec, steering_scale=0.5, steering_window=(0.0, 1.0))
    if args.take_away:  # removal measured against a level per text position (every position above 0 is taken back)
        if "prompt_embeds" in call:  # real size: no tokenizer, the text positions are the random embeddings'
            tokens = call["prompt_embeds"].shape[1]
        else:
            tokens = pipe.steering_text_embeddings(["a red sneaker"]).shape[1]
        away = SteeringVector({n: torch.randn(c) / c**0.5 for n, c in channels.items()}, {**meta, "reference_level": {CONTEXT_SITE: [0.0] * tokens}})
        steering = dict(steering=[vec, away], steering_scale=[0.5, -1.0], steering_window=(0.0, 1.0), steering_negative="remove")
    if args.mixed_branches:  # each column of the scales laid out for its own branch (steer.config.recorded_branches)
        one_sided = {**meta, "recommended": {**meta["recommended"], "branch": "cond"}}
        other = SteeringVector({n: torch.randn(c) / c**0.5 for n, c in channels.items()}, one_sided)
        steering = dict(steering=[vec, other], steering_scale=[0.5, 0.5], steering_window=(0.0, 1.0))
    if args.compile:
        pipe.compile_unet(backend=args.compile)

    prompts = None if "prompt_embeds" in call else ["a red sneaker"] * args.batch
    kwargs = dict(num_inference_steps=args.steps, output_type="latent", **call)
    if args.height:
        kwargs.update(height=args.height, width=args.height)

    def run(steered: bool) -> float:
        gen = [torch.Generator("cpu").manual_seed(i) for i in range(args.batch)]
        extra = steering if steered else {}
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode() if args.inference_mode else torch.no_grad():
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
    site = f"{args.site} (read by {args.readers})" if args.readers else f"{args.site}: {len(layers)}"
    site += " + take-away" if args.take_away else ""
    site += " + a second direction on the other branch" if args.mixed_branches else ""
    site += f", compiled ({args.compile})" if args.compile else ""
    site += ", inference mode" if args.inference_mode else ""
    row = (
        f"| {label} | {device_name} | {args.dtype} | {args.batch} | {args.steps} | {site} | "
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
