"""UI-independent logic of the Gradio demo (``app.py``): validation, direction catalog, generation, learning.

Everything here takes plain Python values and a `SteeringStableDiffusionPipeline`, raises `UserError` with a
readable message for anything the user can fix, and never imports gradio, so it is testable without a server.
The limits, validators and text cleaning live in `steer.app.base`, the files the app reads (directions, the
detector, uploads) in `steer.app.files`, the Memorization tab in `steer.app.memorization`; all are re-exported here.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from steer.app.base import (  # noqa: F401 - re-exported: app.py and the tests use them as H.<name>
    LIMITS,
    MALFORMED_FILE_ERRORS,
    READABLE_ERRORS,
    Limits,
    ProgressFn,
    UserError,
    check_choice,
    check_flag,
    check_float,
    check_int,
    check_prompt,
    check_sampler_choice,
    check_size,
    clean_text,
    html_text,
    layer_names,
    md_code,
    md_text,
    model_name,
    readable,
    sampler_choices,
    sampling_pipe,
    shown,
    slug,
)
from steer.app.files import (  # noqa: F401 - re-exported
    DETECTOR_FILES,
    NONE_CHOICE,
    DirectionCatalog,
    check_fits,
    detector_candidates,
    detector_problem,
    direction_advice,
    direction_summary,
    discard_upload,
    load_detector,
    load_direction_file,
    metadata_problem,
    read_direction,
    recommended_problem,
    recommended_settings,
    route_choice_note,
    run_folder,
    save_direction,
    sweep_runs,
    unique_name,
    window_choice_note,
)
from steer.app.learning import (  # noqa: F401 - re-exported
    LAYER_SCOPES,
    LEARN_METHODS,
    LEARN_MODES,
    LEARN_READERS,
    LEARN_WINDOWS,
    LearnSettings,
    StagedProgress,
    learn,
    parse_prompt_lines,
)
from steer.app.memorization import (  # noqa: F401 - re-exported
    MemorizationView,
    calibrate_detector,
    histogram,
    inline_view,
    score_image,
)
from steer.app.take_away import (  # noqa: F401 - re-exported
    DARKENED,
    check_take_away,
    darkening_note,
    fit_take_away,
    take_away_amount,
    take_away_scales,
)
from steer.app.uploads import kept_edit_input, load_images, open_edit_image, open_edit_mask, open_upload  # noqa: F401 - re-exported
from steer.config import (
    BRANCHES,
    MODES,
    NEGATIVES,
    TAKE_AWAY_NEGATIVE,
    SteeringConfig,
    recorded_window,
    routes_record,
    sides_differ,
    window_record,
)
from steer.config import recommended_settings as recommended_by
from steer.denoisers import CONTEXT_SITE, adapter_for, denoiser_of, native_size
from steer.images import EditInputs, edit_size, edit_steps
from steer.inversion import check_invertible, invert_image
from steer.lora import loaded_loras
from steer.pipelines.factory import editing_pipeline
from steer.replay import edit_call_inputs
from steer.take_away import said_elsewhere
from steer.vectors import SteeringVector


def make_generators(pipe, seed: int, count: int) -> list[torch.Generator]:
    """``count`` generators all seeded with ``seed`` (same starting noise for every row)."""
    device = pipe._execution_device
    device = torch.device("cpu") if device.type == "mps" else device
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(count)]


# ----------------------------------------------------------------------------------------------------------------------
# Layer selection
# ----------------------------------------------------------------------------------------------------------------------
# How the layer slider's note names a direction's recorded route (`SteeringConfig.readers` groups)
ROUTE_WORDS = {"all": "every cross-attention", "layout": "the layout blocks' (down and mid)", "detail": "the up blocks'"}


def reads_text(vector: SteeringVector | None) -> bool:
    """Whether ``vector`` acts on the prompt's tokens only (the text preset's directions, every bundled one): the
    layer slider then picks the cross-attention that reads it."""
    return vector is not None and list(vector.layers) == [CONTEXT_SITE]


def text_readers_of(pipe) -> list[str]:
    """The cross-attentions that read the prompt, input side first; [] where the denoiser cannot route the text (a
    transformer reads it in every block)."""
    adapter = adapter_for(denoiser_of(pipe))
    return adapter.cross_attention_sites() if adapter.reader_groups else []


def layer_choices(pipe, vector: SteeringVector | None) -> list[str]:
    """The layers ``vector`` can be steered at one by one ('Several layers' offers these): the hookable layers, or the
    direction's own layers where some of them are not hookable (a trajectory direction's cross-attention outputs,
    ``...attn2``: it has no vector at any hookable layer)."""
    names = layer_names(pipe)
    own = list(vector.layers) if vector is not None else []
    return own if own and not set(own) <= set(names) else names


def slider_sites(pipe, vector: SteeringVector | None) -> list[str]:
    """What the layer slider's positions 1, 2, ... pick: for a direction on the prompt's tokens, the cross-attention
    that reads it (where the denoiser can route the text); else a layer of `layer_choices`."""
    readers = text_readers_of(pipe) if reads_text(vector) else []
    return readers or layer_choices(pipe, vector)


def layer_at(pipe, index: Any, vector: SteeringVector | None = None) -> str | None:
    """The slider's site: 0 means all of the direction's layers, or its own route (None); ``k`` is the k-th of
    `slider_sites`."""
    names = slider_sites(pipe, vector)
    index = check_int(index, "the layer slider", 0, len(names))
    return None if index == 0 else names[index - 1]


def selected_readers(pipe, vector: SteeringVector | None, index: Any) -> list[str] | None:
    """The one cross-attention the slider picks to read a direction on the prompt's tokens; None: its own route (or
    not such a direction)."""
    if not reads_text(vector) or not text_readers_of(pipe):
        return None
    single = layer_at(pipe, index, vector)
    return [single] if single else None


_ITSELF: Any = object()  # `selected_layers`' default ``slider``: the direction itself


def selected_layers(
    pipe, vector: SteeringVector | None, index: Any, chosen: Sequence[str] | None, slider: Any = _ITSELF
) -> list[str] | None:
    """The layers to steer: the multi-select if non-empty, else the slider's layer, else the direction's layers.
    ``slider``: the direction whose `slider_sites` the slider walks (default ``vector``; a take-away is checked
    against the added direction's slider).

    Raises `UserError` naming the direction's layers when a chosen layer is not one of them.
    """
    slider = vector if slider is _ITSELF else slider
    known = {*layer_names(pipe), *layer_choices(pipe, vector), *layer_choices(pipe, slider)}
    wanted = [n for n in (chosen or []) if n]
    if reads_text(vector) and text_readers_of(pipe):
        if wanted:
            raise UserError(
                f"direction {shown(vector.name)} acts on the prompt's tokens, not on a layer: clear 'Several layers' and "
                "pick the cross-attention that reads it with the layer slider (0: its own route)"
            )
        return None
    if not wanted:
        single = layer_at(pipe, index, slider)
        wanted = [single] if single else []
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UserError(f"unknown layer(s) {unknown}; the layers a direction can be steered at are listed under 'Several layers'")
    if not wanted:
        return None
    if vector is not None:
        missing = [n for n in wanted if n not in vector.layers]
        if missing:  # 'all layers' learns every hookable layer in the fast and reference modes only
            relearn = (", or learn a direction with 'all layers' in the Learn tab's fast or reference mode"
                       if all(n in layer_names(pipe) for n in missing) else "")
            raise UserError(
                f"direction {shown(vector.name)} has no vector for layer {', '.join(missing)} - it was learned on "
                f"{len(vector.layers)} layer(s): {', '.join(vector.layers)}. Move the layer slider to 0 (all of its "
                f"layers) or to one of those{relearn}."
            )
    return wanted


def describe_layer(pipe, vector: SteeringVector | None, index: Any) -> str:
    """Markdown for the layer slider's current position."""
    try:
        name = layer_at(pipe, index, vector)
    except UserError as err:
        return f"⚠ {err}"
    total = len(slider_sites(pipe, vector))
    if reads_text(vector) and text_readers_of(pipe):
        if name is None:
            readers = (vector.metadata.get("recommended") or {}).get("readers")
            readers = readers if isinstance(readers, list) and readers else ["all"]
            route = ", ".join(ROUTE_WORDS.get(str(r)) or md_code(str(r), 40) for r in readers[:4])
            return (f"**Read by:** its own route, {route} (the prompt's tokens carry this direction; 1 → {total}: one "
                    "cross-attention alone, input side → output side)")
        return (f"**Read by:** {md_code(name, 80)} only ({int(index)}/{total}, input side → output side) - the full edit "
                "was calibrated for its whole route: one reader alone edits less, raise the strength")
    if name is None:
        have = f" ({len(vector.layers)} layers)" if vector is not None else ""
        return f"**Layer:** all of the direction's layers{have}"
    where = f"{int(index)}/{total}, input side → output side"
    if vector is not None and name not in vector.layers:
        return f"**Layer:** `{name}` ({where}) - ⚠ not in direction {md_text(shown(vector.name))}"
    return f"**Layer:** `{name}` ({where})"


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateSettings:
    """One generate request, validated by `validated`; `from_inputs` builds one from the Generate tab's widgets.

    ``config`` is how the direction is applied (window, CFG branch, normalize, mode, strict); its layers are picked
    when the direction is known, from the layer slider (``layer_index``) or the multi-select (``layers``).
    """

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 5.0
    strength: float = 1.0
    layer_index: int = 0
    layers: tuple[str, ...] = ()
    height: int | None = None
    width: int | None = None
    config: SteeringConfig = field(default_factory=SteeringConfig)
    sampler: str = ""  # a `steer.samplers` name; "": the model's own scheduler
    edit_image: str | None = None  # a file to edit with the model's image-to-image pipeline (None: from noise)
    edit_picture: Image.Image | None = field(default=None, compare=False, repr=False)  # it, decoded by `validated`
    edit_mask: str | None = None  # a greyscale file of its size: inpaint where it is white (None: the whole image)
    edit_mask_picture: Image.Image | None = field(default=None, compare=False, repr=False)  # it, decoded by `validated`
    edit_strength: float = 0.8  # how much of the run re-draws it
    edit_invert: bool = False  # edit from the picture's inversion (`steer.inversion`): its unsteered row is the picture

    @classmethod
    def from_inputs(
        cls,
        pipe,
        *,
        size: Any,
        layer: Any,
        layers: Any,
        window_start: Any,
        window_end: Any,
        branch: Any,
        normalize: Any,
        mode: Any,
        strict: Any,
        negative: Any = "subtract",
        sampler: Any = "",
        **request: Any,
    ) -> GenerateSettings:
        """The validated request of the Generate tab's widget values, by the names `app.py` wires them with;
        ``request``: prompt, negative_prompt, seed, steps, guidance and strength (the fields of those names)."""
        config = SteeringConfig(
            window=check_window_values(window_start, window_end),
            branch=check_choice(branch, "the CFG branch", BRANCHES),
            normalize=normalize,
            mode=check_choice(mode, "the mode", MODES),
            strict=strict,
            negative=check_choice(negative, "what a negative strength does", NEGATIVES),
        )
        settings = cls(**request, layer_index=layer, layers=tuple(layers or ()), height=size, width=size, config=config,
                       sampler=sampler)
        return settings.validated(pipe)

    def validated(self, pipe) -> GenerateSettings:
        """A copy with checked and normalised fields; raises `UserError`."""
        size = native_size(pipe)
        check_window_values(*self.config.window)
        height, width = check_size(self.height or size, "the height"), check_size(self.width or size, "the width")
        edit_image, edit_strength, picture, mask = None, float(self.edit_strength), None, None
        if self.edit_mask and not self.edit_image:
            raise UserError("the mask goes with an image to edit: upload the image too")
        if self.edit_invert:
            if not self.edit_image or self.edit_mask:
                raise UserError("'from its inversion' edits the whole of an uploaded image: upload one (without a mask), or untick it")
            try:
                check_invertible(pipe)
            except ValueError as err:
                raise UserError(str(err)) from None
        if self.edit_image:  # the edit runs at the image's aspect ratio, its longer side the size picked
            picture = open_edit_image(self.edit_image)
            mask = open_edit_mask(self.edit_mask, picture) if self.edit_mask else None
            long_side = max(height, width)
            height, width = edit_size(picture.size, *((long_side, None) if picture.height >= picture.width else (None, long_side)))
            edit_image = str(self.edit_image)
            edit_strength = 1.0 if self.edit_invert else check_float(self.edit_strength, "the edit strength", 0.0, 1.0)
            steps = check_int(self.steps, "steps", 1, LIMITS.max_steps)
            if edit_steps(edit_strength, steps) < 1:
                raise UserError(f"an edit strength of {edit_strength:g} of {steps} steps runs no step: raise either")
        return replace(
            self,
            prompt=check_prompt(self.prompt),
            negative_prompt=check_prompt(self.negative_prompt, "negative prompt", required=False),
            seed=check_int(self.seed, "the seed", 0, LIMITS.max_seed),
            steps=check_int(self.steps, "steps", 1, LIMITS.max_steps),
            guidance=check_float(self.guidance, "guidance", 0.0, LIMITS.max_guidance),
            strength=check_float(self.strength, "the strength", -LIMITS.max_strength, LIMITS.max_strength),
            layers=tuple(self.layers or ()),
            height=height,
            width=width,
            sampler=check_sampler_choice(pipe, self.sampler),
            edit_image=edit_image,
            edit_picture=picture,
            edit_mask=str(self.edit_mask) if mask is not None else None,
            edit_mask_picture=mask,
            edit_strength=edit_strength,
        )

    def edit_inputs(self) -> EditInputs | None:
        """The image to edit and its mask (as `validated` decoded them), or None."""
        if not self.edit_image:
            return None
        picture = self.edit_picture if self.edit_picture is not None else open_edit_image(self.edit_image)
        mask = None
        if self.edit_mask:
            mask = self.edit_mask_picture if self.edit_mask_picture is not None else open_edit_mask(self.edit_mask, picture)
        return EditInputs(picture, Path(self.edit_image), mask, Path(self.edit_mask) if mask is not None else None, self.edit_strength)

    def kept_edit(self, folder: str | os.PathLike) -> EditInputs:
        """The edit's inputs kept in ``folder`` (`kept_edit_input`) for the recipe."""
        edit = self.edit_inputs()
        return kept_edit_input(edit.image, folder, edit.mask)

    def call_kwargs(self, rows: int) -> dict[str, Any]:
        """Keyword arguments of the pipeline call for ``rows`` images of this prompt."""
        return {
            "prompt": [self.prompt] * rows,
            "negative_prompt": [self.negative_prompt] * rows if self.negative_prompt else None,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            **({"height": self.height, "width": self.width} if not self.edit_image else {}),
        }

    def steering_config(self, pipe, vector: SteeringVector | None, away: SteeringVector | None = None) -> SteeringConfig:
        """``config`` on the layers the sliders pick for ``vector`` (None: all of its layers); for a direction on the
        prompt's tokens the layer slider picks the one cross-attention that reads it (0: its own route). No widget
        sets preserve_norm or the removal window: the values the directions recommend apply, as in a pipeline call
        that leaves them unset. With a take-away direction
        (``away``) negative scales remove (`take_away_scales`). A slider whose sides record different windows, with
        the window sliders where the direction puts them (its + side's window), applies each side in its own (window
        None: `steer.config.recommended_settings`); moved, the window holds for both sides, as a call's own."""
        vectors = [v for v in (vector, away) if v is not None]
        recommended = recommended_by(vectors) if vectors else {}
        layers = selected_layers(pipe, vector, self.layer_index, self.layers)
        if away is not None:
            selected_layers(pipe, away, self.layer_index, self.layers, vector)  # the take-away must have them too
        own_sides = away is None and vector is not None and sides_differ(vector) and self.config.window == recorded_window(vector)
        return replace(
            self.config,
            window=(None,) if own_sides else self.config.window,
            layers=layers,
            preserve_norm=recommended.get("steering_preserve_norm", self.config.preserve_norm),
            removal_window=recommended.get("steering_removal_window", self.config.removal_window),
            readers=selected_readers(pipe, vector, self.layer_index) or recommended.get("steering_readers", self.config.readers),
            negative=TAKE_AWAY_NEGATIVE if away is not None else self.config.negative,
        )

    def steering_kwargs(self, pipe, vector: SteeringVector | None, away: SteeringVector | None = None) -> dict[str, Any]:
        """The ``steering_*`` arguments (without the scale)."""
        steering = vector if away is None else [vector, away]
        return {"steering": steering, **self.steering_config(pipe, vector, away).to_settings()}

    def recipe(
        self, pipe, vector: SteeringVector | None, scale: float, away: SteeringVector | None = None,
        folder: str | os.PathLike | None = None,
    ) -> dict[str, Any]:
        """Everything needed to reproduce one image; an edit's input image is kept in ``folder`` (the PNG's) and
        recorded by its sha256."""
        steering = None
        if vector is not None:
            config = self.steering_config(pipe, vector, away)
            steering = {
                "name": vector.name,
                "digest": vector.digest(),
                "scale": scale,
                "layers": list(config.layers) if config.layers is not None else vector.layers,
                "window": window_record(config.window),
                "branch": config.branch if isinstance(config.branch, str) else list(config.branch),
                "normalize": config.normalize,
                "mode": config.mode,
                "negative": config.negative,
                **({"strict": False} if not config.strict else {}),
                **({"removal_window": window_record(config.removal_window)} if config.removal_window is not None else {}),
                **({"readers": list(config.readers)} if config.readers is not None else {}),
                **routes_record([vector] + ([away] if away is not None else []), config.readers),
            }
            if away is not None:
                steering["take_away"] = {"name": away.name, "digest": away.digest(), "amount": take_away_amount(scale)}
        return {
            "model": model_name(pipe),
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "height": self.height,
            "width": self.width,
            "scheduler": type(sampling_pipe(pipe, self.sampler).scheduler).__name__,
            **({"sampler": self.sampler} if self.sampler else {}),
            "steering": steering,
            **({"edit": {**self.kept_edit(folder).record(self.edit_strength), **({"invert": True} if self.edit_invert else {})}}
               if self.edit_image and folder else {}),
            **({"loras": loaded_loras(pipe)} if loaded_loras(pipe) else {}),
        }


def check_window_values(start: Any, end: Any) -> tuple[float, float]:
    """The window sliders' (start, end) as fractions with start below end; raises `UserError`."""
    start = check_float(start, "the window start", 0.0, 1.0)
    end = check_float(end, "the window end", 0.0, 1.0)
    if start >= end:
        raise UserError(f"the timestep window is empty: start {start:g} must be below end {end:g}")
    return start, end


def step_callback(progress: ProgressFn | None, steps: int, desc: str = "denoising"):
    """A diffusers ``callback_on_step_end`` that reports progress (or None)."""
    if progress is None:
        return None

    def callback(_pipe, i: int, _t, kwargs: dict) -> dict:
        progress((i + 1) / steps, desc)
        return kwargs

    return callback


def run_rows(
    pipe,
    vector: SteeringVector | None,
    settings: GenerateSettings,
    scales: Sequence[float],
    progress: ProgressFn | None = None,
    away: SteeringVector | None = None,
) -> list[Image.Image]:
    """One batched call: row ``i`` is steered at ``scales[i]`` (taking ``away`` away, `take_away_scales`); every row
    starts from the same seed."""
    return run_rows_scored(pipe, vector, settings, scales, progress, away=away)[0]


def sampling_note(detector, pipe, settings: GenerateSettings) -> str | None:
    """`MemorizationDetector.sampling_note` for a generation with ``settings`` (the page shows it with the verdict)."""
    from steer.samplers import sampler_name

    sampler = settings.sampler or sampler_name(pipe.scheduler)
    return detector.sampling_note(now={"num_inference_steps": int(settings.steps), "guidance_scale": float(settings.guidance),
                                       "sampler": sampler})


def inline_detector_for(detector, settings: GenerateSettings):
    """``detector`` when its inline score can be read during this generation (calibrated inline threshold; CFG on
    for the CFG distance), else None."""
    if detector is None or detector.inline_threshold is None or "inline" not in detector.calibration:
        return None
    if getattr(detector, "inline_score", "spikiness") == "cfg_distance" and settings.guidance <= 1.0:
        return None
    return detector


def run_rows_scored(
    pipe,
    vector: SteeringVector | None,
    settings: GenerateSettings,
    scales: Sequence[float],
    progress: ProgressFn | None = None,
    detector=None,
    away: SteeringVector | None = None,
) -> tuple[list[Image.Image], list[float] | None]:
    """`run_rows`, plus each row's inline memorization score when ``detector`` can read one (hooks during the same
    sampling: no extra UNet evaluation, identical images)."""
    check_take_away(vector, away)
    rows = len(scales)
    kwargs = settings.call_kwargs(rows)
    steering = settings.steering_kwargs(pipe, vector, away) if vector is not None else {}
    if vector is not None:
        for v in (vector, away) if away is not None else (vector,):
            check_fits(v, pipe, settings.config.strict)
        if away is not None:
            steering["steering_scale"] = take_away_scales(scales)
        else:
            steering["steering_scale"] = [float(s) for s in scales] if rows > 1 else float(scales[0])
    edit = settings.edit_inputs()
    detector = inline_detector_for(detector, settings) if edit is None else None  # scores are calibrated on runs from noise
    extra = {"memorization_detector": detector} if detector is not None else {}
    sampler = sampling_pipe(pipe, settings.sampler)
    if edit is not None and settings.edit_invert:  # replayed from the picture's inversion: row 0 is the picture
        inversion = invert_image(sampler, edit.prepared(settings.height, settings.width)["image"], settings.prompt,
                                 negative_prompt=settings.negative_prompt, num_inference_steps=settings.steps,
                                 guidance_scale=settings.guidance, generator=make_generators(pipe, settings.seed, 1)[0])
        sampler, kwargs, extra = inversion.pipeline(sampler), inversion.call_kwargs(rows), {}
    elif edit is not None:
        sampler = editing_pipeline(sampler, edit.task)
        extra = edit_call_inputs(sampler, edit, settings.height, settings.width, rows)
    with said_elsewhere(), warnings.catch_warnings():  # the page names the direction to take away, and shows the
        warnings.filterwarnings("ignore", message="the memorization detector was calibrated at")  # sampling note
        out = sampler(
            **kwargs,
            **steering,
            **extra,
            generator=make_generators(pipe, settings.seed, rows),
            output_type="pil",
            callback_on_step_end=step_callback(progress, edit_steps(settings.edit_strength, settings.steps) if edit is not None else settings.steps),
        )
    scores = [float(v) for v in out.memorization_scores] if detector is not None else None
    return list(out.images), scores


def run_pair(
    pipe,
    vector: SteeringVector | None,
    settings: GenerateSettings,
    progress: ProgressFn | None = None,
    detector=None,
    away: SteeringVector | None = None,
) -> tuple[Image.Image, Image.Image, list[float] | None]:
    """(original, steered, inline scores or None) from the same seed in one batched call with per-row scales [0, s]."""
    (original, steered), scores = run_rows_scored(pipe, vector, settings, [0.0, settings.strength], progress, detector, away)
    return original, steered, scores


def strip_scales(strength: float, count: int, signed: bool = True) -> list[float]:
    """``count`` evenly spaced scales from ``-|strength|`` (``signed``; else from 0) to ``+|strength|``."""
    count = check_int(count, "the strip length", 2, LIMITS.max_strip)
    top = abs(float(strength))
    if top == 0:
        raise UserError("set a non-zero strength: the strip spans -|strength| .. +|strength|")
    return [round(float(v), 6) for v in np.linspace(-top if signed else 0.0, top, count)]


def upscale_for_display(image: Image.Image, min_side: int = 256) -> Image.Image:
    """Nearest-neighbour upscale by an integer factor so small images are visible (pixel values unchanged)."""
    factor = max(1, math.ceil(min_side / max(1, min(image.size))))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def save_with_recipe(image: Image.Image, recipe: dict[str, Any], folder: str | os.PathLike, stem: str) -> Path:
    """A PNG carrying ``recipe`` (see `steer.recipe`), in a fresh sub-folder of ``folder``."""
    from steer.recipe import recipe_hash, save_png

    target = run_folder(folder) / f"{slug(stem)}-{recipe_hash(recipe)[:8]}.png"
    return save_png(image, target, recipe)
