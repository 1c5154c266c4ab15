"""What `steer.learn.learn_direction` checks of its options and sets: each option given to a learning that does not use
it is a one-line `UnusedOptionError` before any sampling (named for the command line to spell as its flag), and two
sets that give the same representation have no direction to learn."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from steer.errors import UnusedOptionError
from steer.extract import FAST_WINDOW, pixel_digest

# Below this share of a layer's typical norm the two sets' difference is the same representation (float noise).
SAME_SETS = 1e-5
# The sampling options' values where a call gives none (None stands for "not given", so that one given to a learning
# that does not use it can be refused): the learning and calibration samples' steps and guidance, the share of the run
# the fast mode records, and the trajectory mode's step buckets.
LEARN_STEPS = 20
LEARN_GUIDANCE = 7.5
STEP_BUCKETS = 4
CALIBRATION_SAMPLES = 6  # seeds per set a calibration draws where the call gives none
_DEFAULTS: dict[str, Any] = {"num_samples": 16, "timestep": 10, "image_prompts": "", "num_inference_steps": LEARN_STEPS,
                             "guidance_scale": LEARN_GUIDANCE, "capture_window": FAST_WINDOW, "step_buckets": STEP_BUCKETS}
_USES = {  # what each option sets, and which learnings use it
    "num_samples": "how many images the sampling modes (reference, fast, trajectory) draw per set",
    "timestep": "the timestep the reference mode and image sets are read at",
    "image_prompts": "the prompt image sets are read with",
    "num_inference_steps": "the denoising steps of the learning and calibration samples",
    "guidance_scale": "the guidance of the learning and calibration samples",
    "capture_window": "the share of the run the fast mode records its samples over",
    "step_buckets": "how many step buckets the trajectory mode splits the run into (one direction each)",
}


def learning_options(mode: str, image_input: bool, options: dict[str, Any], call_kwargs: dict[str, Any],
                     calibrated: bool = True) -> dict[str, Any]:
    """``options`` (`_DEFAULTS`' names, None where not given) with their defaults, or a one-line UnusedOptionError for
    one given to a learning that does not use it, and for any of ``call_kwargs`` (``height``, ``negative_prompt``...)
    given with image sets, which are read, not sampled (``--num-samples 3`` to the text mode, ``--steps`` or
    ``--height`` with image sets learned the same file as without it).

    Args:
        mode: the learning's mode once resolved (image sets: ``"reference"``, the paper's extraction).
        image_input: whether the sets are images.
        options: ``num_samples``, ``timestep``, ``image_prompts``, ``num_inference_steps``, ``guidance_scale``,
            ``capture_window`` and ``step_buckets`` as the call gave them.
        call_kwargs: the keyword arguments the learning passes on to the pipeline's sampling calls.
        calibrated: whether the learning calibrates (the text mode samples nothing without it: it reads the prompts).
    """
    sampled = not image_input and (calibrated or mode != "text")
    used = {"num_samples": sampled and mode in ("trajectory", "reference", "fast"), "timestep": image_input or mode == "reference",
            "image_prompts": image_input, "num_inference_steps": sampled, "guidance_scale": sampled,
            "capture_window": sampled and mode == "fast", "step_buckets": sampled and mode == "trajectory"}
    what = "image sets" if image_input else f"mode={mode!r}" + ("" if sampled else " without calibration")
    why = "image sets are read, not sampled" if image_input else "the text mode reads the prompts themselves and samples nothing uncalibrated"
    for name, value in options.items():
        given = bool(value) if name == "image_prompts" else value is not None
        if given and not used[name]:
            unsampled = f", and {why}" if name in ("num_inference_steps", "guidance_scale") else ""
            raise UnusedOptionError(name, f"{name} does nothing for {what}: it sets {_USES[name]}{unsampled}")
    if not sampled:  # (the T5 families' max_sequence_length sets how prompts are encoded: used either way)
        for key, value in call_kwargs.items():
            if value is not None and not (key == "max_sequence_length" and not image_input):
                raise UnusedOptionError(key, f"{key} does nothing for {what}: it goes to the sampling calls of the "
                                             f"learning and calibration, and {why}")
    return {name: _DEFAULTS[name] if value is None else value for name, value in options.items()}


def image_prompt_sets(image_prompts: str | Sequence[str], positives: int, negatives: int) -> tuple[str | list[str], str | list[str]]:
    """The prompts each image set is read with: one string for every image, or a list of one per image of both sets,
    the positives' first, split per set; a list of another length is a one-line ValueError that says how many (it
    blamed the negative set: "got 1 prompts for 2 images")."""
    if isinstance(image_prompts, str):
        return image_prompts, image_prompts
    prompts = list(image_prompts)
    if len(prompts) != positives + negatives:
        wanted = f"{positives + negatives} ({positives} positive, then {negatives} negative)" if negatives else f"{positives}"
        raise ValueError(f"image_prompts has {len(prompts)} prompts: give one per image of both sets, {wanted}, or one "
                         "string to read every image with")
    return prompts[:positives], prompts[positives:]


def check_sets_differ(directions: dict[str, torch.Tensor], act_norm: dict[str, float], image_input: bool) -> None:
    """A one-line ValueError when the two sets gave the same representation at every layer: there is no direction
    (prompts that differ only past what the text encoder reads)."""
    relative = {n: float(d.norm()) / max(act_norm[n], 1e-12) for n, d in directions.items()}
    if max(relative.values()) > SAME_SETS:
        return
    where = next(iter(relative)) if len(relative) == 1 else f"every one of the {len(relative)} layers"
    check = "the images differ" if image_input else "the prompts differ within what the text encoder reads (77 tokens on CLIP)"
    raise ValueError(f"the positive and negative sets give the same representation at {where} (difference "
                     f"{max(relative.values()):.1e} of its typical norm): there is no direction to learn; check that {check}")


def check_images_differ(positive: Sequence[Any], negative: Sequence[Any]) -> None:
    """A one-line ValueError, before any encoding, when the two image sets hold the same images in the same proportions
    (in any order): their difference would come from the noise seeds alone (each set has its own), as large as that of
    two different sets, so there is no direction to learn (the prompt sets' check, `check_sets_differ`, for images)."""
    pos, neg = Counter(map(pixel_digest, positive)), Counter(map(pixel_digest, negative))
    if pos.keys() == neg.keys() and all(pos[k] * len(negative) == neg[k] * len(positive) for k in pos):
        raise ValueError("the positive and negative sets are the same images (the direction would come from their noise "
                         "seeds alone): there is no direction to learn; check that the images differ")
