"""Run part of a denoising schedule: steps ``[first, stop)`` of an ``n``-step run, from given latents.

The calibration of ``window="auto"`` compares a direction steered over the first half of the run with one steered
over the whole run. At the same strength both runs are identical up to the step where the shorter window ends, so
that first part is sampled once (`partial_pipeline` with ``(0, k)``) and both continuations start from its latents
(``(k, n)``): one unsteered, one still steered (`steer.calibrate.calibrate_windows`).

That is exact only for samplers whose step depends on nothing but the latents and the current step of the schedule,
with no noise drawn and no history of earlier steps (`resumable`): DDIM with ``eta=0``, the flow-matching Euler
scheduler without stochastic sampling (SD3, Flux) and Euler discrete (SDXL's default; its pipelines draw no churn
noise). A resumed Euler discrete run starts from latents already at their step's noise level, so they are not scaled
by the schedule's first sigma again. Multistep solvers (DPM-Solver, UniPC) keep earlier model outputs and order
their last steps by the schedule's length; they are not split, and their callers run every candidate whole.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler


def resumable(scheduler: Any, **call_kwargs: Any) -> bool:
    """Whether a run with ``scheduler`` (and these call options) can be cut between steps and resumed exactly."""
    if type(scheduler) is DDIMScheduler:
        return float(call_kwargs.get("eta", 0.0) or 0.0) == 0.0
    if type(scheduler) is FlowMatchEulerDiscreteScheduler:
        return not scheduler.config.get("stochastic_sampling", False)
    # Euler discrete draws noise only with churn (``s_churn`` of its ``step``, which the pipelines leave at 0)
    return type(scheduler) is EulerDiscreteScheduler


def _span_class(cls: type) -> type:
    """``cls`` whose ``set_timesteps`` keeps only steps ``[first, stop)`` of the schedule (``self.span``); the step
    sizes still come from the whole schedule. Its signature is the original's (pipelines inspect it for ``sigmas=``).
    Euler discrete: a run that starts after step 0 takes its latents as they are (``init_noise_sigma`` 1)."""

    @functools.wraps(cls.set_timesteps)
    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        cls.set_timesteps(self, *args, **kwargs)
        first, stop = self.span
        self.timesteps = self.timesteps[first:stop]
        if isinstance(self, FlowMatchEulerDiscreteScheduler | EulerDiscreteScheduler):  # sigma i and i + 1 make step i
            self.sigmas = self.sigmas[first : stop + 1]

    members: dict[str, Any] = {"set_timesteps": set_timesteps}
    if issubclass(cls, EulerDiscreteScheduler):
        base_sigma = cls.init_noise_sigma

        def init_noise_sigma(self) -> Any:
            # the pipelines scale given latents by it: the first step's noise level, already in resumed latents
            return base_sigma.fget(self) if self.span[0] == 0 else 1.0

        members["init_noise_sigma"] = property(init_noise_sigma)
    return type(f"Span{cls.__name__}", (cls,), members)


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
