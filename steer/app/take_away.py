"""The app's take-away: add one direction while removing what the prompt states along another ("a red dress" ->
bag: add to_bag, take away to_dress), the fit of its strength and window, and the note for a steered image that
came out dark. Gradio-free; re-exported by `steer.app.helpers`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from steer.app.base import LIMITS, ProgressFn, UserError, check_float, check_prompt
from steer.app.files import check_fits
from steer.take_away import ITSELF, pair_scales
from steer.vectors import SteeringVector


def take_away_amount(scale: float) -> float:
    """How much of the prompt's excess along the take-away direction a row at ``scale`` removes: ``scale`` up to 1
    (all of it), so the original (scale 0) is untouched and the strip moves both edits together."""
    return -pair_scales(scale)[1]


def take_away_scales(scales: Sequence[float]) -> list[list[float]]:
    """(rows, 2) scales of ``[direction, take-away]`` (`steer.take_away.pair_scales`, as the fit samples them);
    raises `UserError` for a negative scale (it would remove the direction too)."""
    if any(float(s) < 0 for s in scales):
        raise UserError("a take-away goes with a positive strength: it replaces what the prompt says by the direction")
    return [pair_scales(s) for s in scales]


def check_take_away(vector: SteeringVector | None, away: SteeringVector | None) -> None:
    """A take-away goes with a different direction to add; raises `UserError`."""
    if away is None:
        return
    if vector is None:
        raise UserError("pick a direction to add: the take-away removes what the prompt says against it")
    if away is vector or away.digest() == vector.digest():
        raise UserError(ITSELF)


def fit_take_away(pipe, vector: SteeringVector | None, away: SteeringVector | None, guidance: Any, strict: bool = True,
                  progress: ProgressFn | None = None, negative_prompt: str | None = None):
    """`steer.take_away.fit_take_away` for the app: the strength and window at which ``vector`` replaces what a prompt
    states along ``away``, at the Generate tab's guidance and negative prompt; raises `UserError` for what the user can fix."""
    if away is None:
        raise UserError("pick a take-away first: the fit is for adding one direction while taking another away")
    check_take_away(vector, away)
    for v in (vector, away):
        check_fits(v, pipe, strict)
    if progress is not None:
        progress(0.0, "fitting the take-away (a few small samplings)")
    guidance = check_float(guidance, "guidance", 0.0, LIMITS.max_guidance)
    negative = check_prompt(negative_prompt, "negative prompt", required=False)
    with warnings.catch_warnings():  # the fit's advice goes into the page's note (fit.advice()), not the server log
        warnings.simplefilter("ignore", UserWarning)
        return pipe.fit_take_away(vector, away, guidance_scale=guidance, **({"negative_prompt": negative} if negative else {}))


DARKENED = 0.3  # steered mean brightness below this share of the original's: the edit and the prompt cancel


def darkening_note(original: Image.Image, steered: Image.Image) -> str:
    """A Markdown note when the steered image came out much darker than the original from the same seed (a direction
    fighting what the prompt states goes through a near-black band before it wins: docs/steering.md), else ""."""
    before, after = (float(np.asarray(im.convert("L"), dtype=np.float32).mean()) for im in (original, steered))
    if before < 8.0 or after >= DARKENED * before:
        return ""
    return (
        f"\n\n**Note:** the steered image is much darker than the original (mean brightness {after:.0f} vs "
        f"{before:.0f} of 255): the edit and what the prompt states cancel. Raise the strength, or take away what "
        "the prompt says against the edit (Take away)."
    )
