"""Samplers by name: the diffusers schedulers an SD-family pipeline can swap in, under the names users know them by
(``"dpm++2m-karras"``, ``"euler-a"``), built from the pipeline's own scheduler config.

The names follow diffusers' table of A1111 samplers (docs: "Schedulers", *Stable Diffusion WebUI equivalents*);
``-karras`` variants set ``use_karras_sigmas`` on the schedulers that have it, and every name sets the toggles it is
about explicitly (the plain ``"dpm++2m"`` turns Karras sigmas off even when the model's config turns them on), so a
name means the same sampler on every model. Any scheduler class the pipeline's scheduler lists as compatible is also
accepted by its class name (``"DPMSolverSinglestepScheduler"``), built from the config as is. As with diffusers'
``X.from_config(pipe.scheduler.config)``, entries the model's config took as defaults (a scheduler built in code
rather than loaded from a folder lists them in ``_use_default_values``) are the new class's own defaults, not carried
over: the same name on the same folder always builds the same sampler.

`with_sampler(pipe, name)` returns a shallow copy of the pipeline with that scheduler (the modules are shared, nothing
is loaded or moved), so one loaded pipeline serves calls with different samplers at once (the app), and everything
that runs on the copy (a call, `learn_direction`, `fit_take_away`, memorization detection) uses the sampler.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import diffusers
import torch
from diffusers.configuration_utils import FrozenDict

from steer.validation import did_you_mean

_SIGMA_TOGGLES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_MAX_NAME = 100
# Listed as compatible by diffusers' SD-family schedulers but made for models trained in the EDM formulation: on an
# epsilon- or v-prediction model it samples noise (looked at on the demo model).
_NOT_INTERCHANGEABLE = frozenset({"EDMEulerScheduler"})


@dataclass(frozen=True)
class Sampler:
    """A named sampler: a diffusers scheduler class and the config entries the name fixes."""

    name: str
    scheduler_class: str
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _table() -> dict[str, Sampler]:
    """The named samplers: each base name, and its ``-karras`` variant where the class has Karras sigmas."""
    base = [  # name, class, the settings the name fixes, how it samples, whose default it is
        ("ddim", "DDIMScheduler", {}, "deterministic (eta 0)", ""),
        ("ddpm", "DDPMScheduler", {}, "ancestral, meant for many steps", ""),
        ("pndm", "PNDMScheduler", {"skip_prk_steps": True}, "PLMS: no Runge-Kutta warm-up", "SD 1.x's default"),
        ("lms", "LMSDiscreteScheduler", {}, "", ""),
        ("euler", "EulerDiscreteScheduler", {}, "", "SDXL's default"),
        ("euler-a", "EulerAncestralDiscreteScheduler", {}, "ancestral: draws noise every step", ""),
        ("heun", "HeunDiscreteScheduler", {}, "second order: two denoiser calls per step", ""),
        ("dpm2", "KDPM2DiscreteScheduler", {}, "second order: two denoiser calls per step", ""),
        ("dpm2-a", "KDPM2AncestralDiscreteScheduler", {}, "second order, ancestral", ""),
        ("dpm++2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "", "PixArt-Sigma's default"),
        ("dpm++2m-sde", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
         "draws noise every step", ""),
        ("dpm++2s", "DPMSolverSinglestepScheduler",
         {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True},
         "single-step; A1111's 'DPM++ SDE' in diffusers' table", ""),
        ("unipc", "UniPCMultistepScheduler", {}, "", ""),
        ("deis", "DEISMultistepScheduler", {}, "", ""),
        ("flow-euler", "FlowMatchEulerDiscreteScheduler", {}, "flow matching", "SD3's and Flux's default"),
    ]
    table: dict[str, Sampler] = {}
    for name, cls_name, settings, how, whose in base:
        toggles = _sigma_toggles(cls_name)
        table[name] = Sampler(name, cls_name, {**settings, **dict.fromkeys(toggles, False)}, "; ".join(filter(None, (how, whose))))
        if "use_karras_sigmas" in toggles and not name.startswith("flow"):
            karras = {**settings, **dict.fromkeys(toggles, False), "use_karras_sigmas": True}
            table[f"{name}-karras"] = Sampler(f"{name}-karras", cls_name, karras, "; ".join(filter(None, (how, "Karras sigmas"))))
    return table


def _sigma_toggles(cls_name: str) -> tuple[str, ...]:
    import inspect

    params = inspect.signature(getattr(diffusers, cls_name).__init__).parameters
    return tuple(t for t in _SIGMA_TOGGLES if t in params)


SAMPLERS: dict[str, Sampler] = _table()


def _fitting_classes(scheduler: Any) -> set[str]:
    """Class names of the schedulers that can replace ``scheduler``: its own and those it lists as compatible
    (diffusers' ``compatibles``; the flow-matching ones list only themselves)."""
    listed = {c.__name__ for c in getattr(scheduler, "compatibles", ())} - _NOT_INTERCHANGEABLE
    return {type(scheduler).__name__, *listed}


def sampler_names(scheduler: Any) -> list[str]:
    """The sampler names that fit a pipeline whose scheduler is ``scheduler``, in table order."""
    fitting = _fitting_classes(scheduler)
    return [name for name, s in SAMPLERS.items() if s.scheduler_class in fitting]


def _lookup(scheduler: Any, name: Any) -> tuple[str, dict[str, Any]]:
    """(class name, settings) of sampler ``name`` for this pipeline's ``scheduler``; one-line `ValueError` otherwise."""
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise ValueError(f"a sampler is a name such as 'dpm++2m' or 'euler-a', got {str(name)[:_MAX_NAME]!r}")
    fitting = _fitting_classes(scheduler)
    names = sampler_names(scheduler)
    key = name.strip()
    if key.lower() in SAMPLERS:
        sampler = SAMPLERS[key.lower()]
        if sampler.scheduler_class not in fitting:
            raise ValueError(
                f"sampler {key!r} ({sampler.scheduler_class}) does not fit this pipeline, whose scheduler is "
                f"{type(scheduler).__name__}; samplers that fit: {', '.join(names)}"
            )
        return sampler.scheduler_class, dict(sampler.settings)
    by_class = {c.lower(): c for c in fitting}
    if key.lower() in by_class:
        return by_class[key.lower()], {}
    raise ValueError(f"unknown sampler {key!r}{did_you_mean(key.lower(), names)}; samplers that fit this pipeline: "
                     f"{', '.join(names)}, or the class name of a scheduler compatible with {type(scheduler).__name__}")


def known_sampler(name: Any) -> str:
    """``name`` stripped when it is a sampler name or a diffusers scheduler class name, whatever the model (a command
    line checks this before loading one; `build_sampler` then checks that it fits); one-line `ValueError` otherwise."""
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise ValueError(f"a sampler is a name such as 'dpm++2m' or 'euler-a', got {str(name)[:_MAX_NAME]!r}")
    key = name.strip()
    classes = {n.lower() for n in dir(diffusers) if n.endswith("Scheduler")}
    if key.lower() not in SAMPLERS and key.lower() not in classes:
        raise ValueError(f"unknown sampler {key!r}{did_you_mean(key.lower(), SAMPLERS)}; known: {', '.join(SAMPLERS)}, "
                         "or a diffusers scheduler class name (not all fit every model: `steer samplers --model M` lists those that do)")
    return key


def check_sampler(scheduler: Any, name: Any) -> str:
    """The canonical spelling of sampler ``name`` (its `SAMPLERS` name, or the scheduler class name) when it fits a
    pipeline whose scheduler is ``scheduler``, without building it; one-line `ValueError` otherwise."""
    cls_name, _ = _lookup(scheduler, name)
    key = name.strip().lower()
    return key if key in SAMPLERS else cls_name


def build_sampler(scheduler: Any, name: str) -> Any:
    """A new scheduler for sampler ``name``, from ``scheduler``'s config (its betas, prediction type, timestep
    spacing...) with the entries the name fixes.

    Args:
        scheduler: the pipeline's scheduler (its config is the base).
        name: a name of `SAMPLERS` (case-insensitive) or the class name of a compatible scheduler.
    """
    cls_name, settings = _lookup(scheduler, name)
    try:
        return getattr(diffusers, cls_name).from_config(scheduler.config, **settings)
    except ImportError as err:  # diffusers' placeholder for a class whose optional package is missing (torchsde)
        raise ValueError(f"sampler {name.strip()!r} ({cls_name}) needs a package that is not installed: "
                         f"{' '.join(str(err).split())[:200]}") from None


def sampler_name(scheduler: Any) -> str:
    """The name in `SAMPLERS` this scheduler is (its class, and every entry that name fixes equal), else its class
    name: what a recipe records so the image can be made again with ``--sampler``."""
    cls_name = type(scheduler).__name__
    config = getattr(scheduler, "config", {})
    for name, sampler in SAMPLERS.items():
        if sampler.scheduler_class == cls_name and all(config.get(k) == v for k, v in sampler.settings.items()):
            return name
    return cls_name


def with_sampler(pipe: Any, name: str | None) -> Any:
    """``pipe`` sampling with sampler ``name``: a shallow copy whose scheduler is `build_sampler`'s (the modules,
    hooks and compiled graphs are the pipeline's own; its config names the new scheduler class). ``None``: ``pipe``.

    Args:
        pipe: a diffusers pipeline (steered or not).
        name: a sampler name (`SAMPLERS`, `sampler_names`) or a compatible scheduler's class name.
    """
    if name is None:
        return pipe
    return with_scheduler(pipe, build_sampler(pipe.scheduler, name))


def with_scheduler(pipe: Any, scheduler: Any) -> Any:
    """A shallow copy of ``pipe`` stepping ``scheduler`` (modules, hooks and compiled graphs shared; its config names
    the scheduler's class): what `with_sampler` returns for a scheduler made elsewhere."""
    clone = copy.copy(pipe)
    clone.__dict__["scheduler"] = scheduler
    library = pipe.config.get("scheduler", ("diffusers", None))[0] or "diffusers"
    clone.__dict__["_internal_dict"] = FrozenDict({**pipe.config, "scheduler": (library, type(scheduler).__name__)})
    if callable(getattr(pipe, "steering_key", None)):  # `pipe.steering(...)` blocks in force apply to the copy too
        clone.__dict__["_steering_key"] = pipe.steering_key()
    return clone


def check_step_count(scheduler: Any, steps: int) -> None:
    """A one-line ValueError for a step count ``scheduler`` cannot place within its training timesteps (DDIM's
    "leading" spacing with ``steps_offset=1`` puts the first (noisiest) of 1000 steps at timestep 1000 of 0-999, and diffusers
    failed with an IndexError in the first step); nothing for any count it can, or a scheduler it cannot try here."""
    train = getattr(scheduler.config, "num_train_timesteps", None)
    # only a scheduler that looks its integer timesteps up in a table can overflow it (DDIM, DDPM, PNDM, LCM); sigma
    # and flow-matching schedulers interpolate (a flow-matching run starts at exactly 1000.0), and only counts near
    # the training length can
    if not isinstance(train, int) or steps < train // 2 or getattr(scheduler, "alphas_cumprod", None) is None \
            or getattr(scheduler, "sigmas", None) is not None:
        return

    def overflows(count: int) -> bool:
        probe = copy.deepcopy(scheduler)
        try:
            probe.set_timesteps(count)
        except Exception:  # noqa: BLE001 - a scheduler needing more to set its steps (Flux's mu): not this check's
            return False
        timesteps = getattr(probe, "timesteps", None)
        if timesteps is None or len(timesteps) == 0 or (isinstance(timesteps, torch.Tensor) and timesteps.is_floating_point()):
            return False
        return int(max(timesteps)) >= len(probe.alphas_cumprod)

    if not overflows(steps):
        return
    fits = next((n for n in range(steps - 1, max(steps - 64, 0), -1) if not overflows(n)), None)
    spacing, offset = scheduler.config.get("timestep_spacing"), scheduler.config.get("steps_offset")
    raise ValueError(f"num_inference_steps={steps} does not fit this sampler ({type(scheduler).__name__}, {spacing} "
                     f"spacing, steps_offset {offset}): its first (noisiest) step falls past its {train} training timesteps; "
                     + (f"use at most {fits}" if fits else "use fewer steps"))
