"""Learning steering vectors training-free: forward passes only.

The default (``preset="text"``) reads the conditioning tokens themselves (no denoiser pass) and calibrates the result
(`steer.calibrate`). The other modes pool denoiser activations of the two sets (`steer.extract`): ``images`` (the
paper's extraction), ``reference`` (generate, then extract as for images), ``fast`` (recorded while sampling) and
``trajectory`` (every step of paired runs, per step bucket).

Aggregation: ``"mean"`` (the paper: mean of the positive set), ``"mean_diff"`` (positive − negative) or ``"pca"``
(first principal direction of paired differences, signed toward the positive set, scaled to their mean projection).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from steer.calibrate import (
    LAYOUT_EDIT_BELOW,
    NEGATIVE_PROMPTS,
    calibrate_windows,
    calibration_sets,
    check_grid,
)
from steer.calibrate import calibrate as run_calibration
from steer.config import BRANCHES, PAPER_WINDOW, SteeringConfig, check_window, outside_steering_blocks
from steer.denoisers import (
    CONTEXT_SITE,
    adapter_for,
    cross_attention_sites,
    default_layers,
    denoiser_of,
    resolve_layers,
    text_readers,
)
from steer.errors import UnusedOptionError
from steer.extract import (
    IMAGE_SUFFIXES,
    _as_items,
    extract_during_sampling,
    extract_from_images,
    extract_trajectories,
    generate_samples,
    is_image_item,
)
from steer.learn_checks import (
    CALIBRATION_SAMPLES,
    LEARN_GUIDANCE,
    LEARN_STEPS,
    check_images_differ,
    check_sets_differ,
    image_prompt_sets,
    learning_options,
)
from steer.samplers import sampler_name
from steer.take_away import FIT_STEPS, fit_take_away
from steer.text_tokens import encode_text, reference_level, shared_lead
from steer.validation import MAX_CALIBRATION_SAMPLES, MAX_STEPS, check_call_kwargs, check_int, short
from steer.vectors import SteeringVector, unet_fingerprint
from steer.window_choice import window_choice_record
from steer.wording import open_prompts, stated_phrases

Method = Literal["mean", "mean_diff", "pca"]
METHODS = ("mean", "mean_diff", "pca")
# said when prompts come without negatives (text / trajectory modes): nothing to take a difference from or calibrate on
UNCALIBRATED_ADVICE = ("no negative prompts, so the direction is the positives' own mean, not a difference, and is not "
                       "calibrated: steering_scale=1.0 adds a whole token norm and can wash the image out; pass the same "
                       "prompts without the attribute as negative (\"a bag\" for \"a blue bag\") for a calibrated edit")
# said when a direction is learned from image sets (bench/image_sets.py; docs/steering.md, "Learning from images")
IMAGE_SET_ADVICE = ("learned from images, so uncalibrated, and not known to move generations toward the positive images: "
                    "on the demo model it pushes colour the other way at the default resnet sites and the block outputs, "
                    "and at the cross-attention outputs every colour pair gives one direction; learn from prompts that "
                    "describe the two sets (the default), or try this one at both signs before using it")

# ----------------------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------------------
def aggregate(positive: torch.Tensor, negative: torch.Tensor | None, method: Method) -> torch.Tensor:
    """Combine pooled representations (N, C) of the two sets into one direction (C,)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    pos = positive.double()
    if method == "mean":
        return pos.mean(0).float()
    if negative is None or len(negative) == 0:
        raise ValueError(f"method={method!r} needs a negative set; pass negative=... or use method='mean' (the paper)")
    neg = negative.double()
    diff_of_means = pos.mean(0) - neg.mean(0)
    if method == "mean_diff":
        return diff_of_means.float()
    n = min(len(pos), len(neg))
    if n < 2:
        raise ValueError("method='pca' needs at least 2 paired samples per set")
    diffs = pos[:n] - neg[:n]
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    pc = vh[0]
    if torch.dot(pc, diff_of_means) < 0:
        pc = -pc
    return (pc * (diffs @ pc).mean()).float()


