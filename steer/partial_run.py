"""Run part of a denoising schedule: steps ``[first, stop)`` of an ``n``-step run, from given latents.

The calibration of ``window="auto"`` compares a direction steered over the first half of the run with one steered
over the whole run. At the same strength both runs are identical up to the step where the shorter window ends, so
that first part is sampled once (`partial_pipeline` with ``(0, k)``) and both continuations start from its latents
(``(k, n)``): one unsteered, one still steered (`steer.calibrate.calibrate_windows`).

A resumed part must step exactly as the whole run would have from there:

- Its step sizes come from the whole schedule. Euler-type schedulers (Euler discrete, SDXL's default; Euler
  ancestral; flow-matching Euler, SD3's and Flux's) slice their sigmas with the timesteps, and since the pipelines
  scale given latents by the schedule's first noise level, a part that starts after step 0 reports 1 there.
- Multistep solvers (DPM-Solver, PixArt's default and SD's "DPM++ 2M", and its single-step variant; DEIS; UniPC with
  its corrector; LMS) keep the model outputs of earlier steps and lower the order of their last steps by the
  schedule's length: each step sees the whole schedule (only the pipeline's loop sees the part), and the solver
  history at the end of the first part is handed to the calls that continue it (`SolverCarry`: per image, in call
  order, so those calls must split their images as the caller says).
- Second-order samplers (Heun, KDPM2 and its ancestral variant) call the denoiser twice a step; a cut between the two
  calls hands the half-step (its sample, derivative and step size) on the same way.
- Samplers that draw noise at every step (DDIM with ``eta > 0``, DDPM, Euler ancestral, KDPM2 ancestral, the SDE
  variants of DPM-Solver) are exact when every image has its own generator (as `steer.calibrate.sample_latents` gives
  them): the carry hands each image's generator state on too, so the continuation draws the noise the whole run would
  have.

PNDM (SD 1.x's default) keeps its last model outputs and a step counter the same way; its run is one denoiser call
longer than its ``num_inference_steps``, Heun's and KDPM2's ``2 n - 1`` calls (`run_length`), and windows are shares
of that run.

Not split (`resumable` False; their callers run every candidate whole): Brownian-tree samplers
(`DPMSolverSDEScheduler`), UniPC with a separate ``solver_p``, flow-matching Euler with stochastic sampling (its
pipelines pass it no generator), and schedulers outside the SD family's interchangeable set (LCM, TCD, EDM...).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

# a multistep solver's history: the fields that hold one row per image (tensors, or lists of them) and those the
# whole batch shares (step counts, orders, timesteps)
_HISTORY: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {
    DPMSolverMultistepScheduler: (("model_outputs",), ("lower_order_nums",)),
    DEISMultistepScheduler: (("model_outputs",), ("lower_order_nums",)),
    UniPCMultistepScheduler: (("model_outputs", "last_sample"), ("lower_order_nums", "this_order", "timestep_list")),
    PNDMScheduler: (("ets", "cur_sample", "cur_model_output"), ("counter",)),
    DPMSolverSinglestepScheduler: (("model_outputs", "sample"), ()),
    LMSDiscreteScheduler: (("derivatives",), ()),
    # second-order samplers: two denoiser calls a step, a cut between them hands the half-step on
    HeunDiscreteScheduler: (("prev_derivative", "sample"), ("dt",)),
    KDPM2DiscreteScheduler: (("sample",), ()),
    KDPM2AncestralDiscreteScheduler: (("sample",), ("dt",)),
}
# schedulers whose run is not one denoiser call per step (`run_length`)
_LONGER_RUNS = (PNDMScheduler, HeunDiscreteScheduler, KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler)
_SLICED_SIGMAS = (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler)


def _history_fields(scheduler: Any) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    return next((fields for cls, fields in _HISTORY.items() if isinstance(scheduler, cls)), None)


def resumable(scheduler: Any) -> bool:
    """Whether a run with ``scheduler`` can be cut between steps and resumed exactly (with any call options; a sampler
    that draws noise needs one generator per image, `draws_noise`)."""
    kind = type(scheduler)
    if kind is FlowMatchEulerDiscreteScheduler:
        return not scheduler.config.get("stochastic_sampling", False)
    if kind is UniPCMultistepScheduler:
        return not scheduler.config.get("solver_p")
    # Euler discrete draws noise only with churn (``s_churn`` of its ``step``, which the pipelines leave at 0); Heun
    # and KDPM2 only with theirs (none)
    return kind in (DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, *_HISTORY)


def run_length(pipe: Any, num_inference_steps: int) -> int:
    """Denoiser calls in a ``num_inference_steps`` run of ``pipe`` (the steps its windows are shares of): as many,
    but with PNDM one more (its second step evaluates the first's noise level again) or, without ``skip_prk_steps``,
    its Runge-Kutta warm-up's more; with Heun and KDPM2 two a step but the last (``2 n - 1``)."""
    scheduler = pipe.scheduler
    if isinstance(scheduler, _LONGER_RUNS):
        probe = copy.deepcopy(scheduler)
        probe.set_timesteps(int(num_inference_steps))
        return len(probe.timesteps)
    return int(num_inference_steps)


def keeps_history(scheduler: Any) -> bool:
    """Whether a resumed part of a run needs the solver history of the part before it (`SolverCarry`)."""
    return _history_fields(scheduler) is not None


def draws_noise(scheduler: Any, **step_kwargs: Any) -> bool:
    """Whether ``scheduler``'s step (with these options: a DDIM step's ``eta``) draws noise from its generator."""
    if isinstance(scheduler, DDIMScheduler):
        return float(step_kwargs.get("eta", 0.0) or 0.0) > 0.0
    if isinstance(scheduler, DPMSolverMultistepScheduler | DPMSolverSinglestepScheduler):
        return scheduler.config.get("algorithm_type") in ("sde-dpmsolver", "sde-dpmsolver++")
    return isinstance(scheduler, EulerAncestralDiscreteScheduler | KDPM2AncestralDiscreteScheduler | DDPMScheduler)


def _rows(values: Sequence[Any]) -> Any:
    """One per-image field of several calls' records, their images in order (None where the calls had none)."""
    first = values[0]
    if isinstance(first, list):
        return [_rows([v[j] for v in values]) for j in range(len(first))]
    return torch.cat(values) if isinstance(first, torch.Tensor) else first  # None, or a scalar not yet accumulated


def _take(value: Any, rows: slice) -> Any:
    if isinstance(value, list):
        return [_take(v, rows) for v in value]
    return value[rows] if isinstance(value, torch.Tensor) else value


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value.clone() if isinstance(value, torch.Tensor) else value


def _same(a: Any, b: Any) -> bool:
    """Whether two recorded values are equal (tensors compared whole, not by ``==``'s elementwise result)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    return a == b


class SolverCarry:
    """What the calls that run the first part of a run hand to those that continue it: a multistep solver's history
    and, for samplers that draw noise, each image's generator state.

    Every call on the first part (`partial_pipeline` with this carry) records its images' state when it reaches the
    end of its part; `repeat` lays the records out for the continuing images (``copies`` times the first part's,
    split ``batch_size`` images per call, as `steer.calibrate.sample_latents` splits them); every continuing call
    takes the next. Shared, not copied, by the per-call copies of the scheduler. Deterministic stateless schedulers
    record nothing.
    """

    def __init__(self) -> None:
        self.saved: list[dict[str, Any]] = []
        self.queue: list[dict[str, Any]] = []

    def __deepcopy__(self, memo: dict) -> SolverCarry:
        return self

    def save(self, scheduler: Any, images: int, generators: Any = None) -> None:
        """Record the state ``scheduler`` reached for the ``images`` of one call (and their ``generators``' states)."""
        fields = _history_fields(scheduler)
        per_image, shared = fields if fields is not None else ((), ())
        states = None
        if generators is not None:
            if not isinstance(generators, list | tuple) or len(generators) != images:
                raise RuntimeError("a run that draws noise at every step resumes exactly only with one generator per image")
            states = [g.get_state() for g in generators]
        self.saved.append({"images": images, "rows": {k: _copy(getattr(scheduler, k)) for k in per_image},
                           "shared": {k: _copy(getattr(scheduler, k)) for k in shared}, "generators": states})

    def repeat(self, copies: int, batch_size: int | None) -> None:
        """Lay out the recorded states for ``copies`` x the recorded images, ``batch_size`` per call (None: one)."""
        self.queue = []
        if not self.saved:
            return
        shared = self.saved[0]["shared"]
        if not all(_same(r["shared"], shared) for r in self.saved[1:]):
            raise RuntimeError("the first part's calls reached different solver states (orders, step counts)")
        rows = {k: _rows([r["rows"][k] for r in self.saved] * copies) for k in self.saved[0]["rows"]}
        states = None if self.saved[0]["generators"] is None else [s for r in self.saved for s in r["generators"]] * copies
        total = sum(r["images"] for r in self.saved) * copies
        size = batch_size or total
        for i in range(0, total, size):
            part = slice(i, i + size)
            self.queue.append({"rows": {k: _take(v, part) for k, v in rows.items()}, "shared": shared,
                               "generators": None if states is None else states[part]})

    def take(self) -> dict[str, Any]:
        """The next continuing call's record."""
        if not self.queue:
            raise RuntimeError("a resumed run has no state from the part before it: run the first part with the same "
                               "SolverCarry and call repeat()")
        return self.queue.pop(0)


def _span_class(cls: type) -> type:
    """``cls`` whose ``set_timesteps`` keeps only steps ``[first, stop)`` of the schedule (``self.span``); the step
    sizes still come from the whole schedule. Its signatures are the original's (pipelines inspect them for
    ``sigmas=`` and ``generator=``). Euler-type: sigmas sliced with the timesteps, and a run that starts after step 0
    takes its latents as they are (``init_noise_sigma`` 1). Multistep solvers: ``step`` reads the whole schedule (its
    step index and last-step order rules). A part that starts after step 0 takes its history and its images'
    generator states from ``self.carry``, a part that ends before the last step records them there."""

    @functools.wraps(cls.set_timesteps)
    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        cls.set_timesteps(self, *args, **kwargs)
        first, stop = self.span
        self.bounds = (first, len(self.timesteps) if stop is None else stop)  # None: to the end of the run
        stop = self.bounds[1]
        self.whole_timesteps = self.timesteps
        self.timesteps = self.timesteps[first:stop]
        if isinstance(self, _SLICED_SIGMAS):  # sigma i and i + 1 make step i
            self.sigmas = self.sigmas[first : stop + 1]
        self._part_step, self._carried = 0, None
        if keeps_history(self) and first > 0:  # continue where the first part's calls left off
            self._carried = self.carry.take()
            for name, value in {**self._carried["rows"], **self._carried["shared"]}.items():
                setattr(self, name, _copy(value))
            self._step_index = first

    @functools.wraps(cls.step)
    def step(self, model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        first, stop = self.bounds
        noisy = draws_noise(self, **kwargs)
        if noisy and first > 0 and self._part_step == 0:  # draw the noise the whole run would draw from here
            self._carried = self._carried or self.carry.take()
            generators, states = kwargs.get("generator"), self._carried["generators"]
            if not isinstance(generators, list | tuple) or states is None or len(generators) != len(states):
                raise RuntimeError("a run that draws noise at every step resumes exactly only with one generator per image, "
                                   "as in the part before it")
            for generator, state in zip(generators, states, strict=True):
                generator.set_state(state)
        part = self.timesteps
        if keeps_history(self) or isinstance(self, DDPMScheduler):  # order rules, DDPM's previous timestep: the whole schedule
            self.timesteps = self.whole_timesteps
        try:
            out = cls.step(self, model_output, timestep, sample, *args, **kwargs)
        finally:
            self.timesteps = part
        self._part_step += 1
        if self._part_step == stop - first and stop < len(self.whole_timesteps) and (noisy or keeps_history(self)):
            self.carry.save(self, int(sample.shape[0]), kwargs.get("generator") if noisy else None)  # the first part's end
        return out

    members: dict[str, Any] = {"set_timesteps": set_timesteps, "step": step}
    if isinstance(getattr(cls, "init_noise_sigma", None), property):  # the sigma samplers: Euler, LMS, Heun, KDPM2...
        base_sigma = cls.init_noise_sigma

        def init_noise_sigma(self) -> Any:
            # the pipelines scale given latents by it: the first step's noise level, already in resumed latents
            return base_sigma.fget(self) if self.span[0] == 0 else 1.0

        members["init_noise_sigma"] = property(init_noise_sigma)
    return type(f"Span{cls.__name__}", (cls,), members)


def partial_pipeline(pipe: Any, first: int, stop: int | None, carry: SolverCarry | None = None) -> Any:
    """A shallow copy of ``pipe`` (same modules) whose calls run only steps ``[first, stop)`` of their schedule
    (``stop`` None: to its end; steps count denoiser calls, `run_length` of them in all).

    Call it with ``latents=`` the latents after step ``first`` (from a call on ``partial_pipeline(pipe, 0, first)``
    with the same ``num_inference_steps``) and ``output_type="latent"``; a steering window is then a share of these
    ``stop - first`` steps. ``pipe`` itself is not changed (concurrent calls on it are unaffected). Multistep solvers
    (`keeps_history`) and samplers that draw noise (`draws_noise`; one generator per image) need one ``carry`` for both
    parts, with ``carry.repeat(...)`` called between them.
    """
    if not resumable(pipe.scheduler):
        raise ValueError(f"{type(pipe.scheduler).__name__} runs cannot be cut and resumed exactly")
    if carry is None and (keeps_history(pipe.scheduler) or draws_noise(pipe.scheduler)):
        what = "keeps a solver history" if keeps_history(pipe.scheduler) else "draws noise at every step"
        raise ValueError(f"{type(pipe.scheduler).__name__} {what}: pass the same SolverCarry to both parts of the run")
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.__class__ = _span_class(type(scheduler))
    scheduler.span = (int(first), None if stop is None else int(stop))
    scheduler.carry = carry if carry is not None else SolverCarry()
    part = copy.copy(pipe)
    part.__dict__["scheduler"] = scheduler
    return part
