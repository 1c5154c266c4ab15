"""One denoising run seen from the denoiser: hooks registered on enter and removed on every exit path, the calls
counted, and the context (thread / asyncio task) that owns them.

Hooks only act for calls made in the context that entered their run, so two threads sharing one denoiser never see
each other's settings. Step counting: a pre-forward hook on the denoiser counts its calls; with ``num_steps`` (an int
or a callable returning the number of denoiser calls of the run, e.g. ``len(scheduler.timesteps)``) a
``window=(start, end)`` of fractions selects the active calls ``ceil(start*N) <= i < ceil(end*N)``.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# The sessions active in the current context (thread / task). Hooks of other sessions are no-ops here.
_ACTIVE: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("steer_active_sessions", default=frozenset())


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

    def __init__(self, unet: nn.Module, num_steps: int | Callable[[], int] | None, cfg: bool | Callable[[], bool]):
        self.unet = unet
        self._num_steps = num_steps
        self._cfg = cfg
        self.step = -1  # index of the UNet call in progress
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._token: contextvars.Token | None = None

    # context ----------------------------------------------------------------------------------------------------
    def mine(self) -> bool:
        return id(self) in _ACTIVE.get()

    @property
    def num_steps(self) -> int | None:
        return self._num_steps() if callable(self._num_steps) else self._num_steps

    @property
    def cfg(self) -> bool:
        return bool(self._cfg() if callable(self._cfg) else self._cfg)

    def advance(self) -> None:
        """Count one denoiser call of this run (the pre-forward hook, or a compiled denoiser's persistent sites)."""
        if self.mine():
            self.step += 1

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
