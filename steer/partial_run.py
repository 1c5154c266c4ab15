"""Run part of a denoising schedule: steps ``[first, stop)`` of an ``n``-step run, from given latents.

The calibration of ``window="auto"`` compares a direction steered over the first half of the run with one steered
over the whole run. At the same strength both runs are identical up to the step where the shorter window ends, so
that first part is sampled once (`partial_pipeline` with ``(0, k)``) and both continuations start from its latents
(``(k, n)``): one unsteered, one still steered (`steer.calibrate.calibrate_windows`).

That is exact only for samplers whose step depends on nothing but the latents and the current step of the schedule,
with no noise drawn and no history of earlier steps (`resumable`): DDIM with ``eta=0``, the flow-matching Euler
scheduler without stochastic sampling (SD3, Flux) and Euler discrete (SDXL's default; its pipelines draw no churn
noise). A resumed Euler discrete run starts from latents already at their step's noise level, so they are not scaled
by the schedule's first sigma again.

DPM-Solver (multistep, deterministic: ``dpmsolver++`` / ``dpmsolver``; PixArt's default, SD's "DPM++ 2M") keeps the
model outputs of earlier steps and lowers the order of its last steps by the schedule's length. A part of its run
keeps the whole schedule for each step (only the loop sees the part), and the first part's solver history is handed
to the calls that continue it (`SolverCarry`: per image, in call order, so those calls must split their images as the
caller says). Other schedulers (UniPC, ancestral and SDE samplers) are not split: their callers run every candidate
whole.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)


def resumable(scheduler: Any, **call_kwargs: Any) -> bool:
    """Whether a run with ``scheduler`` (and these call options) can be cut between steps and resumed exactly."""
    if type(scheduler) is DDIMScheduler:
        return float(call_kwargs.get("eta", 0.0) or 0.0) == 0.0
    if type(scheduler) is FlowMatchEulerDiscreteScheduler:
        return not scheduler.config.get("stochastic_sampling", False)
    if type(scheduler) is DPMSolverMultistepScheduler:  # the SDE variants draw noise at every step
        return scheduler.config.get("algorithm_type") in ("dpmsolver++", "dpmsolver")
    # Euler discrete draws noise only with churn (``s_churn`` of its ``step``, which the pipelines leave at 0)
    return type(scheduler) is EulerDiscreteScheduler


def keeps_history(scheduler: Any) -> bool:
    """Whether a resumed part of a run needs the solver history of the part before it (`SolverCarry`)."""
    return isinstance(scheduler, DPMSolverMultistepScheduler)


class SolverCarry:
    """A multistep solver's history handed from the calls that run the first part of a run to those that continue it.

    Every call on the first part (`partial_pipeline` with this carry) records its images' history when it reaches the
    end of its part; `repeat` lays the recorded histories out for the continuing images (``copies`` times the first
    part's, split ``batch_size`` images per call, as `steer.calibrate.sample_latents` splits them); every continuing
    call takes the next. Shared, not copied, by the per-call copies of the scheduler. Stateless schedulers ignore it.
    """

    def __init__(self) -> None:
        self.saved: list[tuple[list[torch.Tensor | None], int]] = []
        self.queue: list[tuple[list[torch.Tensor | None], int]] = []

    def __deepcopy__(self, memo: dict) -> SolverCarry:
        return self

    def save(self, scheduler: Any) -> None:
        self.saved.append(([None if t is None else t.clone() for t in scheduler.model_outputs], int(scheduler.lower_order_nums)))

    def repeat(self, copies: int, batch_size: int | None) -> None:
        """Lay out the recorded histories for ``copies`` x the recorded images, ``batch_size`` per call (None: one)."""
        if not self.saved:
            self.queue = []
            return
        orders = {n for _, n in self.saved}
        if len(orders) != 1:
            raise RuntimeError(f"the first part's calls reached different solver orders {sorted(orders)}")
        order = orders.pop()
        slots = [[h[j] for h, _ in self.saved] for j in range(len(self.saved[0][0]))]
        rows = [None if parts[0] is None else torch.cat(parts * copies) for parts in slots]
        total = next((len(r) for r in rows if r is not None), 0)
        size = batch_size or total or 1
        self.queue = [([None if r is None else r[i : i + size] for r in rows], order) for i in range(0, max(total, 1), size)]

    def restore(self, scheduler: Any) -> None:
        if not self.queue:
            raise RuntimeError("a resumed multistep run has no solver history: run the first part with the same carry and call repeat()")
        outputs, order = self.queue.pop(0)
        scheduler.model_outputs = [None if t is None else t.clone() for t in outputs]
        scheduler.lower_order_nums = order


def _span_class(cls: type) -> type:
    """``cls`` whose ``set_timesteps`` keeps only steps ``[first, stop)`` of the schedule (``self.span``); the step
    sizes still come from the whole schedule. Its signature is the original's (pipelines inspect it for ``sigmas=``).
    Euler discrete: a run that starts after step 0 takes its latents as they are (``init_noise_sigma`` 1). DPM-Solver:
    ``step`` reads the whole schedule (its step index and last-step order rules), a part that starts after step 0
    takes its solver history from ``self.carry`` and a part that ends before the last step records it there."""

    @functools.wraps(cls.set_timesteps)
    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        cls.set_timesteps(self, *args, **kwargs)
        first, stop = self.span
        self.whole_timesteps = self.timesteps
        self.timesteps = self.timesteps[first:stop]
        if isinstance(self, FlowMatchEulerDiscreteScheduler | EulerDiscreteScheduler):  # sigma i and i + 1 make step i
            self.sigmas = self.sigmas[first : stop + 1]
        if keeps_history(self) and first > 0:  # continue where the first part's calls left off
            self.carry.restore(self)
            self._step_index = first

    members: dict[str, Any] = {"set_timesteps": set_timesteps}
    if issubclass(cls, DPMSolverMultistepScheduler):

        @functools.wraps(cls.step)
        def step(self, *args: Any, **kwargs: Any) -> Any:
            part, self.timesteps = self.timesteps, self.whole_timesteps  # its order rules read the whole schedule
            try:
                out = cls.step(self, *args, **kwargs)
            finally:
                self.timesteps = part
            if self._step_index == self.span[1] < len(self.whole_timesteps):  # the first part's end: hand on
                self.carry.save(self)
            return out

        members["step"] = step
    if issubclass(cls, EulerDiscreteScheduler):
        base_sigma = cls.init_noise_sigma

        def init_noise_sigma(self) -> Any:
            # the pipelines scale given latents by it: the first step's noise level, already in resumed latents
            return base_sigma.fget(self) if self.span[0] == 0 else 1.0

        members["init_noise_sigma"] = property(init_noise_sigma)
    return type(f"Span{cls.__name__}", (cls,), members)


def partial_pipeline(pipe: Any, first: int, stop: int, carry: SolverCarry | None = None) -> Any:
    """A shallow copy of ``pipe`` (same modules) whose calls run only steps ``[first, stop)`` of their schedule.

    Call it with ``latents=`` the latents after step ``first`` (from a call on ``partial_pipeline(pipe, 0, first)``
    with the same ``num_inference_steps``) and ``output_type="latent"``; a steering window is then a share of these
    ``stop - first`` steps. ``pipe`` itself is not changed (concurrent calls on it are unaffected). Multistep solvers
    (`keeps_history`) need one ``carry`` for both parts, with ``carry.repeat(...)`` called between them.
    """
    if not resumable(pipe.scheduler):
        raise ValueError(f"{type(pipe.scheduler).__name__} runs cannot be cut and resumed exactly")
    if carry is None and keeps_history(pipe.scheduler):
        raise ValueError(f"{type(pipe.scheduler).__name__} keeps a solver history: pass the same SolverCarry to both parts of the run")
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.__class__ = _span_class(type(scheduler))
    scheduler.span = (int(first), int(stop))
    scheduler.carry = carry if carry is not None else SolverCarry()
    part = copy.copy(pipe)
    part.__dict__["scheduler"] = scheduler
    return part