# ----------------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------------
def _describe(items: list) -> dict[str, Any]:
    if items and isinstance(items[0], str) and not is_image_item(items[0]):
        return {"prompts": list(dict.fromkeys(items))}
    return {"images": len(items)}


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's recipe (Zhang et al. 2026): mean of the positive set's reference samples at the up-block resnets,
    # added on the conditional branch over (0.45, 0.95) of the run, no calibration.
    "paper": {"method": "mean", "mode": "reference", "layers": None, "calibrate": False, "window": PAPER_WINDOW},
    # CASteer's recipe: per-step pos - neg differences of the cross-attention outputs along paired trajectories.
    "casteer": {"method": "mean_diff", "mode": "trajectory", "layers": "attn2", "calibrate": True, "window": (0.0, 1.0)},
    # The default: the text tokens the cross-attentions read, steered on the conditional CFG half, calibrated, over the window the
    # calibration chooses ("choose_window": the first half or the whole run; (0, 0.5) uncalibrated), read by the
    # layout blocks only where the model's own prompt edit moves the layout (readers="auto").
    "text": {"method": "mean_diff", "mode": "text", "layers": [CONTEXT_SITE], "calibrate": True, "window": (0.0, 0.5), "readers": "auto",
             "choose_window": True},
}
MODES = ("text", "trajectory", "reference", "fast")
# window="auto": the calibration tries each and keeps the one where the direction best reproduces the prompt edit
# (early for most edits; the whole run where the late steps carry the attribute too: bench/window_choice_screen.py)
AUTO_WINDOWS = ((0.0, 0.5), (0.0, 1.0))
# How a calibrated direction is applied (recorded as its recommended settings): on the conditional CFG half only (the
# "split" push, the default until 2026-12-04, darkened colours and drew neighbouring classes; docs/steering.md, "The
# conditional branch only"). CASteer's recipe and two-sided sliders keep the split their benchmarks were measured with.
CALIBRATED_SETTINGS = {"branch": "cond", "mode": "token", "preserve_norm": True, "normalize": False, "scale": 1.0}
TRAJECTORY_BRANCH = SLIDER_BRANCH = "split"


def _check_flags(**flags: Any) -> None:
    """Yes/no options are booleans (or None): ``calibrate="no"`` calibrated."""
    for name, flag in flags.items():
        if flag is not None and not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {short(flag)}")


