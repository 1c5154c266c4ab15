"""Recording: pooled activations of chosen denoiser sites for the calls of one run (`ActivationRecorder`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from steer.denoisers import (
    channel_dim,
    register_site_hook,
    resolve_layers,
)
from steer.engine.run import DenoiserRun

Pooling = Literal["mean", "max", "none"]


def pool(h: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool a (B, C, H, W) or (B, L, C) activation over space to (B, C)."""
    if pooling == "none":
        return h
    if h.ndim == 2:
        return h
    if h.ndim == 3:
        return h.mean(1) if pooling == "mean" else h.amax(1)
    flat = h.flatten(2)
    return flat.mean(-1) if pooling == "mean" else flat.amax(-1)


class ActivationRecorder(DenoiserRun):
    """Records pooled outputs of chosen modules for the calls made inside this context.

    ``records[layer]`` is a list of ``(step, pooled)`` with ``pooled`` of shape (rows, C) on the CPU in fp32; with
    ``cfg`` and ``branch`` only that half of the UNet batch is kept (with a `SequentialCFG` layout, only the calls of
    that branch). A module called several times per UNet forward (e.g. a shared ``nonlinearity``) keeps only its
    last call of each forward when ``last_call_only``.
    ``position_norms[layer]`` accumulates the mean per-position channel norm (the "typical activation norm").
    """

    def __init__(
        self,
        unet: nn.Module,
        layers: Sequence[str],
        pooling: Pooling = "mean",
        *,
        window: tuple[float, float] | None = None,
        num_steps: int | Callable[[], int] | None = None,
        cfg: bool | Callable[[], bool] = False,
        branch: Literal["cond", "uncond", "both"] = "cond",
        last_call_only: bool = True,
    ):
        super().__init__(unet, num_steps, cfg)
        self.layers = list(layers)
        self.pooling = pooling
        self.window = window
        self.branch = branch
        self.last_call_only = last_call_only
        self.records: dict[str, list[tuple[int, torch.Tensor]]] = {n: [] for n in self.layers}
        self._norm_sum: dict[str, float] = dict.fromkeys(self.layers, 0.0)
        self._norm_count: dict[str, int] = dict.fromkeys(self.layers, 0)
        self._last_call: dict[str, tuple[int, int]] = {}

    def _register(self) -> None:
        resolve_layers(self.unet, self.layers)
        for name in self.layers:
            self._handles.append(register_site_hook(self.unet, name, self._make_hook(name)))

    def _select(self, h: torch.Tensor) -> torch.Tensor | None:
        """The rows of ``branch`` in this call's output (None: a sequential-CFG call of another branch)."""
        if self.call_branch is not None:
            return h if self.branch in ("both", self.call_branch) else None
        if not self.cfg or self.branch == "both":
            return h
        uncond, cond = h.chunk(2)
        return cond if self.branch == "cond" else uncond

    def _make_hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(output: torch.Tensor) -> None:
            if not self.mine() or not self.in_window(self.window):
                return
            h = self._select(output.detach())
            if h is None:
                return
            pooled = pool(h.float(), self.pooling).cpu()
            records = self.records[name]
            call = (self.step, self._calls)  # one denoiser call (a sequential-CFG step has several)
            if self.last_call_only and records and self._last_call.get(name) == call:
                records[-1] = (self.step, pooled)
            else:
                self._last_call[name] = call
                records.append((self.step, pooled))
                norms = h.float().norm(dim=channel_dim(h))
                self._norm_sum[name] += float(norms.mean()) * h.shape[0]
                self._norm_count[name] += h.shape[0]

        return hook

    def stacked(self, name: str) -> torch.Tensor:
        """All records of ``name`` as one (N, C) tensor, in call order."""
        if not self.records[name]:
            raise RuntimeError(f"no activations were recorded at {name!r} (was the UNet called inside the recorder?)")
        return torch.cat([p for _, p in self.records[name]])

    def by_step(self, name: str) -> dict[int, torch.Tensor]:
        out: dict[int, list[torch.Tensor]] = {}
        for step, p in self.records[name]:
            out.setdefault(step, []).append(p)
        return {s: torch.cat(ps) for s, ps in out.items()}

    def activation_norms(self) -> dict[str, float]:
        return {n: self._norm_sum[n] / max(self._norm_count[n], 1) for n in self.layers}
