"""torch.compile: persistent steering sites driven by tensors, so a compiled denoiser never recompiles per call."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from steer.denoisers import (
    layer_channels,
    register_site_hook,
    resolve_layers,
)
from steer.engine.steering import SteeringSession, apply_delta


class StaticSteeringSites:
    """Persistent steering sites for a `torch.compile`-d UNet.

    Dynamo bakes module hooks into the compiled graph and (by default) does not guard on hooks added later, so
    per-call hooks would be silently ignored. Instead, ``install`` puts one hook per site *before* compiling; each
    adds a (rows, C) delta tensor that lives outside the graph. A pre-forward hook on the compiled wrapper fills
    the deltas in place before every UNet call (zeros when nothing is steered, outside the window, or in the other
    CFG branch), so changing the vector, scale or window never recompiles. Only ``mode`` and ``preserve_norm`` are
    Python constants (a change recompiles once). Calls through one compiled UNet are serialised by a lock.
    """

    def __init__(self, unet: nn.Module, layers: Sequence[str]):
        self.unet = unet
        self.layers = resolve_layers(unet, layers)
        self.channels = layer_channels(unet, self.layers)
        self.deltas: dict[str, torch.Tensor] = {}
        # per site, from the session's plans; every key present from the start (adding one later would recompile)
        self.fixed_tokens: dict[str, int] = dict.fromkeys(self.layers, 0)
        self.mode = "add"  # Python constants of the graph: a change recompiles once
        self.preserve_norm = False
        self.session: SteeringSession | None = None
        self.lock = threading.RLock()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for name in self.layers:
            self._handles.append(register_site_hook(unet, name, self._make_hook(name)))

    def _make_hook(self, name: str) -> Callable[[torch.Tensor], torch.Tensor | None]:
        def hook(h: torch.Tensor) -> torch.Tensor | None:
            delta = self.deltas.get(name)
            if delta is None:
                return None
            return apply_delta(h, delta, self.mode, self.preserve_norm, self.fixed_tokens.get(name, 0))

        return hook

    def attach(self, wrapper: nn.Module) -> None:
        """Fill the deltas before every call of ``wrapper`` (the compiled module)."""
        self._handles.append(wrapper.register_forward_pre_hook(self._before_call, with_kwargs=True))

    def _before_call(self, _module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        # The latents: the first positional argument (UNet) or the ``hidden_states`` / ``sample`` keyword
        # (diffusion transformers are called with keywords only).
        sample = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        session = self.session
        if session is not None:
            session.advance()
        for name in self.layers:
            n = sample.shape[0] if isinstance(sample, torch.Tensor) else 1
            buf = self.deltas.get(name)
            if buf is None or buf.shape[0] != n or (isinstance(sample, torch.Tensor) and (buf.device, buf.dtype) != (sample.device, sample.dtype)):
                ref = sample if isinstance(sample, torch.Tensor) else next(self.unet.parameters())
                buf = torch.zeros(n, self.channels[name], device=ref.device, dtype=ref.dtype)
                self.deltas[name] = buf
            plan = session.plans.get(name) if session is not None and session.mine() else None
            if plan is not None:  # kept otherwise: a zero delta leaves every token alone anyway, and no recompile
                self.fixed_tokens[name] = plan.fixed_tokens
            if plan is None or not session.adds_now():
                buf.zero_()
            else:
                buf.copy_(session.step_delta(plan, n))
                if session.step not in session.applied_steps:
                    session.applied_steps.append(session.step)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
