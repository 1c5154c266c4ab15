"""Fitting an edit's scale: how strongly a direction must push to edit a given image as far as its own prompts do.

A direction's calibrated full edit (`steer.calibrate`, ``steering_scale=1.0``) is measured on samples drawn from
noise, where nothing in the image argues against the attribute. Editing a given image (image-to-image at a
``strength`` below 1) starts from the image's own latents, whose colour or shape fights the edit: on the demo model the
bundled colour directions reach at 1.0 about 70 % of the success the prompt rewrite reaches ("a sneaker" steered
toward orange against "an orange sneaker", both editing a yellow sneaker; `bench/image_edit.py`).

`fit_edit` asks the model, as the calibration does, using only the direction's own prompts: images of its negative
prompts ("a t-shirt", "a red item") are drawn, then edited at ``strength`` twice over: with the paired positive prompt
("a blue t-shirt", "a red bag"), unsteered, as the target, and with the negative prompt steered at each strength of a
grid. The scale whose edits come closest to the target's (latent L2, relative to the unsteered edits') is the fit,
floored at the direction's calibrated full edit (1.0 by default): a given image argues against the edit, so it takes
at least the push that edits samples drawn from noise. The floor was adopted on a rule fixed before a replication run
(`bench/image_edit.py` on fresh seeds: the floored fit passed more targets than both 1.0 and the plain fit, at
strengths 0.6 and 0.8; docs/steering.md, "Editing a given image"); ``floor=None`` gives the closest scale as it is.
Cost: ``num_samples`` images from noise plus ``(2 + len(grid)) * num_samples`` edits (target, unsteered, grid) of
``int(strength * steps)`` steps, with CFG: 2,624 UNet rows at the defaults and strength 0.8.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steer.calibrate import POOR_DISTANCE, check_grid, curve_minimum, rows_per_sample, sample_latents
from steer.config import outside_steering_blocks
from steer.images import edit_steps
from steer.take_away import MAX_SAMPLES, recorded_prompts
from steer.validation import MAX_SCALE, MAX_STEPS, check_call_kwargs, check_int, check_number

GRID = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass
class EditFit:
    """The outcome of `fit_edit`: edit with ``steering_scale=fit.scale`` at ``strength=fit.strength``."""

    scale: float  # what to edit with: the closest scale, at least the floor
    strength: float
    distance: float  # at the closest scale, relative to the unsteered edits (1 = no closer to the positive prompts' edits)
    converged: bool
    grid: list[float]
    distances: list[float]  # along the grid
    prompts: list[tuple[str, str]]  # (source, target) prompt pairs that were edited
    unet_rows: int
    closest: float = 0.0  # the scale whose edits came closest, before the floor

    def advice(self) -> str | None:
        """One line when the fit itself says the edit may fall short: its edits stay far from the target's (relative
        distance above `steer.calibrate.POOR_DISTANCE`), or its best scale is the top of the grid (more may be closer)."""
        if not self.converged:
            return None  # fit_edit warned already
        if self.distance > POOR_DISTANCE:
            return (f"edit fit: at scale {self.scale:.2f} the edits come only to {self.distance:.2f} of their unsteered distance "
                    f"from the positive prompts' edits (above {POOR_DISTANCE}): this direction may barely edit images at "
                    f"strength {self.strength:g}")
        if self.closest >= self.grid[-1]:
            return (f"edit fit: the closest scale is the grid's largest ({self.grid[-1]:g}); a stronger push may come closer "
                    "(pass a longer grid=)")
        return None


def _word_overlap(a: str, b: str) -> float:
    x, y = set(a.lower().split()), set(b.lower().split())
    return len(x & y) / max(len(x | y), 1)


def paired_prompts(vector, num_samples: int) -> list[tuple[str, str]]:
    """``num_samples`` (negative, positive) prompt pairs from a direction's recorded prompts: the negatives cycled, each
    with the positive that shares the most words with it ("a t-shirt" -> "a blue t-shirt"; the first on a tie), so
    lists given in any order pair up."""
    negatives, positives = recorded_prompts(vector, "negative", "an edit"), recorded_prompts(vector, "positive", "an edit")
    sources = [negatives[i % len(negatives)] for i in range(num_samples)]
    return [(n, max(positives, key=lambda p, n=n: _word_overlap(n, p))) for n in sources]


@torch.no_grad()
@outside_steering_blocks
def fit_edit(
    text_pipe,
    edit_pipe,
    vector,
    *,
    strength: float,
    num_samples: int = 8,
    grid: Sequence[float] = GRID,
    seed: int = 0,
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    batch_size: int | None = 8,
    floor: float | None = 1.0,
    **call_kwargs: Any,
) -> EditFit:
    """Fit the scale at which ``vector`` edits images at ``strength`` as far as its own positive prompts do.

    Args:
        text_pipe: the model's text-to-image steering pipeline (draws the images to edit).
        edit_pipe: its image-to-image steering pipeline (``steer.pipelines.factory.editing_pipeline``).
        vector: a direction learned from prompts ("a blue t-shirt" vs "a t-shirt").
        strength: the edit's strength, in (0, 1]; num_samples: images (negative prompts cycled, seeds from ``seed``);
        grid: the scales tried, ascending.
        num_inference_steps, guidance_scale: sampling settings (use those you edit with); ``call_kwargs`` go to every
            call (``height=``, ``steering_window=``...).
        batch_size: at most this many images per call (None: one call per set); the fit is the same.
        floor: the smallest scale the fit returns (the calibrated full edit, 1.0); None: the closest scale as it is.
    """
    grid = check_grid(grid, "the edit grid")
    check_int(num_samples, "num_samples", 1, MAX_SAMPLES, optional=False)
    check_int(num_inference_steps, "num_inference_steps", 1, MAX_STEPS, optional=False)
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise TypeError(f"strength must be a number in (0, 1], got {type(strength).__name__}")
    if not 0 < strength <= 1 or edit_steps(strength, num_inference_steps) < 1:
        raise ValueError(f"strength {strength:g} of {num_inference_steps} steps runs no step")
    check_number(floor, "floor", 0.0, MAX_SCALE)  # floor=inf came back as the fitted scale
    fixed = sorted(k for k in ("steering", "steering_scale", "image", "strength") if k in call_kwargs)
    if fixed:
        raise ValueError(f"fit_edit sets {', '.join(fixed)} itself")
    check_call_kwargs(text_pipe, call_kwargs, fit_edit, sets=("mask_image",))  # both take every other name
    pairs = paired_prompts(vector, num_samples)
    seeds = [seed + i for i in range(num_samples)]
    kw = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, batch_size=batch_size)
    sizes = {k: call_kwargs[k] for k in ("height", "width") if call_kwargs.get(k) is not None}
    images = sample_latents(text_pipe, [n for n, _ in pairs], seeds, raw=True, **kw, **sizes)  # the images to edit
    edit_kw = {k: v for k, v in call_kwargs.items() if k not in ("height", "width")}  # an edit runs at its image's size

    def edits(prompts: list[str], copies: int = 1, **steering: Any) -> torch.Tensor:
        return sample_latents(edit_pipe, prompts * copies, seeds * copies, image=torch.cat([images] * copies), strength=strength,
                              **kw, **edit_kw, **steering)

    target = edits([p for _, p in pairs])
    start = float((edits([n for n, _ in pairs]) - target).norm(dim=1).mean().clamp_min(1e-6))
    steered = edits([n for n, _ in pairs], len(grid), steering=vector, steering_scale=[g for g in grid for _ in seeds])
    curve = [float((z - target).norm(dim=1).mean()) / start for z in steered.reshape(len(grid), num_samples, -1)]
    closest, distance = curve_minimum([0.0, *grid], [1.0, *curve])
    converged = closest > 0
    if not converged:
        warnings.warn(f"edit fit: no scale in {grid} brought {vector.name!r}'s edits closer to its positive prompts' edits; using 1.0",
                      stacklevel=2)
    scale = max(closest, floor) if floor is not None and converged else closest if converged else 1.0
    rows = (num_inference_steps + (2 + len(grid)) * edit_steps(strength, num_inference_steps)) * num_samples * rows_per_sample(edit_pipe, guidance_scale=guidance_scale)
    fit = EditFit(scale, strength, distance, converged, grid, curve, pairs, rows, closest)
    advice = fit.advice()
    if advice:
        warnings.warn(advice, stacklevel=2)
    return fit