@outside_steering_blocks
def learn_direction(
    pipe,
    positive: Any,
    negative: Any = None,
    *,
    preset: str | None = None,
    layers: str | Sequence[str] | None = None,
    method: Method | None = None,
    mode: str | None = None,
    calibrate: bool | None = None,
    window: tuple[float, float] | str | None = None,
    readers: str | Sequence[str] | None = None,
    branch: str | None = None,
    num_samples: int | None = None,
    batch_size: int = 8,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    timestep: int | None = None,
    image_prompts: str | Sequence[str] | None = None,
    capture_window: tuple[float, float] | None = None,
    step_buckets: int | None = None,
    calibration_samples: int | None = None,
    calibration_grid: Sequence[float] | None = None,
    seed: int = 0,
    name: str | None = None,
    progress: bool | Callable[[float, str], None] = True,
    two_sided: bool = False,
    flip_stated: bool = True,
    **call_kwargs: Any,
) -> SteeringVector:
    """Learn a `SteeringVector` from two prompt sets or two image sets, with forward passes only.

    The default (``preset="text"`` for prompts) learns where the text enters the denoiser: the difference of the
    positive and negative prompts' conditioning tokens, added on the conditional CFG half in units of each token's
    norm with norms preserved, and *calibrates* its strength and window
    from the model's own samples (`steer.calibrate`), so ``steering_scale=1.0`` is the full edit and 0 -> 1 is monotone.
    The chosen settings are recorded in ``metadata["recommended"]`` and every call uses them unless told otherwise.

    Args:
        pipe: a `SteeringStableDiffusionPipeline` (or any SD pipeline with the same components).
        positive: a prompt, a list of prompts, or a list of images (PIL, tensors in [0, 1], or paths).
        negative: the same kind as ``positive``. For prompts, best the same prompts with the attribute left open
            ("a sneaker" for "a blue sneaker"): contrasting with other values of it ("a red sneaker") edits far less
            with the text preset, and its calibration warns (docs/steering.md). Required except for ``method="mean"``.
        preset: ``"text"`` (default for prompts), ``"casteer"`` (per-step cross-attention output differences along
            paired same-seed trajectories, calibrated) or ``"paper"`` (Zhang et al.: mean of the positive set's
            reference samples at the up-block resnets, uncalibrated). Explicit arguments override the preset.
        layers: sites (module paths, globs, ``"attn2"`` for every cross-attention output, or
            ``"encoder_hidden_states"`` for the text tokens).
        method: ``"mean"``, ``"mean_diff"`` or ``"pca"`` (how the two sets' representations combine).
        mode: ``"text"``, ``"trajectory"``, ``"reference"`` (generate, re-encode, one pass at ``timestep``) or
            ``"fast"`` (record while sampling); images always use the paper's extraction.
        calibrate: choose the strength from model-internal signals (default: on for the text and casteer presets).
        window: the share of the denoising run the direction acts over, recorded as its recommended window and used
            by the calibration (default: the preset's). ``"auto"`` (the text preset's default when it calibrates;
            ``(0, 0.5)`` when it does not) calibrates over each of `AUTO_WINDOWS` and keeps the one whose samples
            come closest to the positives' own (by mean colour for an appearance edit that ``readers="auto"`` sends to
            every reader; recorded in ``metadata["window_choice"]``). The two runs share their
            first half on DDIM, Euler discrete and ancestral, flow-matching Euler, DPM-Solver, UniPC, DEIS and PNDM, so
            the choice costs a plain calibration's 8 sample sets (10 on other schedulers; `steer.calibrate.calibrate_windows`).
        readers: text directions: which cross-attentions read the steered tokens (`SteeringConfig.readers`:
            ``"all"``, ``"layout"`` for the down and mid blocks', which keeps the prompt's colour under object/class
            edits, ``"detail"``, or attn2 paths / globs); recorded as recommended, and the calibration runs through
            it. ``"auto"`` (the text preset's default; UNet denoisers, else all): ``"layout"`` where the model's own
            prompt edit moves the layout, else all, at no extra cost (`steer.appearance.structure_kept`, recorded in
            ``metadata["route_choice"]``). None: the preset's.
        branch: the half of the CFG batch the direction steers (`SteeringConfig.branch`), recorded as recommended; the
            calibration runs with it. Default: ``"cond"`` (the conditional half), ``"split"`` for two-sided sliders
            and ``preset="casteer"``, whose benchmarks were measured that way (docs/steering.md, "The conditional
            branch only").
        num_samples: samples per set for the sampling modes (paired seeds in trajectory mode); default 16.
        timestep: the timestep the reference mode and image sets are read at (default 10, the paper's).
        image_prompts: the prompt image sets are read with: one string for every image (default "": none), or one
            per image of both sets, the positives' first.
        num_inference_steps: the denoising steps of every learning and calibration sample (default 20).
        guidance_scale: the guidance of every learning and calibration sample (default 7.5).
        capture_window: fast mode: the share of the run its samples are recorded over (default (0.8, 1.0)).
        step_buckets: trajectory mode: how many step buckets the run is split into (one direction per bucket; default 4).
            Each option from ``num_samples`` to here, and each of ``call_kwargs`` with image sets (which are read, not
            sampled) or with the text mode uncalibrated (which samples nothing; ``max_sequence_length`` excepted, it
            sets how the prompts are encoded), given to a learning that does not use it (``num_samples`` to the text
            mode, which reads the prompts themselves) is a one-line `steer.errors.UnusedOptionError` (a ValueError):
            it would change nothing.
        calibration_samples: seeds per set used by the calibration (default 6; refused without calibration).
        calibration_grid: the strengths the calibration tries, ascending (default `steer.calibrate.DEFAULT_GRID`;
            refused without calibration).
        batch_size: at most this many images per sampling or encoding call, in learning and calibration alike (it
            bounds the memory: lower it when a large model runs out of it); every image has its own seed.
        seed, name, progress: as their names say; ``call_kwargs`` go to the sampling calls. ``negative_prompt="..."``
            (one string) samples every learning and calibration image with it, so the strength is calibrated for
            generating with it (recorded in ``metadata["sampling"]``); docs/steering.md, "Calibrating for how the user
            generates", measures what that changes.
        two_sided: learn a slider between two attributes, for prompt sets whose negatives state one of their own ("a
            blue sneaker" vs "a red sneaker", "an old man" vs "a young man"): each side is learned and calibrated
            against the prompts with the attribute left open ("a sneaker", "a man"), and the direction carries the
            negatives' side as its `SteeringVector.opposite`, so +1 is the full edit toward the positives, -1 toward
            the negatives, and 0 the open prompt's own image. Each side keeps the window its calibration chose; both use
            one route (the positive side's: a side that chose another is calibrated again on it). Twice a one-sided
            direction's cost (three times where a side is calibrated again), and the flips' fits (``flip_stated``):
            18 s against 4.4 s one-sided for a colour pair on the demo model and a 2-core CPU.
        flip_stated: with ``two_sided``, also fit per side the strength and window at which it replaces a prompt's
            statement of the other side ("a red t-shirt" slid toward blue: the side added, the other taken away;
            `steer.take_away.fit_take_away`, 2,016 UNet rows a colour side, 1,584 a class one), recorded with the words that
            state each side in ``metadata["flip"]``: calls then flip rows whose prompt states the other side
            (`steer.sliders`). False: the slider adds its sides only.
    """
    check_call_kwargs(pipe, call_kwargs, learn_direction)
    _check_flags(calibrate=calibrate, two_sided=two_sided, flip_stated=flip_stated)  # no new locals: sides take locals()
    if two_sided:
        given = dict(locals())  # the keyword arguments, each side learned with them
        options = {k: v for k, v in given.items() if k not in ("pipe", "positive", "negative", "two_sided", "flip_stated", "call_kwargs")}
        return _learn_two_sided(pipe, positive, negative, options, call_kwargs, flip_stated)
    unet = denoiser_of(pipe)
    pos_items, neg_items = _as_items(positive), _as_items(negative)
    if not pos_items:
        raise ValueError("the positive set is empty")
    for label, items in (("positive", pos_items), ("negative", neg_items)):
        odd = next((i for i, x in enumerate(items) if not (isinstance(x, str) or is_image_item(x))), None)
        if odd is not None:
            raise ValueError(f"{label} item {odd} is neither a prompt nor an image (file): {short(items[odd])}")
    image_input = is_image_item(pos_items[0])
    explicit_preset = preset is not None
    if preset is None:  # follow an explicit mode, else the default for the input kind
        by_mode = {"text": "text", "trajectory": "casteer", "reference": "paper", "fast": "paper"}
        preset = by_mode.get(mode or "", "paper" if image_input else "text")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    chosen = dict(PRESETS[preset])
    if method is None:  # the preset's method when asked for by name, else pos - neg whenever there is a negative set
        method = chosen["method"] if explicit_preset else ("mean_diff" if neg_items else "mean")
    mode = mode or chosen["mode"]
    if image_input and (mode == "text" or chosen["layers"] == [CONTEXT_SITE] and layers is None):
        raise ValueError("the text mode learns from prompts (their text tokens do not depend on images): learn image sets "
                         "with preset='paper' or mode='reference'")
    if calibrate is None:  # the preset's choice, where it can apply (calibration compares two prompt sets)
        calibrate = chosen["calibrate"] and bool(neg_items) and not image_input
    calibrate = bool(calibrate)
    if not neg_items and not image_input and mode in ("text", "trajectory"):
        warnings.warn(f"learn: {UNCALIBRATED_ADVICE}", UserWarning, stacklevel=3)
    layers = layers if layers is not None else chosen["layers"]
    if window is None and chosen.get("choose_window") and calibrate and mode == "text" and not image_input:
        window = "auto"  # the text preset's calibration chooses the window too, at a plain calibration's cost
    auto_window = isinstance(window, str) and window == "auto"
    if isinstance(window, str) and not auto_window:
        raise ValueError(f"window must be a pair (start, end) of fractions or 'auto', got {window!r}")
    if auto_window and not calibrate:
        raise ValueError("window='auto' chooses the window by calibration: it needs positive and negative prompts with calibration on (the text and casteer presets)")
    window = check_window(AUTO_WINDOWS[0] if auto_window else window if window is not None else chosen["window"], "window")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if method != "mean" and not neg_items:
        raise ValueError(f"method={method!r} needs a negative set; pass negative=... or use method='mean' (the paper)")
    if layers == "attn2":
        layer_names = cross_attention_sites(unet)
    elif layers is not None:
        layer_names = resolve_layers(unet, layers)
    else:
        layer_names = default_layers(unet)
    if not layer_names:  # failed in max() after all the sampling
        raise ValueError(f"layers={layers!r} names no layer: give at least one (steer layers lists them)")
    check_int(seed, "seed", 0, 2**63 - 1, optional=False)  # a string or a float failed deep in torch
    if name is not None and not isinstance(name, str):  # failed only at save, after the learning
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    for label, items in (("positive", pos_items), ("negative", neg_items)):
        kinds = {is_image_item(i) for i in items}
        if len(kinds) > 1:
            raise ValueError(f"the {label} set mixes prompts and images")
        if items and kinds != {image_input}:
            raise ValueError("positive and negative must both be prompts or both be images")
        for item in items:
            if isinstance(item, str | os.PathLike) and not is_image_item(item) and Path(item).suffix.lower() in IMAGE_SUFFIXES:
                raise FileNotFoundError(f"image file not found: {item}")
    if image_input and mode in ("text", "trajectory", "fast"):
        mode = "reference"  # images carry no prompt trajectory: the paper's extraction (fast reached pipe.unet on SD3)
    if mode == "reference" and getattr(pipe, "unet", None) is None:  # encode + one noised UNet pass: UNet pipelines only
        raise ValueError(
            f"learning from {'images' if image_input else 'reference samples'} (the paper's extraction) needs a UNet "
            f"pipeline; for a {type(unet).__name__} learn from prompts with preset='text', preset='casteer' or mode='fast'"
        )
    if mode == "text" and layer_names != [CONTEXT_SITE]:
        raise ValueError(f"mode='text' learns at {CONTEXT_SITE!r} only; got layers {layer_names}")
    if branch is not None and branch not in BRANCHES:
        raise ValueError(f"branch must be one of {', '.join(BRANCHES)}, got {short(branch)}")
    if readers is not None and not isinstance(readers, str) and "auto" in list(readers):
        if len(list(readers)) > 1:
            raise ValueError(f"readers='auto' chooses the route itself: pass it alone, got {list(readers)}")
        readers = "auto"  # the command line's --readers auto
    if readers is None and chosen.get("readers") == "auto":  # the preset's choice, where it can apply
        readers = "auto" if calibrate and mode == "text" and not image_input and neg_items else None
    if readers == "all" or (not isinstance(readers, str) and readers is not None and list(readers) == ["all"]):
        readers = None  # every cross-attention: the denoiser's text input, nothing to record
    auto_readers = readers == "auto"
    if readers is not None:
        if mode != "text" or image_input:
            raise ValueError("readers= routes text-token directions: learn from prompts with the text preset")
        if auto_readers and not calibrate:
            raise ValueError("readers='auto' chooses the route in the calibration: it needs positive and negative prompts with calibration on")
        readers = None if auto_readers else SteeringConfig(readers=readers).readers
        auto_readers = auto_readers and bool(adapter_for(unet).reader_groups)  # a denoiser without routes: every reader
        if readers is not None:
            text_readers(unet, readers)  # a one-line error before any sampling
    if calibrate and (image_input or not neg_items):
        raise ValueError("calibration needs positive and negative prompts; pass calibrate=False")
    if calibration_grid is not None and not calibrate:  # the strengths of a calibration that does not run
        raise UnusedOptionError("calibration_grid", "calibration_grid does nothing without calibration: it sets the strengths the calibration tries")
    if calibration_samples is not None and not calibrate:  # (it learned the same file as without it)
        raise UnusedOptionError("calibration_samples", "calibration_samples does nothing without calibration: it sets how many "
                                                       "seeds per set the calibration draws")
    calibration_samples = CALIBRATION_SAMPLES if calibration_samples is None else calibration_samples
    if calibrate and calibration_grid is not None:
        calibration_grid = check_grid(calibration_grid)  # before any sampling
    resolved = learning_options(mode, image_input, dict(num_samples=num_samples, timestep=timestep, image_prompts=image_prompts,
                                                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                                        capture_window=capture_window, step_buckets=step_buckets), call_kwargs, calibrate)
    num_samples, timestep, image_prompts = resolved["num_samples"], resolved["timestep"], resolved["image_prompts"]
    num_inference_steps, guidance_scale = resolved["num_inference_steps"], resolved["guidance_scale"]
    capture_window, step_buckets = resolved["capture_window"], resolved["step_buckets"]
    set_prompts = image_prompt_sets(image_prompts, len(pos_items), len(neg_items)) if image_input else ("", "")
    if mode == "trajectory" and not image_input and isinstance(step_buckets, int) and isinstance(num_inference_steps, int) \
            and 0 < num_inference_steps < step_buckets:  # before any sampling (it failed after the sampling)
        raise ValueError(f"the trajectory mode learns one direction per step bucket: {num_inference_steps} sampling steps cannot "
                         f"fill step_buckets={step_buckets}; sample at least {step_buckets} steps or pass fewer step_buckets")
    for label, value, high in (("num_samples", num_samples, 100_000), ("batch_size", batch_size, 4096), ("step_buckets", step_buckets, MAX_STEPS),
                               ("calibration_samples", calibration_samples, MAX_CALIBRATION_SAMPLES), ("num_inference_steps", num_inference_steps, 10_000)):
        check_int(value, label, 1, high, optional=False)
    if calibrate:  # the calibration's open prompts: a positive with nothing to leave open is an error before any sampling
        open_prompts(*calibration_sets([str(p) for p in pos_items], [str(p) for p in neg_items], calibration_samples))
    for key in NEGATIVE_PROMPTS:
        if key in call_kwargs and not isinstance(call_kwargs[key], str | None):
            raise ValueError(f"{key} must be one string (used for every learning and calibration sample), got {type(call_kwargs[key]).__name__}")
    steered = sorted(k for k in call_kwargs if k.startswith("steering"))
    if steered:  # the learning and calibration calls set their own steering; one passed here would clash with it
        raise ValueError(
            f"learn_direction does not take {', '.join(steered)}: it steers its own calibration runs (choose where a "
            "direction acts with window=, readers= and layers=)"
        )

    if image_input and neg_items and method != "mean":  # before any encoding
        check_images_differ(pos_items, neg_items)
    if image_input:
        warnings.warn(f"learn: {IMAGE_SET_ADVICE}", UserWarning, stacklevel=3)
    text_length = call_kwargs.get("max_sequence_length")  # the T5 families' token count, as the calls use it
    if not image_input and neg_items and method != "mean" and mode != "text":  # before any sampling
        tokens = [encode_text(pipe, items, text_length).float().cpu() for items in (pos_items, neg_items)]
        check_sets_differ({CONTEXT_SITE: tokens[0].mean((0, 1)) - tokens[1].mean((0, 1))},
                           {CONTEXT_SITE: float(tokens[0].norm(dim=-1).mean())}, False)
    sample_kwargs = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **call_kwargs)
    sets: list[dict[str, torch.Tensor]] = []
    norms: list[dict[str, float]] = []
    text_tokens: list[torch.Tensor] = []  # text mode: (N, L, C) conditioning tokens of each set
    most = max(len(pos_items), len(neg_items))
    if not image_input and mode != "text" and most > num_samples:  # the samples cycle through the first num_samples
        warnings.warn(f"learn: num_samples={num_samples} samples only the first {num_samples} of {most} prompts of a set "
                      "(the rest are not used): raise num_samples to at least the number of prompts", UserWarning, stacklevel=3)
    for index, items in enumerate((pos_items, neg_items)):
        if not items:
            continue
        set_seed = seed + 1_000_003 * index
        if image_input:
            pooled, act = extract_from_images(pipe, items, layer_names, prompts=set_prompts[index], timestep=timestep, seed=set_seed, batch_size=batch_size, progress=progress)
        elif mode == "text":
            tokens = encode_text(pipe, items, text_length).float().cpu()
            pooled, act = {CONTEXT_SITE: tokens.mean(1)}, {CONTEXT_SITE: float(tokens.norm(dim=-1).mean())}
            text_tokens.append(tokens)
        elif mode == "trajectory":  # paired: sample i of both sets uses seed + i
            cycled = [items[i % len(items)] for i in range(num_samples)]
            pooled, act = extract_trajectories(pipe, cycled, [seed + i for i in range(num_samples)], layer_names, step_buckets, batch_size, **sample_kwargs)
        elif mode == "reference":
            images, used = generate_samples(pipe, items, num_samples, seed=set_seed, batch_size=batch_size, progress=progress, **sample_kwargs)
            pooled, act = extract_from_images(pipe, list(images), layer_names, prompts=used, timestep=timestep, seed=set_seed, batch_size=batch_size, progress=progress)
        else:
            pooled, act = extract_during_sampling(pipe, items, num_samples, layer_names, window=capture_window, seed=set_seed, batch_size=batch_size, progress=progress, **sample_kwargs)
        sets.append(pooled)
        norms.append(act)

    if mode == "trajectory" and not image_input:  # (buckets, N, C): one direction per bucket
        directions = {
            n: torch.stack([aggregate(sets[0][n][b], sets[1][n][b] if len(sets) > 1 else None, method) for b in range(sets[0][n].shape[0])])
            for n in layer_names
        }
    else:
        directions = {n: aggregate(sets[0][n], sets[1][n] if len(sets) > 1 else None, method) for n in layer_names}
    act_norm = {n: sum(a[n] for a in norms) / len(norms) for n in layer_names}
    if len(sets) > 1 and method != "mean":
        check_sets_differ(directions, act_norm, image_input)
    source = "images" if image_input else f"prompts-{mode}"
    meta: dict[str, Any] = {
        "name": name or _default_name(pos_items, neg_items, image_input),
        "method": method,
        "preset": preset,
        "source": source,
        "pooling": "mean",
        "timestep": timestep if source in ("images", "prompts-reference") else None,
        "capture_window": list(capture_window) if source == "prompts-fast" else None,
        "step_buckets": step_buckets if source == "prompts-trajectory" else None,
        "positive": _describe(pos_items),
        "negative": _describe(neg_items) if neg_items else None,
        "num_samples": num_samples if source in ("prompts-reference", "prompts-fast", "prompts-trajectory") else None,
        # the sampler the samples (and the calibration's strengths) came from: a strength is calibrated for it; the
        # text mode uncalibrated samples nothing (it recorded steps 20, guidance 7.5 it never ran): the T5 length alone
        "sampling": _sampling_record(pipe, num_inference_steps, guidance_scale, call_kwargs, sampled=calibrate or mode != "text")
        if not image_input else None,
        "image_prompts": image_prompts if image_input and isinstance(image_prompts, str) else None,
        "seed": seed,
        "activation_norm": act_norm,
        "model": {**unet_fingerprint(unet, layer_names), "name_or_path": str(getattr(pipe, "name_or_path", "") or "")},
    }
    if (preset == "paper" or mode not in ("text", "trajectory")) and not calibrate:
        # activations added as learned (the paper's way), over the window asked for or the preset's: recorded for every
        # preset, so steering applies it (uncalibrated casteer / text fast and reference directions recorded none, and
        # calls fell back to the built-in paper window whatever window= said)
        return SteeringVector(directions, {**meta, "recommended": {"layers": layer_names, "window": list(window), "branch": branch or "cond",
                                                                   "mode": "add", "normalize": False, "preserve_norm": False}})
    # text / trajectory directions: unit norm per step bucket, applied as the calibrated default applies them, so an
    # uncalibrated one's scale is a fraction of each token's norm
    settings = {**CALIBRATED_SETTINGS, "window": list(window), "layers": list(layer_names)}
    settings["branch"] = branch or (TRAJECTORY_BRANCH if mode == "trajectory" else CALIBRATED_SETTINGS["branch"])
    if readers is not None:
        settings["readers"] = list(readers)
    if mode == "text":  # the start token(s) every prompt shares are not steered
        meta["fixed_tokens"] = {CONTEXT_SITE: shared_lead([*text_tokens, encode_text(pipe, [""], text_length).float().cpu()])}
    if mode == "text" and len(text_tokens) > 1:  # what steering_negative="remove" takes a prompt back to
        meta["reference_level"] = {CONTEXT_SITE: reference_level(text_tokens[1], directions[CONTEXT_SITE])}
        # removal goes on to the end of the run: after the window the prompt's own value would come back (measured:
        # contradicting class edits pass 8 of 10 at 1.0 this way, 6 of 10 removing over the window only)
        settings["removal_window"] = [window[0], 1.0]
    unit = SteeringVector({n: d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12) for n, d in directions.items()}, {**meta, "recommended": settings})
    if not calibrate:
        return unit
    calibration_args = (pipe, unit, [str(p) for p in pos_items], [str(p) for p in neg_items])
    calibration_kwargs = dict(num_samples=calibration_samples, seed=seed, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              choose_route=auto_readers, batch_size=batch_size, **({"grid": calibration_grid} if calibration_grid is not None else {}), **call_kwargs)
    if auto_window:
        index, tried = calibrate_windows(*calibration_args, AUTO_WINDOWS, **calibration_kwargs)
        result = tried[index]
        window = tuple(AUTO_WINDOWS[index])
        settings["window"] = list(window)
        if "removal_window" in settings:
            settings["removal_window"] = [window[0], 1.0]
        meta["window_choice"] = window_choice_record(AUTO_WINDOWS, tried, window)
    else:
        result = run_calibration(*calibration_args, **calibration_kwargs)
    if result.route is not None:  # readers="auto": the route the calibration chose and ran through
        meta["route_choice"] = {"structure": round(result.route["structure"], 4), "below": LAYOUT_EDIT_BELOW, "readers": result.route["readers"]}
        if result.route["readers"] is not None:
            settings["readers"] = list(result.route["readers"])
    calibrated = round(result.strength, 4) * unit  # as recorded: the direction's bits then do not follow batch_size's float rounding
    calibrated.metadata = {**meta, "recommended": settings, "calibration": result.to_dict()}
    return calibrated


