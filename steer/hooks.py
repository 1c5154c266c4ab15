"""Forward-hook mechanics on any `UNet2DConditionModel`: find layers, add steering deltas, record activations.

Everything here works on a bare UNet, without a pipeline. A `SteeringSession` registers its hooks on ``__enter__``
and removes them on ``__exit__`` (exceptions and KeyboardInterrupt included). Hooks only act for calls made in the
context (thread / asyncio task) that entered the session, so two threads sharing one UNet never see each other's
settings.

Step counting: a pre-forward hook on the UNet counts its calls; with ``num_steps`` (an int or a callable returning
the number of UNet calls of the run, e.g. ``len(scheduler.timesteps)``) a ``window=(start, end)`` of fractions
selects the active calls ``ceil(start*N) <= i < ceil(end*N)``.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from steer.errors import ModelMismatchError
from steer.layers import (  # noqa: F401  (re-exported: steer.hooks is the engine's public face)
    CONTEXT_SITE,
    LayerError,
    _channel_dim,
    _main_tensor,
    cross_attention_sites,
    default_layers,
    layer_channels,
    list_layers,
    register_site_hook,
    resolve_layers,
)

Branch = Literal["cond", "uncond", "both", "split"]
Mode = Literal["add", "weighted", "token"]
BRANCHES = ("cond", "uncond", "both", "split")
MODES = ("add", "weighted", "token")
PAPER_WINDOW = (0.45, 0.95)

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


def check_window(window: tuple[float, float]) -> tuple[float, float]:
    try:
        start, end = (float(w) for w in window)
    except (TypeError, ValueError):
        raise ValueError(f"steering_window must be a pair (start, end) of fractions, got {window!r}") from None
    if not (0.0 <= start <= end <= 1.0):
        raise ValueError(f"steering_window must satisfy 0 <= start <= end <= 1, got ({start}, {end})")
    return start, end


class _UNetRun:
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

    def _pre_forward(self, _module: nn.Module, _args: Any) -> None:
        if self.mine():
            self.step += 1

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


# ----------------------------------------------------------------------------------------------------------------------
# Steering
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SteeringConfig:
    """How vectors are applied; the options of `SteeringStableDiffusionPipeline.__call__` without the vectors.

    Args:
        window: ``(start, end)`` fractions of the denoising run in which the hooks act.
        branch: which half of the CFG batch is steered: ``"cond"`` (paper), ``"uncond"``, ``"both"``, or ``"split"``
            (``+scale`` on the conditional half and ``-scale`` on the unconditional one, so classifier-free
            guidance amplifies the push instead of cancelling it).
        normalize: unit-norm each layer's vector and measure the scale in units of its recorded activation norm.
        mode: ``"add"`` (the same delta at every position, paper), ``"weighted"`` (each position weighted by its
            norm relative to the mean) or ``"token"`` (each position moves by ``scale * v * |x_p|``: the vector is
            in units of each position's own norm).
        preserve_norm: rescale each steered position back to its pre-steering norm, so large strengths rotate
            activations instead of inflating them.
    """

    window: tuple[float, float] = PAPER_WINDOW
    branch: Branch = "cond"
    normalize: bool = False
    mode: Mode = "add"
    preserve_norm: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", check_window(self.window))
        if self.branch not in BRANCHES:
            raise ValueError(f"steering_branch must be one of {BRANCHES}, got {self.branch!r}")
        if self.mode not in MODES:
            raise ValueError(f"steering_mode must be one of {MODES}, got {self.mode!r}")
        object.__setattr__(self, "preserve_norm", bool(self.preserve_norm))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window)
        return d


def step_bucket(step: int, buckets: int, num_steps: int | None) -> int:
    """Which of ``buckets`` equal shares of a run of ``num_steps`` UNet calls call ``step`` falls in. Learning
    (per-step directions) and steering use this one mapping."""
    if buckets == 1 or not num_steps:
        return 0
    return min(buckets - 1, max(step, 0) * buckets // num_steps)


@dataclass
class LayerPlan:
    """The per-vector directions one layer receives: ``directions`` is (K, S, C) for K vectors and S step buckets
    (S = 1 for one vector for the whole run), already normalized if asked."""

    name: str
    directions: torch.Tensor
    cache: dict = field(default_factory=dict)

    @property
    def buckets(self) -> int:
        return int(self.directions.shape[1])

    def bucket(self, step: int, num_steps: int | None) -> int:
        """The step bucket of UNet call ``step`` on a run of ``num_steps`` calls (see `step_bucket`)."""
        return step_bucket(step, self.buckets, num_steps)

    def at(self, step: int, num_steps: int | None) -> torch.Tensor:
        """(K, C): each vector's direction at this step."""
        return self.directions[:, self.bucket(step, num_steps)]


def _as_steps(d: torch.Tensor) -> torch.Tensor:
    """A stored direction as (S, C): 1-D vectors are one bucket."""
    return d[None] if d.ndim == 1 else d


def build_layer_plans(
    vectors: Sequence, layers: Sequence[str] | None, normalize: bool
) -> dict[str, LayerPlan]:
    """Stack K vectors per layer (zeros where a vector lacks the layer), restricted to ``layers`` if given.

    Vectors with per-step directions (S, C) are brought to a common bucket count (the least common multiple) by
    repeating each bucket, so vectors with different step resolutions combine.
    """
    names: list[str] = []
    for v in vectors:
        names += [n for n in v.layers if n not in names]
    if layers is not None:
        names = [n for n in names if n in set(layers)]
    plans: dict[str, LayerPlan] = {}
    for name in names:
        channels = {v.directions[name].shape[-1] for v in vectors if name in v.directions}
        if len(channels) > 1:
            raise ValueError(f"the vectors disagree on the channel count of layer {name!r}: {sorted(channels)}")
        (c,) = channels
        buckets = math.lcm(*(_as_steps(v.directions[name]).shape[0] for v in vectors if name in v.directions))
        rows = []
        for v in vectors:
            d = v.directions.get(name)
            if d is None:
                rows.append(torch.zeros(buckets, c))
                continue
            d = _as_steps(d.detach().float().cpu())
            if normalize:
                act = v.activation_norm.get(name)
                if act is None:
                    raise ValueError(
                        f"steering_normalize needs each layer's activation norm, but {v.name!r} has none recorded for "
                        f"{name!r}; learn the vector with steer, or pass steering_normalize=False"
                    )
                d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12) * act
            rows.append(d.repeat_interleave(buckets // d.shape[0], dim=0))
        plans[name] = LayerPlan(name, torch.stack(rows))
    return plans


def apply_delta(h: torch.Tensor, delta: torch.Tensor, mode: str, preserve_norm: bool) -> torch.Tensor:
    """Add a per-row delta (n, C) to an activation ``h`` ((n, C, H, W), (n, L, C) or (n, C)).

    ``mode`` and ``preserve_norm`` as in `SteeringConfig`. Rows whose delta is zero are returned unchanged
    (bit-identical), whatever the mode.
    """
    dim = _channel_dim(h)
    if h.ndim == 4:
        d = delta[:, :, None, None]
    elif h.ndim == 3:
        d = delta[:, None, :]
    else:
        d = delta
    norm = h.norm(dim=dim, keepdim=True) if (mode != "add" or preserve_norm) else None
    if mode == "weighted" and h.ndim >= 3:
        spatial = tuple(range(2, h.ndim)) if dim == 1 else (1,)
        d = d * (norm / norm.mean(dim=spatial, keepdim=True).clamp_min(1e-6))
    elif mode == "token":
        d = d * norm
    new = h + d
    if preserve_norm:
        new = new * (norm / new.norm(dim=dim, keepdim=True).clamp_min(1e-12))
    if preserve_norm:  # keep unsteered rows bit-identical (the rescale is not exact in floating point)
        steered = (delta != 0).any(dim=-1).reshape(-1, *([1] * (h.ndim - 1)))
        new = torch.where(steered, new, h)
    return new


class SteeringSession(_UNetRun):
    """Adds ``scale · v`` to chosen UNet module outputs for the calls made inside this context.

    ``scales`` is a (R, K) tensor: R = 1 (all rows) or one row per image of the batch, K = number of vectors.
    With ``cfg`` the UNet batch is ``[uncond, cond]`` and ``config.branch`` picks the half that is steered.
    """

    def __init__(
        self,
        unet: nn.Module,
        plans: dict[str, LayerPlan],
        scales: torch.Tensor,
        config: SteeringConfig = SteeringConfig(),
        *,
        num_steps: int | Callable[[], int] | None = None,
        cfg: bool | Callable[[], bool] = False,
    ):
        super().__init__(unet, num_steps, cfg)
        if scales.ndim != 2 or any(p.directions.shape[0] != scales.shape[1] for p in plans.values()):
            raise ValueError(f"scales must be (rows, {next(iter(plans.values())).directions.shape[0]}), got {tuple(scales.shape)}")
        self.plans = plans
        self.scales = scales.detach().float().cpu()
        self.config = config
        self.applied_steps: list[int] = []

    def _register(self) -> None:
        channels = layer_channels(self.unet, list(self.plans))
        for name, plan in self.plans.items():
            want = plan.directions.shape[-1]
            if channels[name] != want:
                raise ModelMismatchError(
                    f"channel mismatch at layer {name!r}: the direction has {want} channels, the UNet's output there has {channels[name]}"
                )
            self._handles.append(register_site_hook(self.unet, name, self._make_hook(plan)))

    def row_scales(self, n: int) -> torch.Tensor:
        """(n, K) scales for a UNet batch of n rows, with the unsteered CFG half zeroed."""
        cfg = self.cfg
        if cfg and n % 2:
            raise ValueError(f"classifier-free guidance expects an even UNet batch, got {n} rows")
        images = n // 2 if cfg else n
        s = self.scales
        if s.shape[0] == 1:
            s = s.expand(images, -1)
        elif s.shape[0] != images:
            raise ValueError(f"steering_scale has {s.shape[0]} rows but the batch has {images} images")
        if not cfg:
            return s
        zero = torch.zeros_like(s)
        return {
            "cond": torch.cat([zero, s]),
            "uncond": torch.cat([s, zero]),
            "both": torch.cat([s, s]),
            "split": torch.cat([-s, s]),
        }[self.config.branch]

    def step_delta(self, plan: LayerPlan, rows: int) -> torch.Tensor:
        """(rows, C) delta of ``plan`` at the current step: each row's weighted sum of the vectors' directions."""
        return self.row_scales(rows) @ plan.at(self.step, self.num_steps)

    def _make_hook(self, plan: LayerPlan) -> Callable[[torch.Tensor], torch.Tensor | None]:
        def hook(h: torch.Tensor) -> torch.Tensor | None:
            if not self.mine() or not self.in_window(self.config.window):
                return None
            dim = _channel_dim(h)
            if h.shape[dim] != plan.directions.shape[-1]:
                raise ValueError(
                    f"channel mismatch at layer {plan.name!r}: the direction has {plan.directions.shape[-1]} channels, "
                    f"this call's output has {h.shape[dim]} (shape {tuple(h.shape)})"
                )
            key = (plan.bucket(self.step, self.num_steps), h.shape[0], h.device, h.dtype)
            delta = plan.cache.get(key)
            if delta is None:  # (n, C): each row's weighted sum of directions
                delta = self.step_delta(plan, h.shape[0]).to(device=h.device, dtype=h.dtype)
                plan.cache[key] = delta
            if self.step not in self.applied_steps:
                self.applied_steps.append(self.step)
            return apply_delta(h, delta, self.config.mode, self.config.preserve_norm)

        return hook


# ----------------------------------------------------------------------------------------------------------------------
# Recording pooled activations
# ----------------------------------------------------------------------------------------------------------------------
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


class ActivationRecorder(_UNetRun):
    """Records pooled outputs of chosen modules for the calls made inside this context.

    ``records[layer]`` is a list of ``(step, pooled)`` with ``pooled`` of shape (rows, C) on the CPU in fp32; with
    ``cfg`` and ``branch`` only that half of the UNet batch is kept. A module called several times per UNet forward
    (e.g. a shared ``nonlinearity``) keeps only its last call of each forward when ``last_call_only``.
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

    def _register(self) -> None:
        resolve_layers(self.unet, self.layers)
        for name in self.layers:
            self._handles.append(register_site_hook(self.unet, name, self._make_hook(name)))

    def _select(self, h: torch.Tensor) -> torch.Tensor:
        if not self.cfg or self.branch == "both":
            return h
        uncond, cond = h.chunk(2)
        return cond if self.branch == "cond" else uncond

    def _make_hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(output: torch.Tensor) -> None:
            if not self.mine() or not self.in_window(self.window):
                return
            h = self._select(output.detach())
            pooled = pool(h.float(), self.pooling).cpu()
            records = self.records[name]
            if self.last_call_only and records and records[-1][0] == self.step:
                records[-1] = (self.step, pooled)
            else:
                records.append((self.step, pooled))
                norms = h.float().norm(dim=_channel_dim(h))
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


# ----------------------------------------------------------------------------------------------------------------------
# torch.compile: persistent sites driven by tensors
# ----------------------------------------------------------------------------------------------------------------------
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
        import threading

        self.unet = unet
        self.layers = resolve_layers(unet, layers)
        self.channels = layer_channels(unet, self.layers)
        self.deltas: dict[str, torch.Tensor] = {}
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
            return apply_delta(h, delta, self.mode, self.preserve_norm)

        return hook

    def attach(self, wrapper: nn.Module) -> None:
        """Fill the deltas before every call of ``wrapper`` (the compiled module)."""
        self._handles.append(wrapper.register_forward_pre_hook(self._before_call))

    def _before_call(self, _module: nn.Module, args: Any) -> None:
        sample = args[0] if args else None
        session = self.session
        if session is not None and session.mine():
            session.step += 1
        for name in self.layers:
            n = sample.shape[0] if isinstance(sample, torch.Tensor) else 1
            buf = self.deltas.get(name)
            if buf is None or buf.shape[0] != n or (isinstance(sample, torch.Tensor) and (buf.device, buf.dtype) != (sample.device, sample.dtype)):
                ref = sample if isinstance(sample, torch.Tensor) else next(self.unet.parameters())
                buf = torch.zeros(n, self.channels[name], device=ref.device, dtype=ref.dtype)
                self.deltas[name] = buf
            plan = session.plans.get(name) if session is not None and session.mine() else None
            if plan is None or not session.in_window(session.config.window):
                buf.zero_()
            else:
                buf.copy_(session.step_delta(plan, n))
                if session.step not in session.applied_steps:
                    session.applied_steps.append(session.step)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
