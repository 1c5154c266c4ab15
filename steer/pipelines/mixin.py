"""`SteeringMixin`: training-free representation steering for any diffusers pipeline class whose denoiser steer
knows (`steer.denoisers`). A steered pipeline is ``class X(SteeringMixin, DiffusersPipeline)`` plus two class
attributes; `__init_subclass__` gives it a ``__call__`` whose signature is the parent's plus the steering options.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline

from steer.assets import bundled_directions, find_direction
from steer.calibrate import cfg_rows_per_sample
from steer.config import (
    STEERING_DEFAULTS,
    SteeringConfig,
    block_settings,
    check_removal_window,
    disagreement_note,
    parse_scales,
    recommended_settings,
    recorded_routes,
    resolve_recorded_windows,
    steering_block,
    without_zero_columns,
)
from steer.denoisers import (
    CONTEXT_SITE,
    GLOB_CHARS,
    adapter_for,
    cross_attention_sites,
    denoiser_use,
    list_layers,
    resolve_layers,
    text_readers,
    unwrap,
)
from steer.detect.detector import detect_memorization
from steer.detect.inline import enter_inline_detection
from steer.detect.scores import INLINE_CALL_PARAMS
from steer.engine import LayerPlan, StaticSteeringSites, SteeringSession, activated, build_layer_plans
from steer.images import edit_steps, pipeline_picture
from steer.learn import learn_direction
from steer.samplers import check_step_count, with_sampler
from steer.sliders import split_sides
from steer.vae_codec import while_upcast
from steer.validation import (
    MAX_GUIDANCE,
    MAX_STEPS,
    check_scale_range,
    check_steering_request,
    did_you_mean,
    refuse_non_finite,
    short,
)
from steer.vectors import SteeringVector, as_vector_list
from steer.word_swap import plan_word_swap

# Pipeline attributes a call sets that are loop state of that call, not results (kept off the shared pipeline).
_CALL_LOCAL = frozenset({"scheduler"})

STEERING_DOC = """
    Steering arguments (keyword-only), on top of the parent pipeline's:

    - ``steering``: a `SteeringVector`, a path to one, a list of them, or None.
    - ``steering_scale``: float, one per vector, one per batch row, or (rows, vectors); negative subtracts (a
      two-sided direction's negative scale applies its opposite at ``|scale|``: toward its negative prompts).
    - ``steering_layers``: None (the vectors' layers) or names / glob patterns restricting them.
    - ``steering_window``: ``(start, end)`` fractions of the denoising run (default the paper's (0.45, 0.95)), or
      one per vector (None for a vector: the window it records). Unset, directions that record different windows
      each act in their own, and so do a slider's two sides.
    - ``steering_branch``: ``"cond"`` (paper), ``"uncond"``, ``"both"`` or ``"split"`` (+scale on the conditional
      half, -scale on the unconditional one: guidance amplifies the push), or one per vector; irrelevant without
      CFG. Unset, directions that record different branches each run on their own (a slider's sides on its).
    - ``steering_normalize``: unit-norm each layer's vector and measure the scale in units of that layer's typical
      activation norm, so equal scales mean comparable strength across directions and layers.
    - ``steering_mode``: ``"add"`` (uniform over space, paper), ``"weighted"`` (each position weighted by its
      activation norm) or ``"token"`` (the vector is in units of each position's own norm).
    - ``steering_preserve_norm``: rescale every steered position to its pre-steering norm.
    - ``steering_strict``: require the vector's base-model weights hash to match (False allows fine-tunes).
    - ``steering_negative``: ``"subtract"`` (a negative scale adds ``-s * v``) or ``"remove"`` (it takes away what
      the prompt carries along ``v`` beyond the vector's reference level, on the conditional half only: "a red
      t-shirt" with ``[to_blue, to_red]`` at ``[1, -1]`` loses its red and gains blue; -1 takes all of the excess
      away, and larger amounts act as -1: never below the level).
    - ``steering_removal_window``: ``(start, end)`` in which ``"remove"`` acts, or one per vector (None:
      ``steering_window``; text directions recommend the window's start to the end of the run).
    - ``steering_readers``: which cross-attentions read a text-token direction: None (all), ``"layout"`` (the down
      and mid blocks': object edits keep the prompt's colour), ``"detail"`` (the up blocks') or attn2 patterns.
      Unset, directions that record different routes are each read where they were calibrated (an unrouted one
      everywhere, a routed one added on top where it is read).

    Options a call leaves unset come from the direction's ``metadata["recommended"]`` (what `learn_direction`
    calibrated), else the defaults above. With no vector, or every scale zero, the call is exactly the parent's.
"""


def _diffusers_parent(cls: type) -> type:
    for base in cls.__mro__[1:]:
        if issubclass(base, DiffusionPipeline) and not issubclass(base, SteeringMixin) and "__call__" in base.__dict__:
            return base
    raise TypeError(f"{cls.__name__} must derive from a diffusers pipeline class")


def _call_signature(parent: type) -> inspect.Signature:
    """The parent's ``__call__`` signature plus the steering and inline-detection options (keyword-only)."""
    sig = inspect.signature(parent.__call__)
    params = list(sig.parameters.values())
    var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    params = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
             for name, default in [*STEERING_DEFAULTS.items(), *((n, None) for n in INLINE_CALL_PARAMS)]
             if name not in sig.parameters]
    return sig.replace(parameters=[*params, *extra, *var_kw])


class SteeringMixin:
    """Steering for a diffusers pipeline. Subclasses list the mixin first, then the diffusers class, and set:

    - ``denoiser_name``: the pipeline component that is steered (``"unet"`` or ``"transformer"``);
    - optionally override `steering_cfg` when the pipeline's CFG layout is not one batched ``[uncond, cond]`` call.
    """

    denoiser_name: ClassVar[str] = "unet"
    _steering_parent: ClassVar[type]  # the diffusers pipeline class whose ``__call__`` runs (set per subclass)
    _steering_params: ClassVar[tuple[str, ...]] = tuple(STEERING_DEFAULTS)
    # the diffusers parent casts a force_upcast VAE to float32 and back in place (the SDXL pipelines): calls that may
    # do so hold the VAE's lock (`steer.vae_codec.while_upcast`), and steer's own decodes use a float32 copy
    casts_vae_in_place: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__ or not issubclass(cls, DiffusionPipeline):
            return
        parent = _diffusers_parent(cls)
        cls._steering_parent = parent

        def __call__(self, *args: Any, **kwargs: Any):  # noqa: N807
            return self._steered_call(parent, *args, **kwargs)

        __call__.__signature__ = _call_signature(parent)  # type: ignore[attr-defined]
        __call__.__doc__ = (parent.__call__.__doc__ or "") + STEERING_DOC
        __call__.__qualname__ = f"{cls.__name__}.__call__"
        cls.__call__ = __call__  # type: ignore[method-assign]

    def to_json_string(self) -> str:
        """The config as diffusers writes it, naming the diffusers class (``StableDiffusionPipeline``) in a saved
        folder's ``model_index.json``: it named the steered class, which ``DiffusionPipeline`` and ``AutoPipeline*``
        cannot load; steer's loaders map the diffusers name back to the steered class."""
        config = json.loads(super().to_json_string())
        config["_class_name"] = self._steering_parent.__name__
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    # ------------------------------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        """The steered component (the UNet or transformer), unwrapped from `torch.compile`."""
        return unwrap(getattr(self, self.denoiser_name))

    def steering_cfg(self) -> bool:
        """Whether the denoiser's batch is ``[uncond, cond]`` in the current call."""
        return bool(getattr(self, "do_classifier_free_guidance", False))

    def denoiser_rows_per_sample(self, **call_kwargs: Any) -> int:
        """Denoiser batch rows per sample and step of a call with these options: the SD-family rule
        (`steer.calibrate.cfg_rows_per_sample`). Families that decide otherwise override it."""
        return cfg_rows_per_sample(**call_kwargs)

    @torch.no_grad()
    def steering_text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """The conditional text tokens of ``prompts`` as the denoiser reads them (`steer.denoisers.CONTEXT_SITE`),
        one row per prompt. Families whose ``encode_prompt`` differs override this."""
        embeds, _ = self.encode_prompt(list(prompts), self._execution_device, 1, False)
        return embeds

    def steering_word_tokenizers(self) -> list[tuple[Any, int]]:
        """For the take-away's word swap (`steer.word_swap`): the tokenizers whose ids line up with
        `steering_text_embeddings`' positions, each with its first position (SD3 and Flux override it)."""
        return [(self.tokenizer, 0)] if getattr(self, "tokenizer", None) is not None else []

    def steering_word_text(self, prompt: str) -> str:
        """``prompt`` as the tokenizers get it (PixArt, which rewrites it first, overrides this)."""
        return prompt

    @contextlib.contextmanager
    def steering(self, vector: SteeringVector | Sequence[SteeringVector] | str, scale: Any = 1.0, **options: Any) -> Iterator[None]:
        """Apply ``vector`` at ``scale`` to every call inside the block (this thread only) of this pipeline and of
        those made from it, before or inside the block, by `with_sampler` or `steer.pipelines.factory`'s
        ``editing_pipeline`` and ``text_pipeline``; a pipeline made by ``from_pipe`` or `steer.steering_pipeline` is
        one of its own, steered by its own blocks only. `learn_direction`, `fit_take_away` and `fit_edit` inside it
        sample and record unsteered, as outside.

        Args:
            vector: a `SteeringVector`, a path to one, or a list of them.
            scale: as ``steering_scale`` of a call.
            options: the call's ``steering_*`` options, with or without the prefix (``window=``, ``branch=``...).
                Arguments passed to a call inside the block override these.
        """
        settings = {"steering": vector, "steering_scale": scale}
        for key, value in options.items():
            full = key if key.startswith("steering_") else f"steering_{key}"
            if full not in STEERING_DEFAULTS:
                raise TypeError(f"unknown steering option {key!r}; known: {[k[9:] for k in STEERING_DEFAULTS][1:]}")
            settings[full] = value
        with steering_block(self.steering_key(), settings):
            yield

    def steering_key(self) -> int:
        """Which pipeline a `steering` block applies to: this one, or the one a `with_sampler` copy, an editing or a
        text pipeline (`steer.pipelines.factory`) was made from."""
        return self.__dict__.get("_steering_key", id(self))

    def with_sampler(self, name: str | None):
        """This pipeline sampling with sampler ``name`` (``"dpm++2m-karras"``, ``"euler-a"``...): a shallow copy that
        shares the modules and the `steering` blocks in force; see `steer.samplers.with_sampler`."""
        return with_sampler(self, name)

    def _resolve_steering(self, explicit: dict[str, Any], num_images: int, prompts: Sequence[str] | None = None
                          ) -> tuple[dict[str, Any], list[SteeringVector], torch.Tensor | None]:
        """Settings, directions and (rows, directions) scales of this call: built-in defaults < the vectors'
        recommended ones < `steering(...)` < arguments. Two-sided directions come back as their two sides
        (`steer.sliders.split_sides`), each with its own recommended settings; rows whose prompt (``prompts``, one per
        image) states a slider's other side are flipped."""
        # a call naming its own direction takes none of a block's options (they came with the block's direction)
        given = dict(explicit) if "steering" in explicit else {**block_settings(self.steering_key()), **explicit}
        vectors = as_vector_list(self._bundled_files(given.get("steering")))
        scales = None
        if vectors:
            scale = given.get("steering_scale", STEERING_DEFAULTS["steering_scale"])
            scales = parse_scales(scale, len(vectors), num_images)
            check_scale_range(scales)  # the call's own: a slider's flip below multiplies them by its fitted strength
            # the removal window as given, against what the directions listed recommend (callers passing those whole,
            # CLI, batch, replay, app, give that one), before zero columns are dropped and sliders split
            removal, listed = given.get("steering_removal_window"), recommended_settings(vectors)
            vectors, scales, given = without_zero_columns(vectors, scales, given)
        if len(vectors) > 1 and (note := disagreement_note(vectors, given)) is not None:
            warnings.warn(note, UserWarning, stacklevel=4)
        if vectors:
            vectors, scales, given = split_sides(vectors, scales, given, prompts)
            check_removal_window({**given, "steering_removal_window": removal}, listed)  # under the call's final negative
        # a None window (a direction's own) stays: `build_steering_session` resolves it against these split sides
        return {**STEERING_DEFAULTS, **recommended_settings(vectors), **given}, vectors, scales

    def load_direction(self, vector: SteeringVector | str | os.PathLike) -> SteeringVector:
        """One direction as every call takes it: a `SteeringVector`, a path to one, or the name of a bundled
        direction of this model (``"to_blue"``). Anything else, or a list: one line naming what was given."""
        if isinstance(vector, SteeringVector):
            return vector
        if not isinstance(vector, str | os.PathLike):
            raise TypeError(f"expected one direction (a SteeringVector, a path or a bundled name), got {type(vector).__name__}")
        return SteeringVector.load(self._bundled_files(vector))

    def _bundled_files(self, steering: Any, warn: bool = True) -> Any:
        """``steering`` with direction names replaced by their files as every caller takes them
        (`steer.assets.find_direction`): the user's file (``"to_blue"`` or ``"to_blue.safetensors"``) first, with a
        UserWarning (``warn``) where it shadows a bundled direction of the name, then the bundled one (the model
        folder's own ``directions/``, else the embedded demo model's). A bare name that is neither: one line."""
        if isinstance(steering, list | tuple):
            return [self._bundled_files(s, warn) for s in steering]
        if not isinstance(steering, str):
            return steering
        model = getattr(self, "name_or_path", None) or None
        found = find_direction(steering, model)
        if found.note is not None and warn:
            warnings.warn(found.note, UserWarning, stacklevel=2)
        if found.path is not None:
            return str(found.path)
        if os.path.exists(steering) or any(c in steering for c in "/\\") or "." in steering:
            return steering  # a path: SteeringVector.load says what is wrong with it
        bundled = bundled_directions(model)
        raise ValueError(f"no direction file or bundled direction named {steering!r}{did_you_mean(steering, bundled)} "
                         f"(bundled: {', '.join(bundled) or 'none'})")

    def _check_unknown_names(self, bound: inspect.BoundArguments) -> None:
        """A call argument the diffusers pipeline would swallow in its ``**kwargs`` (and ignore) that reads like a
        steering option (``steering_sclae=``, ``stering=``, ``scale=``): one line with the option meant, never a
        silently unsteered image. Other unknown names pass to the pipeline as they would without steer."""
        ours = [*STEERING_DEFAULTS, *self._extra_call_params()]
        swallowed = [p.name for p in bound.signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
        for name in bound.arguments.get(swallowed[0]) or {} if swallowed else {}:
            meant = f"steering_{name}" if f"steering_{name}" in STEERING_DEFAULTS else None
            hint = f"; did you mean {meant!r}?" if meant else did_you_mean(name, ours)
            if hint or name.startswith("steer"):
                raise TypeError(f"{type(self).__name__}() got an unknown argument {name!r}{hint or ''} "
                                f"(steering options: {', '.join(STEERING_DEFAULTS)})")

    @staticmethod
    def _check_call_arguments(bound: inspect.BoundArguments) -> None:
        """What diffusers would fail on deep inside (or, at ``num_inference_steps=-1``, return an image without a
        single denoising step; at ``guidance_scale=nan``, sample without guidance): a guidance scale that is no finite
        number, an empty prompt list, ``num_images_per_prompt`` below 1, ``num_inference_steps`` not
        an integer in [1, `MAX_STEPS`], an image-to-image ``strength`` that runs none of them. One line each."""
        args, params = bound.arguments, bound.signature.parameters
        if isinstance(args.get("prompt"), list | tuple) and not args["prompt"]:
            raise ValueError("prompt is an empty list: give at least one prompt")
        guidance = args.get("guidance_scale")
        if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, numbers.Real)
                                     or not math.isfinite(guidance) or abs(guidance) > MAX_GUIDANCE):
            raise ValueError(f"guidance_scale must be a finite number within +-{MAX_GUIDANCE:g}, got {short(guidance)}")
        per_prompt = args.get("num_images_per_prompt")
        if per_prompt is not None and (isinstance(per_prompt, bool) or not isinstance(per_prompt, numbers.Integral) or per_prompt < 1):
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {short(per_prompt)}")
        if "num_inference_steps" not in params:
            return
        steps = args.get("num_inference_steps", params["num_inference_steps"].default)
        if any(args.get(k) is not None for k in ("timesteps", "sigmas")) or steps is None:
            return  # the schedule is given: diffusers counts the steps from it
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"num_inference_steps must be an integer from 1 to {MAX_STEPS}, got {short(steps)}")
        strength = args.get("strength", params["strength"].default) if "strength" in params else None
        if isinstance(strength, numbers.Real) and not (isinstance(strength, bool) or 0 <= strength <= 1):  # NaN failed in int()
            raise ValueError(f"strength must be a number in (0, 1], got {short(strength)}")
        if isinstance(strength, numbers.Real) and args.get("denoising_start") is None and edit_steps(float(strength), int(steps)) < 1:
            raise ValueError(f"strength {strength:g} of {steps} steps runs no denoising step: raise strength or "
                             f"num_inference_steps (strength x steps >= 1)")

    @staticmethod
    def _pictures_as_decoded(bound: inspect.BoundArguments, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """``args`` and ``kwargs`` with PIL pictures given as ``image`` (RGB) and ``mask_image`` (L) in the mode the
        pipeline reads (`steer.images.pipeline_picture`: an RGBA photo was taken for latents), wherever they were
        passed; everything else as given."""
        names = [n for n in bound.signature.parameters][1:]  # after self
        for name, mode in (("image", "RGB"), ("mask_image", "L")):
            if name not in bound.arguments:
                continue
            value = pipeline_picture(bound.arguments[name], mode, name)
            if value is bound.arguments[name]:
                continue
            if name in kwargs:
                kwargs = {**kwargs, name: value}
            elif names.index(name) < len(args):
                args = (*args[: names.index(name)], value, *args[names.index(name) + 1 :])
        return args, kwargs

    def _take_away_note(self, steering: Any, vector: SteeringVector, scales: torch.Tensor, bound) -> str | None:
        """The hint `steer generate` gives when a prompt states what the call's one direction replaces ("a red
        t-shirt" with to_blue: take to_red away), looked for beside its file and among the bundled directions
        (`steer.take_away.call_take_away_note`)."""
        from steer.take_away import call_take_away_note

        spec = steering[0] if isinstance(steering, list | tuple) and len(steering) == 1 else steering
        path = self._bundled_files(spec, warn=False) if isinstance(spec, str | os.PathLike) else None  # said in the call
        bundled = bundled_directions(getattr(self, "name_or_path", None) or None)
        return call_take_away_note(vector, path, self._row_prompts(bound), scales, bundled)

    @staticmethod
    def _row_prompts(bound: inspect.BoundArguments) -> list[str] | None:
        """The prompt of each image row (diffusers repeats each prompt ``num_images_per_prompt`` times in a row); None
        for a call from prompt embeddings."""
        prompt = bound.arguments.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list | tuple) or not all(isinstance(p, str) for p in prompts):
            return None
        return [p for p in prompts for _ in range(bound.arguments.get("num_images_per_prompt") or 1)]

    @staticmethod
    def _num_images(bound: inspect.BoundArguments) -> int:
        args = bound.arguments
        prompt, embeds = args.get("prompt"), args.get("prompt_embeds")
        if isinstance(prompt, str):
            batch = 1
        elif isinstance(prompt, list):
            batch = len(prompt)
        elif embeds is not None:
            batch = embeds.shape[0]
        else:
            batch = 1
        return batch * (args.get("num_images_per_prompt") or 1)

    def build_steering_session(
        self,
        vectors: list[SteeringVector],
        scales: torch.Tensor,
        config: SteeringConfig | None = None,
        *,
        scheduler: Any = None,
        cfg: Any = None,
        **options: Any,
    ) -> SteeringSession:
        """Validate vectors against this pipeline's denoiser and build the (not yet entered) hook session.

        Args:
            vectors: the directions, on the denoiser's device.
            scales: (rows, vectors) strengths (see `steer.config.parse_scales`).
            config: the call's `SteeringConfig`; or give its fields as keyword ``options`` (``window=``, ...).
            scheduler: a scheduler whose timesteps count the run (default: `steering_num_steps` of this pipeline).
            cfg: a bool or callable telling whether the batch holds ``[uncond, cond]`` (default `steering_cfg`).
        """
        config = config if config is not None else SteeringConfig(**options)
        # a None window: the one its vector records (in a pipeline call, each side of a split slider its own)
        config = dataclasses.replace(config, window=resolve_recorded_windows(config.window, vectors))
        denoiser = self.denoiser
        selected = None
        if config.layers is not None:
            have = {n for v in vectors for n in v.layers}
            selected = []
            for pattern in config.layers:
                hits = resolve_layers(denoiser, [pattern])
                is_glob = any(ch in pattern for ch in GLOB_CHARS)
                missing = [] if is_glob else [n for n in hits if n not in have]
                hits = [n for n in hits if n in have]
                if missing or not hits:
                    raise ValueError(
                        f"steering_layers {pattern!r} is not in the direction(s) {[v.name for v in vectors]}; "
                        f"they have {sorted(have)}"
                    )
                selected += [n for n in hits if n not in selected]
        for v in vectors:
            names = [n for n in v.layers if selected is None or n in selected]
            v.check_compatible(denoiser, names, strict=config.strict)  # model class first, then layer names
        plans: dict[str, LayerPlan] = build_layer_plans(vectors, selected, config.normalize)
        # a call that sets readers routes every direction there; one that sets none reads each where it was calibrated
        routes = recorded_routes(vectors) if config.readers is None and CONTEXT_SITE in plans else None
        if config.readers is not None:  # a one-line error before any sampling, not from inside the first hook call
            if CONTEXT_SITE not in plans:
                raise ValueError(f"steering_readers routes text-token directions ({CONTEXT_SITE!r}); these steer {sorted(plans)}")
            if self._reads_everywhere(config.readers):  # the same as steering the denoiser's text input, at its cost
                config = dataclasses.replace(config, readers=None)
        if routes is not None:
            routes = [None if r is not None and self._reads_everywhere(r) else r for r in routes]
            routes = routes if len(set(routes)) > 1 else None
        counter = (lambda: len(scheduler.timesteps)) if scheduler is not None else self.steering_num_steps
        return SteeringSession(
            denoiser,
            plans,
            scales,
            config,
            num_steps=counter,
            cfg=cfg if cfg is not None else self.steering_cfg,
            text_routes=routes,
        )

    def _reads_everywhere(self, readers: Sequence[str]) -> bool:
        """Whether ``readers`` names every cross-attention of the denoiser (`LayerError` in one line for a name that
        matches none, or a family without routing)."""
        return set(text_readers(self.denoiser, readers)) == set(cross_attention_sites(self.denoiser))

    def compile_unet(self, layers: str | Iterable[str] | None = None, **compile_kwargs: Any) -> None:
        """``torch.compile`` the denoiser with persistent steering sites at ``layers`` (default: every site
        `steer.denoisers.list_layers` lists and the text tokens, `CONTEXT_SITE`, where the default preset's directions
        act). Later steering calls on those layers never recompile when vector, scale, window or route change.

        Args:
            layers: site names or glob patterns to keep steerable.
            compile_kwargs: passed to `torch.compile` (``backend=``, ``mode=``...).
        """
        denoiser = self.denoiser
        existing = getattr(self, "_static_sites", None)
        if existing is not None:
            existing.remove()
        if layers is None:
            layers = [*list_layers(denoiser), *([CONTEXT_SITE] if adapter_for(denoiser).context_dim() else [])]
        sites = StaticSteeringSites(denoiser, list(layers))
        compiled = torch.compile(denoiser, **compile_kwargs)
        sites.attach(compiled)
        self.__dict__["_static_sites"] = sites
        setattr(self, self.denoiser_name, compiled)

    def _call_copy(self):
        """A shallow per-call copy with its own scheduler, so concurrent calls never share loop state."""
        clone = copy.copy(self)
        clone.__dict__["scheduler"] = copy.deepcopy(self.scheduler)
        clone.__dict__.pop("_num_timesteps", None)  # set afresh by the call (stale values would shift the window)
        return clone

    def steering_num_steps(self) -> int:
        """Denoiser steps of the run in progress: what the call set (image-to-image runs fewer than the scheduler's
        timesteps), else the scheduler's count."""
        return int(self.__dict__.get("_num_timesteps") or len(self.scheduler.timesteps))

    def _adopt_call_state(self, call_pipe: Any) -> None:
        """After a call on a per-call copy: the attributes it set (``_guidance_scale``, ``_num_timesteps``,
        ``_interrupt``...) as the parent pipeline would have left them on ``self``."""
        for key, value in call_pipe.__dict__.items():
            if key not in _CALL_LOCAL and self.__dict__.get(key, _CALL_LOCAL) is not value:
                self.__dict__[key] = value

    # ------------------------------------------------------------------------------------------------------------
    def _steered_call(self, parent: type, *args: Any, **kwargs: Any):
        explicit = {k: kwargs.pop(k) for k in list(kwargs) if k in STEERING_DEFAULTS}
        extras = {k: kwargs.pop(k) for k in list(kwargs) if k in self._extra_call_params()}
        bound = inspect.signature(parent.__call__).bind(self, *args, **kwargs)
        self._check_unknown_names(bound)
        self._check_call_arguments(bound)
        if isinstance(steps := bound.arguments.get("num_inference_steps"), int) and not any(
                bound.arguments.get(k) is not None for k in ("timesteps", "sigmas")):
            check_step_count(self.scheduler, steps)  # one line where diffusers failed in the first step
        args, kwargs = self._pictures_as_decoded(bound, args, kwargs)
        num_images = self._num_images(bound)
        settings, vectors, scales = self._resolve_steering(explicit, num_images, self._row_prompts(bound))
        check_steering_request(vectors, scales, settings, self.denoiser.dtype)  # ranges, empty layers
        active = bool(vectors) and bool(scales.abs().sum() > 0)
        listed = settings["steering"]  # one direction left of a list (the others at 0): the call lists its take-away already
        single = not isinstance(listed, list | tuple) or len(listed) == 1
        if active and single and len(vectors) == 1 and (note := self._take_away_note(listed, vectors[0], scales, bound)):
            warnings.warn(note, UserWarning, stacklevel=3)

        # a torch.compile wrapper; compiled in place (.compile(), compile_repeated_blocks()) is refused per site, in one
        # line, where a hook inside a compiled module is put on (`DenoiserAdapter.check_hookable`)
        compiled = hasattr(getattr(self, self.denoiser_name), "_orig_mod")
        sites = self.__dict__.get("_static_sites") if compiled else None
        # Every call, steered or not, runs on a per-call copy with its own scheduler: two calls at once on one
        # pipeline never share loop state (diffusers' own pipelines do), and the copy's state is adopted afterwards.
        # Unsteered (no vector or all scales zero, no detection, no compiled sites), nothing is entered below.
        call_pipe = self._call_copy()
        with contextlib.ExitStack() as stack:
            if sites is None and compiled and active:
                raise RuntimeError(
                    f"pipe.{self.denoiser_name} is torch.compile-d without steering sites: compiled graphs ignore hooks "
                    "added later. Use pipe.compile_unet(layers=...) instead of torch.compile."
                )
            # the sites' buffers are shared by every pipeline calling this denoiser (a copy made before compiling too)
            stack.enter_context(denoiser_use(self))
            if active:
                device = self._execution_device
                vectors = [v.to(device) for v in vectors]
                session = call_pipe.build_steering_session(
                    vectors, scales, SteeringConfig.from_settings(settings), cfg=call_pipe.steering_cfg,
                )
                session.word_swap = plan_word_swap(call_pipe, self._row_prompts(bound), vectors, scales, settings["steering_negative"],
                                                   bound.arguments.get("max_sequence_length"), bound.arguments)
                if sites is not None:
                    outside = [n for n in session.plans if n not in sites.channels]
                    if outside:
                        raise ValueError(f"layers {outside} have no steering site in the compiled denoiser; compile_unet(layers=...) with them")
                    sites.activate(session)  # routes it cannot apply: one line before any sampling
                    stack.callback(sites.deactivate)
                    stack.enter_context(activated(session))
                else:
                    stack.enter_context(session)
            steered_rows = scales.abs().sum(dim=1) > 0 if active else None  # (images,) rows with a non-zero scale
            finish = self._enter_extras(call_pipe, stack, extras, num_images, steered_rows)
            # SDXL's cast a force_upcast VAE to float32 and back in place to decode or encode (steer.vae_codec); a
            # text-to-image call that returns latents touches no VAE
            if self.casts_vae_in_place and not (bound.arguments.get("output_type") == "latent" and bound.arguments.get("image") is None):
                stack.enter_context(while_upcast(self))
            try:
                output = parent.__call__(call_pipe, *args, **kwargs)
            finally:
                self._adopt_call_state(call_pipe)
            if bound.arguments.get("output_type") == "latent":  # decoded images are checked before postprocessing
                refuse_non_finite(output[0] if isinstance(output, tuple) else output.images, "the generated latent")
            return finish(output) if finish is not None else output

    # Extension points for inline measurements (memorization detection) ------------------------------------------
    def _extra_call_params(self) -> tuple[str, ...]:
        return INLINE_CALL_PARAMS

    def _enter_extras(self, call_pipe, stack: contextlib.ExitStack, extras: dict[str, Any], num_images: int,
                      steered_rows: torch.Tensor | None = None):
        return enter_inline_detection(call_pipe, stack, extras, num_images, steered_rows)

    # ------------------------------------------------------------------------------------------------------------
    def learn_direction(self, positive, negative=None, **kwargs: Any) -> SteeringVector:
        """Learn a `SteeringVector` training-free; see `steer.learn.learn_direction`."""
        return learn_direction(self, positive, negative, **kwargs)

    def fit_take_away(self, vector, away, **kwargs: Any):
        """Fit the strength and window at which ``vector`` replaces what prompts state along ``away``; see
        `steer.take_away.fit_take_away`."""
        from steer.take_away import fit_take_away

        return fit_take_away(self, self.load_direction(vector), self.load_direction(away), **kwargs)

    def fit_edit(self, vector, strength: float | None = None, **kwargs: Any):
        """Fit the scale at which ``vector`` edits a given image at ``strength`` as far as its own positive prompts do
        (the image-to-image pipeline's default strength when None); see `steer.edit_fit.fit_edit`. Works from a
        text-to-image, image-to-image or inpainting pipeline: the fit draws and edits images with the model's
        text-to-image and image-to-image pipelines, sharing these modules."""
        from steer.edit_fit import fit_edit
        from steer.pipelines.factory import default_strength, editing_pipeline, text_pipeline

        edit = editing_pipeline(self, "img2img")
        if strength is None:
            strength = default_strength(edit)
        return fit_edit(text_pipeline(self), edit, self.load_direction(vector), strength=strength, **kwargs)

    def invert_image(self, image, prompt: str, **kwargs: Any):
        """Invert ``image`` for ``prompt`` so that `ImageInversion.edit` steers the picture itself (its unsteered rows
        give it back); see `steer.inversion.invert_image`. From a text-to-image pipeline of a DDIM-compatible family
        (SD, SDXL) or stepping flow-matching Euler (SD3, Flux); an image-to-image or inpainting one inverts through
        its model's text-to-image pipeline."""
        from steer.inversion import invert_image
        from steer.pipelines.factory import text_pipeline

        return invert_image(text_pipeline(self), image, prompt, **kwargs)

    def detect_memorization(self, prompt, **kwargs: Any):
        """Generate, score (inline and re-encode) and judge memorization; see `steer.detect.detector.detect_memorization`."""
        return detect_memorization(self, prompt, **kwargs)