def _learn_two_sided(pipe, positive: Any, negative: Any, options: dict[str, Any], call_kwargs: dict[str, Any],
                     flip_stated: bool = True) -> SteeringVector:
    """`learn_direction(..., two_sided=True)`: each side learned against the prompts with the attribute left open,
    and (``flip_stated``) its flip of prompts that state the other side fitted (`_fit_flips`)."""
    options = {**options, "branch": options.get("branch") or SLIDER_BRANCH}
    pos_items, neg_items = _as_items(positive), _as_items(negative)
    if not pos_items or not neg_items or any(is_image_item(i) for i in [*pos_items, *neg_items]):
        raise ValueError("two_sided=True learns a slider from a positive and a negative prompt set (each side is "
                         "contrasted with the prompts with the attribute left open): images or a missing set cannot")
    preset = options.get("preset") or {"trajectory": "casteer", "reference": "paper", "fast": "paper"}.get(options.get("mode") or "", "text")
    chosen = PRESETS.get(preset, {})
    calibrated = options.get("calibrate") if options.get("calibrate") is not None else chosen.get("calibrate", True)
    method = options.get("method") or (chosen.get("method") if options.get("preset") else "mean_diff")
    if not calibrated or method == "mean":  # each side its own prompts' mean, uncalibrated: the two sides nearly alike
        raise ValueError("two_sided=True calibrates each side against the prompts with the attribute left open, so that "
                         f"+1 and -1 are full edits: it needs calibrate on and a difference method (preset {preset!r}"
                         f"{', method ' + repr(method) if method == 'mean' else ''} has neither)")
    pos, neg = [str(p) for p in pos_items], [str(n) for n in neg_items]
    toward_pos = open_prompts(pos, neg)
    try:
        toward_neg = open_prompts(neg, pos)
    except ValueError:
        raise ValueError(f"two_sided=True needs negative prompts that state an attribute of their own (\"a blue sneaker\" "
                         f"vs \"a red sneaker\"); {neg[0]!r} states nothing beyond what the positives leave open: learn "
                         "it one-sided (a negative scale then subtracts the direction)") from None
    progress = options.pop("progress")
    name = options.pop("name") or f"{pos[0]} <-> {neg[0]}"
    sets = ((pos, toward_pos), (neg, toward_neg))
    halves = []
    for half, (items, opened) in enumerate(sets):
        report = (lambda f, msg, h=half: progress(h / 2 + f / 2, msg)) if callable(progress) else progress
        halves.append(learn_direction(pipe, items, opened, progress=report, **options, **call_kwargs))
    # Each side keeps the window its own calibration chose: a call applies each side in its own (the command line,
    # batch and the app pass a slider's window as None where its sides differ: `steer.config.recommended_settings`).
    # One route for both, the positive side's (a call reads every direction by one `steering_readers`): a side that
    # chose another is calibrated again on it (one more calibration; its window chosen again on that route).
    readers = (halves[0].metadata.get("recommended") or {}).get("readers")
    relearned = []
    for half, (items, opened) in enumerate(sets):
        if (halves[half].metadata.get("recommended") or {}).get("readers") != readers:
            again = {**options, "readers": readers if readers is not None else "all"}
            halves[half] = learn_direction(pipe, items, opened, progress=progress if callable(progress) else False, **again, **call_kwargs)
            relearned.append(("positive", "negative")[half])
    side, opposite = halves
    if flip_stated:
        if callable(progress):
            progress(0.99, "fitting each side's flip of prompts that state the other")
        _fit_flips(pipe, side, opposite, options, call_kwargs)
    side.metadata = {**side.metadata, "name": name, "two_sided": {
        "positive": list(dict.fromkeys(pos)), "negative": list(dict.fromkeys(neg)), **({"recalibrated": relearned} if relearned else {})}}
    opposite.metadata = {**opposite.metadata, "name": f"{name} (opposite)"}
    return SteeringVector(side.directions, side.metadata, opposite)


