"""What the text-site steering does at each denoiser call: torch operators run and host time spent inside the steering
hooks, with the steered text tokens reused across the calls of a run (the default) and steered at every call.

On a GPU the operators are kernel launches, and their host time is not hidden: diffusers' DDIM step reads a device
value back at every step (``if prev_timestep >= 0``), so each denoiser call starts with an idle device. The real-size
overhead is measured by ``bench/overhead.py`` on a lent GPU (docs/benchmarks.md); this counts the work itself.

    python bench/text_hook_cost.py                  # SD1.5 text shapes (a tiny UNet reading 77 x 768 tokens), batch 8
    python bench/text_hook_cost.py --steps 50 --batch 8

Writes one markdown row per configuration: the operators the hooks ran over one pipeline call, and the median host\ntime of one hook call (most calls reuse the steered tokens, so the median is a reusing call).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steer.denoisers import CONTEXT_SITE, layer_channels  # noqa: E402
from steer.engine import steering  # noqa: E402
from steer.vectors import SteeringVector  # noqa: E402


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def sd15_text_pipeline():
    """A steering SD pipeline with a small UNet that reads SD1.5's text tokens (77 x 768) and no text encoder."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from steer.pipelines.factory import steering_class

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, cross_attention_dim=768,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        latent_channels=4, norm_num_groups=8)
    ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    cls = steering_class("StableDiffusionPipeline")
    pipe = cls(vae=vae, unet=unet, scheduler=ddim, text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="pipeline calls timed per configuration (median over their hook calls)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = sd15_text_pipeline()
    channels = layer_channels(pipe.unet, [CONTEXT_SITE])
    g = torch.Generator().manual_seed(0)
    meta = {"name": "random", "recommended": {"layers": [CONTEXT_SITE], "window": [0.0, 1.0], "branch": "split", "mode": "token",
                                              "preserve_norm": True}}
    v = SteeringVector({n: torch.randn(c, generator=g) / c**0.5 for n, c in channels.items()}, meta)
    w = SteeringVector({n: torch.randn(c, generator=g) / c**0.5 for n, c in channels.items()},
                       {**meta, "reference_level": {CONTEXT_SITE: [0.0] * 77}})
    configs = {
        "text": dict(steering=v, steering_scale=0.5),
        "text + take-away": dict(steering=[v, w], steering_scale=[0.5, -1.0], steering_negative="remove"),
        "text read by the layout blocks + take-away": dict(steering=[v, w], steering_scale=[0.5, -1.0], steering_negative="remove",
                                                           steering_readers="layout"),
    }
    embeds = torch.randn(args.batch, 77, 768, generator=g)
    negative = torch.randn(args.batch, 77, 768, generator=g)
    print(f"| steered | reused: ops per run / median host ms per call | every call: ops per run / median host ms per call | "
          f"{args.batch} images, {args.steps} DDIM steps, CFG, x86_64 CPU, {args.threads} thread(s) |")
    print("|---|---|---|---|")
    real = steering.SteeringSession.steered
    for label, steer in configs.items():
        cells = []
        for reuse in (True, False):
            ops, times = [], []

            def counted(self, plan, h, ops=ops):
                with CountOps() as counter:
                    out = real(self, plan, h)
                ops.append(counter.ops)
                return out

            def timed(self, plan, h, times=times):
                t0 = time.perf_counter()
                out = real(self, plan, h)
                times.append(time.perf_counter() - t0)
                return out

            for wrapper in [counted] + [timed] * args.repeats:  # operators counted once, host time apart (no counter)
                with contextlib.ExitStack() as stack, torch.no_grad():
                    stack.enter_context(mock.patch.object(steering.SteeringSession, "steered", wrapper))
                    if not reuse:  # steered at every call
                        stack.enter_context(mock.patch.object(steering.SteeringSession, "_text_reuse_key", lambda *a: None))
                    pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=args.steps, guidance_scale=5.0,
                         output_type="latent", generator=torch.Generator().manual_seed(1), steering_window=(0.0, 1.0), **steer)
            cells.append(f"{sum(ops)} / {1000 * statistics.median(times):.3f}")
        print(f"| {label} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
