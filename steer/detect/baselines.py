"""Baseline memorization detectors from the literature, for side-by-side benchmarks.

Wen et al. 2024 ("Detecting, Explaining, and Mitigating Memorization in Diffusion Models", ICLR 2024): the
magnitude of the text-conditional noise prediction, ``||eps(x_t, c) - eps(x_t, 0)||_2`` averaged over the first
``k`` denoising steps. High = memorized. With classifier-free guidance both terms are the two halves of the UNet
batch the pipeline computes anyway, so `NoiseDifferenceRecorder` reads them during a normal call at zero extra
cost; the literature counts the score as 2 UNet evaluations per step (what a standalone check of ``k`` steps,
`wen_scores`, runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from steer.denoisers import denoiser_use, main_tensor, unwrap
from steer.engine import DenoiserRun


class NoiseDifferenceRecorder(DenoiserRun):
    """Records ``||eps_cond - eps_uncond||_2`` per image at every UNet call of a CFG run (this context only).

    ``records`` is a list of (images,) tensors, one per step. Calls without CFG (odd or un-guided batches) are
    skipped. The UNet batch is diffusers' ``[uncond, cond]``.
    """

    def __init__(self, unet: torch.nn.Module, cfg: bool | Any = True):
        super().__init__(unwrap(unet), None, cfg)
        self.records: list[torch.Tensor] = []

    def _register(self) -> None:
        self._handles.append(self.unet.register_forward_hook(self._hook))

    def _hook(self, _module: torch.nn.Module, _args: Any, output: Any) -> None:
        if not self.mine() or not self.cfg:
            return
        eps = main_tensor(output).detach().float()
        if eps.shape[0] % 2:
            return
        uncond, cond = eps.chunk(2)
        self.records.append((cond - uncond).flatten(1).norm(dim=1).cpu())

    def scores(self, k: int | None = None) -> torch.Tensor:
        """Mean over the first ``k`` recorded steps (all when None), one value per image."""
        if not self.records:
            raise RuntimeError("no guided UNet calls were recorded (guidance_scale must be > 1)")
        steps = self.records if k is None else self.records[:k]
        return torch.stack(steps).mean(0)

    def step_scores(self) -> torch.Tensor:
        """(steps, images) per-step norms."""
        return torch.stack(self.records)


def _stop_after(k: int):
    def callback(pipe, i: int, _t: Any, kwargs: dict) -> dict:
        if i + 1 >= k:
            pipe._interrupt = True  # diffusers skips the remaining steps without calling the UNet
        return kwargs

    return callback


@torch.no_grad()
def wen_scores(
    pipe,
    prompts: str | Sequence[str],
    k: int = 1,
    *,
    generator: torch.Generator | list[torch.Generator] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    **call_kwargs: Any,
) -> torch.Tensor:
    """Wen et al.'s score for each prompt: run only the first ``k`` steps (2k UNet evaluations), no decoding.

    ``num_inference_steps`` sets the schedule the first ``k`` steps are taken from (the same timesteps a full
    generation would use). Returns (images,) floats, higher = more memorized.
    """
    if guidance_scale <= 1:
        raise ValueError("Wen et al.'s score needs classifier-free guidance (guidance_scale > 1)")
    if not 1 <= k <= num_inference_steps:
        raise ValueError(f"k must be in [1, num_inference_steps={num_inference_steps}], got {k}")
    from diffusers import StableDiffusionPipeline

    call_pipe = pipe._call_copy() if hasattr(pipe, "_call_copy") else pipe  # keeps loop state off a shared pipe
    recorder = NoiseDifferenceRecorder(pipe.unet, cfg=True)
    with denoiser_use(call_pipe, eager=True) as run, recorder:  # a compiled graph would not run the recorder's hook
        StableDiffusionPipeline.__call__(
            run,
            [prompts] if isinstance(prompts, str) else list(prompts),
            generator=generator,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            output_type="latent",
            callback_on_step_end=_stop_after(k),
            **call_kwargs,
        )
    if len(recorder.records) != k:
        raise RuntimeError(f"expected {k} guided UNet calls, recorded {len(recorder.records)}")
    return recorder.scores(k)
