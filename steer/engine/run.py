"""One denoising run seen from the denoiser: hooks registered on enter and removed on every exit path, the calls
counted, and the context (thread / asyncio task) that owns them.

Hooks only act for calls made in the context that entered their run, so two threads sharing one denoiser never see
each other's settings. Step counting: a pre-forward hook on the denoiser counts its calls; with ``num_steps`` (an int
or a callable returning the number of denoising steps of the run, e.g. ``len(scheduler.timesteps)``) a
``window=(start, end)`` of fractions selects the active steps ``ceil(start*N) <= i < ceil(end*N)``.

Classifier-free guidance comes in two layouts, told by ``cfg`` (a value or a callable read at every call):
``True`` / ``False`` — one denoiser call per step whose batch is ``[uncond, cond]`` (or has no CFG halves); or a
`SequentialCFG` — the branches are separate denoiser calls of one step (Flux's true CFG: a "cond" call, then an
"uncond" one). Then a step is counted per step, not per call, and `DenoiserRun.call_branch` names the branch of the
call in progress.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# The sessions active in the current context (thread / task). Hooks of other sessions are no-ops here.
_ACTIVE: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("steer_active_sessions", default=frozenset())


@dataclass(frozen=True, eq=False)
class SequentialCFG:
    """CFG layout where each branch is its own denoiser call within a step.

    Args:
        branches: the branch of each call of a step, in call order (``("cond", "uncond")`` for Flux).
        step_token: an object that is the same for every call of one step and another one at the next step (e.g. the
            pipeline's current-timestep tensor), compared by identity: a new token starts a new step at the first
            branch. ``None`` counts ``len(branches)`` calls per step instead.
    """

    branches: tuple[str, ...] = ("cond", "uncond")
    step_token: Any = None


_NO_TOKEN = object()


# ----------------------------------------------------------------------------------------------------------------------
# Step counting shared by steering and recording
# ----------------------------------------------------------------------------------------------------------------------
def window_bounds(window: tuple[float, float], num_steps: int) -> tuple[int, int]:
    """Active step indices ``[first, stop)`` of ``window`` on a run of ``num_steps`` UNet calls.

    A non-empty window always covers at least one step, so short runs still steer (or record).
    """
    start, end = window
    first, stop = math.ceil(start * num_steps - 1e-9), math.ceil(end * num_steps - 1e-9)
    if first >= stop and end > start and num_steps > 0:  # a window narrower than one step still gets its step
        first = min(math.floor(start * num_steps), num_steps - 1)
        stop = first + 1
    return first, stop


class DenoiserRun:
    """Registers hooks on a UNet, counts its forward calls, and removes everything on exit."""

    def __init__(
        self,
        unet: nn.Module,
        num_steps: int | Callable[[], int] | None,
        cfg: bool | SequentialCFG | Callable[[], bool | SequentialCFG],
    ):
        self.unet = unet
        self._num_steps = num_steps
        self._cfg = cfg
        self.step = -1  # index of the denoising step in progress (of the UNet call, without sequential CFG)
        self.call_branch: str | None = None  # with `SequentialCFG`: the branch of the call in progress
        self._calls = -1  # sequential CFG: calls counted, and the position / token of the current step
        self._position = -1
        self._step_token: Any = _NO_TOKEN
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._token: contextvars.Token | None = None

    # context ----------------------------------------------------------------------------------------------------
    def mine(self) -> bool:
        return id(self) in _ACTIVE.get()

    @property
    def num_steps(self) -> int | None:
        return self._num_steps() if callable(self._num_steps) else self._num_steps

    def layout(self) -> bool | SequentialCFG:
        """The CFG layout now: ``True`` (batch ``[uncond, cond]``), ``False`` (one branch) or a `SequentialCFG`."""
        return self._cfg() if callable(self._cfg) else self._cfg

    @property
    def cfg(self) -> bool:
        """Whether the batch of the call in progress is ``[uncond, cond]`` (False with sequential CFG: every call is
        one branch, see `call_branch`)."""
        layout = self.layout()
        return False if isinstance(layout, SequentialCFG) else bool(layout)

    def advance(self) -> None:
        """Count one denoiser call of this run (the pre-forward hook, or a compiled denoiser's persistent sites)."""
        if not self.mine():
            return
        layout = self.layout()
        if not isinstance(layout, SequentialCFG):
            self.step += 1
            self.call_branch = None
            return
        self._calls += 1
        n = len(layout.branches)
        token = layout.step_token
        if token is None:
            new_step = self._calls % n == 0
        else:
            new_step = token is not self._step_token
            self._step_token = token
        self._position = 0 if new_step else self._position + 1
        if new_step:
            self.step += 1
        self.call_branch = layout.branches[self._position % n]

    def _pre_forward(self, _module: nn.Module, _args: Any) -> None:
        self.advance()

    def in_window(self, window: tuple[float, float] | None) -> bool:
        n = self.num_steps
        if window is None or not n:
            return True
        first, stop = window_bounds(window, n)
        return first <= self.step < stop

    def _register(self) -> None:  # subclasses add their module hooks
        pass

    def __enter__(self):
        try:
            self._handles.append(self.unet.register_forward_pre_hook(self._pre_forward))
            self._register()
        except BaseException:
            self.remove()
            raise
        self._token = _ACTIVE.set(_ACTIVE.get() | {id(self)})
        return self

    def remove(self) -> None:
        """Remove every hook this object registered (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def __exit__(self, *exc: Any) -> None:
        self.remove()
        self._step_token = _NO_TOKEN  # no reference kept to the last step's token
        if self._token is not None:
            try:
                _ACTIVE.reset(self._token)
            except ValueError:  # exited from another context: drop just this session
                _ACTIVE.set(_ACTIVE.get() - {id(self)})
            self._token = None


class activated:  # noqa: N801  (a context manager, used like a function)
    """Mark ``run`` active in the current context without registering its hooks (a compiled denoiser's persistent
    sites consult it instead)."""

    def __init__(self, run: DenoiserRun):
        self.run = run
        self._token: contextvars.Token | None = None

    def __enter__(self) -> DenoiserRun:
        self._token = _ACTIVE.set(_ACTIVE.get() | {id(self.run)})
        return self.run

    def __exit__(self, *exc: Any) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