def _fit_flips(pipe, side: SteeringVector, opposite: SteeringVector, options: dict[str, Any], call_kwargs: dict[str, Any]) -> None:
    """Record in each side's ``metadata["flip"]`` the phrases that state it (each positive's attribute words against
    its open prompt) and the strength and window at which it replaces the other side's statement in a prompt
    (`steer.take_away.fit_take_away` at the learning's guidance, seed, batch size, calibration samples and call options,
    and its default steps or the learning's, whichever are fewer)."""
    steps, guidance = options["num_inference_steps"], options["guidance_scale"]  # None where not given: the learning's defaults
    steps, guidance = LEARN_STEPS if steps is None else steps, LEARN_GUIDANCE if guidance is None else guidance
    fit_options = {"guidance_scale": guidance, "seed": options["seed"], "batch_size": options["batch_size"],
                   "num_samples": CALIBRATION_SAMPLES if options["calibration_samples"] is None else options["calibration_samples"],
                   "num_inference_steps": min(FIT_STEPS, steps),
                   **call_kwargs}
    for toward, away in ((side, opposite), (opposite, side)):
        prompts, opened = toward.metadata["positive"]["prompts"], toward.metadata["negative"]["prompts"]
        phrases = stated_phrases(prompts, opened)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its advice is recorded (distance) and said by `steer learn`
                fit = fit_take_away(pipe, toward, away, **fit_options)
        except ValueError as err:  # prompts whose attribute cannot be rewritten into the other's: the sides stay as learned
            warnings.warn(f"learn: {toward.name!r} will not flip prompts that state the other side: its fit failed ({err})"[:400], UserWarning, stacklevel=4)
            continue
        toward.metadata = {**toward.metadata, "flip": {
            "words": phrases, "strength": round(fit.strength, 4), "window": list(fit.window), "distance": round(fit.distance, 4),
            "converged": fit.converged, "unet_rows": fit.unet_rows, "chosen_by": fit.chosen_by, "negative": fit.negative,
            **({"advice": advice} if (advice := fit.advice()) else {})}}


def _sampling_record(pipe, num_inference_steps: int, guidance_scale: float, call_kwargs: dict[str, Any], sampled: bool) -> dict[str, Any] | None:
    """``metadata["sampling"]`` of a direction learned from prompts: the sampler, steps, guidance, negative prompt and
    size its samples (and calibrated strength) came from; for a learning that sampled nothing, only the T5 token count
    its prompts were encoded at, where the call set one (None without)."""
    length = {"max_sequence_length": call_kwargs["max_sequence_length"]} if call_kwargs.get("max_sequence_length") is not None else {}
    if not sampled:
        return length or None
    return {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
            "scheduler": type(pipe.scheduler).__name__, "sampler": sampler_name(pipe.scheduler),
            **{k: v for k, v in call_kwargs.items() if k in NEGATIVE_PROMPTS and v is not None},
            # the size a strength was calibrated at, where the call set one
            **{k: call_kwargs[k] for k in ("height", "width") if call_kwargs.get(k) is not None}, **length}


def _default_name(pos: list, neg: list, images: bool) -> str:
    if images:
        return f"images({len(pos)})" + (f" vs images({len(neg)})" if neg else "")
    first = str(pos[0])
    return first if not neg else f"{first} <- {neg[0]}"
