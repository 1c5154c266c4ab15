"""Run part of a denoising schedule: steps ``[first, stop)`` of an ``n``-step run, from given latents.

The calibration of ``window="auto"`` compares a direction steered over the first half of the run with one steered
over the whole run. At the same strength both runs are identical up to the step where the shorter window ends, so
that first part is sampled once (`partial_pipeline` with ``(0, k)``) and both continuations start from its latents
(``(k, n)``): one unsteered, one still steered (`steer.calibrate.calibrate_windows`).

That is exact only for samplers whose step depends on nothing but the latents and the current timestep, with no
noise drawn and no history of earlier steps: DDIM with ``eta=0`` and the flow-matching Euler scheduler without
stochastic sampling (`resumable`). Other schedulers (Euler discrete scales the starting latents by its first sigma,
multistep solvers keep earlier model outputs) are not split; their callers run every candidate whole.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler


def resumable(scheduler: Any, **call_kwargs: Any) -> bool:
    """Whether a run with ``scheduler`` (and these call options) can be cut between steps and resumed exactly."""
    if type(scheduler) is DDIMScheduler:
        return float(call_kwargs.get("eta", 0.0) or 0.0) == 0.0
    if type(scheduler) is FlowMatchEulerDiscreteScheduler:
        return not scheduler.config.get("stochastic_sampling", False)
    return False


def _span_class(cls: type) -> type:
    """``cls`` whose ``set_timesteps`` keeps only steps ``[first, stop)`` of the schedule (``self.span``); the step
    sizes still come from the whole schedule. Its signature is the original's (pipelines inspect it for ``sigmas=``)."""

    @functools.wraps(cls.set_timesteps)
    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        cls.set_timesteps(self, *args, **kwargs)
        first, stop = self.span
        self.timesteps = self.timesteps[first:stop]
        if isinstance(self, FlowMatchEulerDiscreteScheduler):  # sigma i and i + 1 make step i
            self.sigmas = self.sigmas[first : stop + 1]

    return type(f"Span{cls.__name__}", (cls,), {"set_timesteps": set_timesteps})


def partial_pipeline(pipe: Any, first: int, stop: int) -> Any:
    """A shallow copy of ``pipe`` (same modules) whose calls run only steps ``[first, stop)`` of their schedule.

    Call it with ``latents=`` the latents after step ``first`` (from a call on ``partial_pipeline(pipe, 0, first)``
    with the same ``num_inference_steps``) and ``output_type="latent"``; a steering window is then a share of these
    ``stop - first`` steps. ``pipe`` itself is not changed (concurrent calls on it are unaffected).
    """
    if not resumable(pipe.scheduler):
        raise ValueError(f"{type(pipe.scheduler).__name__} runs cannot be cut and resumed exactly")
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.__class__ = _span_class(type(scheduler))
    scheduler.span = (int(first), int(stop))
    part = copy.copy(pipe)
    part.__dict__["scheduler"] = scheduler
    return part
