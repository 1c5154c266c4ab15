"""Steering: add ``scale * v`` to chosen denoiser sites for the calls of one run (`SteeringSession`)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from steer.config import REMOVING, SteeringConfig, vector_branches, vector_windows
from steer.denoisers import (
    CONTEXT_SITE,
    channel_dim,
    layer_channels,
    register_site_hook,
)
from steer.engine.run import DenoiserRun
from steer.engine.word_swap import WordSwap, swap_words
from steer.errors import ModelMismatchError
from steer.step_rows import as_step_rows, at_norm, in_step_buckets, shared_fixed_tokens


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
    levels: torch.Tensor | None = None  # (K, L): each vector's recorded reference level per position (NaN: none)
    fixed_tokens: int = 0  # leading token positions left alone (the text encoder's start token every prompt shares)
    members: torch.Tensor | None = None  # (K,) 1 for the vectors this plan's hook applies, 0 for the others (None: all)
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
        buckets = math.lcm(*(as_step_rows(v.directions[name]).shape[0] for v in vectors if name in v.directions))
        rows = []
        for v in vectors:
            d = v.directions.get(name)
            if d is None:
                rows.append(torch.zeros(buckets, c))
                continue
            d = as_step_rows(d.detach().float().cpu())
            if normalize:
                act = v.activation_norm.get(name)
                if act is None:
                    raise ValueError(
                        f"steering_normalize needs each layer's activation norm, but {v.name!r} has none recorded for "
                        f"{name!r}; learn the vector with steer, or pass steering_normalize=False"
                    )
                d = at_norm(d, act)
            rows.append(in_step_buckets(d, None, buckets))
        plans[name] = LayerPlan(name, torch.stack(rows), _levels(vectors, name), fixed_tokens=shared_fixed_tokens(vectors, name))
    return plans


def _levels(vectors: Sequence, name: str) -> torch.Tensor | None:
    """(K, L) reference levels of the vectors at ``name`` (metadata ``reference_level``), NaN rows where a vector has
    none; None when none has one."""
    found = [(v.metadata.get("reference_level") or {}).get(name) for v in vectors]
    lengths = {len(f) for f in found if f is not None}
    if not lengths:
        return None
    if len(lengths) > 1:
        raise ValueError(f"the vectors' reference levels at {name!r} disagree on the token count: {sorted(lengths)}")
    (length,) = lengths
    return torch.stack([torch.tensor(f, dtype=torch.float32) if f is not None else torch.full((length,), float("nan")) for f in found])


def levels_for_length(levels: torch.Tensor, length: int) -> torch.Tensor:
    """(K, L) reference levels for a call whose text has ``length`` tokens: the T5 families' count follows the call's
    ``max_sequence_length`` (Flux 512 by default, FLUX.1-schnell 256). The tail positions are padding, so a shorter
    call takes the first ``length`` levels and a longer one repeats the last (padding) level."""
    if levels.shape[1] >= length:
        return levels[:, :length]
    return torch.cat([levels, levels[:, -1:].expand(-1, length - levels.shape[1])], dim=1)


def remove_excess(
    h: torch.Tensor, units: torch.Tensor, levels: torch.Tensor, amounts: torch.Tensor, active: Sequence[int] | None = None
) -> torch.Tensor:
    """Take ``amounts`` (n, K) times each position's excess along each unit direction ``units`` (K, C) over its level
    ``levels`` (K, L) out of ``h`` (n, L, C). Measured on the unit-normalised position ``x/|x|``, whose projection
    ``p`` onto the direction becomes ``p - a * max(0, p - level)`` by a rotation in the plane of the direction and the
    position (its norm and its part orthogonal to the plane are kept): at or below the level nothing changes, above it
    amount 1 brings it back exactly to the level, and larger amounts act as 1 (the removal is full there: beyond it the
    position went below the level, and from 10 on its norm grew 5-6000x and the image washed out). Rows with zero
    amounts are returned unchanged (bit-identical). ``active``: the directions with a positive amount in some row and
    a nonzero unit (`removal_active`), given by a caller that knows them so that nothing is read back from the device;
    None: found here."""
    amounts = amounts * (units.abs().amax(-1) > 0)  # a zero direction has nothing to remove (a negative level shrank tokens)
    if active is None:
        active = removal_active(units, amounts)
    norm = h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x = h / norm
    for k in active:
        a = amounts[:, k].clamp(max=1.0)
        u = units[k]
        p = x @ u  # (n, L)
        target = p - a[:, None] * (p - levels[k]).clamp_min(0)
        rest = x - p[..., None] * u  # the part orthogonal to u
        rest_norm = rest.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        x = target[..., None] * u + rest / rest_norm * (1 - target.clamp(-1, 1) ** 2).clamp_min(0).sqrt()[..., None]
    touched = (amounts > 0).any(dim=-1).reshape(-1, 1, 1)
    return torch.where(touched, x * norm, h)


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``t`` (a small CPU tensor made for one step) on ``device``. On CUDA without waiting for the device's queued
    work (a copy from pageable CPU memory is staged before it returns, so ``t`` may go); elsewhere a plain copy: on MPS
    a non-blocking copy can read the CPU tensor after it was freed (pytorch/pytorch#189690)."""
    return t.to(device=device, dtype=dtype, non_blocking=device.type == "cuda")


def removal_active(units: torch.Tensor, amounts: torch.Tensor) -> list[int]:
    """The directions `remove_excess` takes away: a nonzero unit (K, C) and a positive amount (n, K) in some row."""
    used = (amounts > 0).any(dim=0) & (units.abs().amax(-1) > 0)
    return [k for k, u in enumerate(used.tolist()) if u]


def apply_delta(h: torch.Tensor, delta: torch.Tensor, mode: str, preserve_norm: bool, fixed_tokens: int = 0) -> torch.Tensor:
    """Add a per-row delta (n, C) to an activation ``h`` ((n, C, H, W), (n, L, C) or (n, C)).

    ``mode`` and ``preserve_norm`` as in `SteeringConfig`. Rows whose delta is zero are returned unchanged
    (bit-identical), whatever the mode; so are the first ``fixed_tokens`` positions of an (n, L, C) ``h``.
    """
    dim = channel_dim(h)
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
    if fixed_tokens and h.ndim == 3:
        if fixed_tokens >= h.shape[1]:  # a file claiming every position: it would silently steer nothing
            raise ValueError(f"the direction leaves its first {fixed_tokens} token positions alone, but this call has only {h.shape[1]} tokens")
        new = torch.cat([h[:, :fixed_tokens], new[:, fixed_tokens:]], dim=1)
    return new


@dataclass(frozen=True)
class SteeredText:
    """The text tokens a text site steered at one call, kept for the next calls of the run (`SteeringSession.steered`)."""

    key: tuple
    source: torch.Tensor
    source_version: int
    out: torch.Tensor
    out_version: int

    def holds(self, key: tuple, h: torch.Tensor) -> bool:
        """Whether this is ``h`` steered with ``key``: the same tensor, changed in place by nothing since (its
        version counter) and an answer nobody changed in place either."""
        return key == self.key and h is self.source and h._version == self.source_version and self.out._version == self.out_version


class SteeringSession(DenoiserRun):
    """Adds ``scale · v`` to chosen UNet module outputs for the calls made inside this context.

    ``scales`` is a (R, K) tensor: R = 1 (all rows) or one row per image of the batch, K = number of vectors.
    With ``cfg`` the UNet batch is ``[uncond, cond]`` and ``config.branch`` picks the half that is steered (one
    branch for every vector, or one per vector); with a `SequentialCFG` layout it picks the calls (see `branch_sign`).
    """

    def __init__(
        self,
        unet: nn.Module,
        plans: dict[str, LayerPlan],
        scales: torch.Tensor,
        config: SteeringConfig | None = None,
        *,
        num_steps: int | Callable[[], int] | None = None,
        cfg: bool | Callable[[], bool] = False,
        text_routes: Sequence[tuple[str, ...] | None] | None = None,
    ):
        super().__init__(unet, num_steps, cfg)
        # per vector, the cross-attentions that read it at the text site (None: every one), when the call sets no
        # `steering_readers` and the vectors record different ones: each is read where it was calibrated
        self.text_routes = list(text_routes) if text_routes is not None else None
        if scales.ndim != 2 or any(p.directions.shape[0] != scales.shape[1] for p in plans.values()):
            raise ValueError(f"scales must be (rows, {next(iter(plans.values())).directions.shape[0]}), got {tuple(scales.shape)}")
        self.plans = plans
        self.config = config if config is not None else SteeringConfig()
        self._said_no_cfg = False  # steering_branch='uncond' without CFG: said once
        scales = scales.detach().float().cpu()
        self.removing = self.config.negative in REMOVING and bool((scales < 0).any())
        # with steering_negative="remove", negative scales are removal amounts, applied apart from the additive part
        self.scales = scales.clamp_min(0) if self.removing else scales
        self.removal = (-scales).clamp_min(0) if self.removing else None
        if self.removing:
            self._check_levels()
        # one window per vector (the call set none and its vectors record different ones, or it gave one per vector):
        # each vector acts only inside its own; None: the call's one window
        count = scales.shape[1]
        # one branch per vector (a slider on split beside a one-sided direction on cond): each column of the scales
        # is laid out for its own; None: the call's one branch
        self.branches = vector_branches(self.config.branch, count)
        if self.branches is not None and len(set(self.branches)) == 1:
            self.branches = None
            self.config = dataclasses.replace(self.config, branch=self.config.branch[0])
        self._branch_masks = {b: torch.tensor([float(x == b) for x in self.branches]) for b in dict.fromkeys(self.branches)} if self.branches else {}
        self.windows = vector_windows(self.config.window, count)
        if self.windows is not None and None in self.windows:  # `build_steering_session` resolves them from its directions
            raise ValueError("steering_window has a None entry (the direction's recorded window): resolve it against the "
                             "call's directions first (steer.config.resolve_recorded_windows)")
        removal = vector_windows(self.config.removal_window, count, "steering_removal_window")
        if removal is None and self.windows is not None:  # one removal window (or none: each vector's window)
            removal = [self.config.removal_window] * count
        if removal is not None:
            windows = self.windows or [self.config.window] * count
            removal = [r if r is not None else w for r, w in zip(removal, windows, strict=True)]
        self.removal_windows = removal
        self._masks: dict[tuple, torch.Tensor] = {}
        self.applied_steps: list[int] = []
        # the take-away's word swap of this call's rows (`steer.word_swap.plan_word_swap`), set by the pipeline
        self.word_swap: WordSwap | None = None

    def _check_levels(self) -> None:
        used = (self.removal > 0).any(dim=0)
        for plan in self.plans.values():
            missing = [k for k in range(len(used)) if used[k] and (plan.levels is None or bool(plan.levels[k].isnan().any()))]
            if missing:
                raise ValueError(
                    f"steering_negative='remove' needs each removed vector's reference level at {plan.name!r}; vector(s) "
                    f"{missing} have none (learn them with preset='text', or use steering_negative='subtract')"
                )

    def _register(self) -> None:
        channels = layer_channels(self.unet, list(self.plans))
        for name, plan in self.plans.items():
            want = plan.directions.shape[-1]
            if channels[name] != want:
                raise ModelMismatchError(
                    f"channel mismatch at layer {name!r}: the direction has {want} channels, the UNet's output there has {channels[name]}"
                )
            if name == CONTEXT_SITE:
                for readers, routed in self.text_groups(plan):
                    self._handles.append(register_site_hook(self.unet, name, self._make_hook(routed), readers))
                continue
            self._handles.append(register_site_hook(self.unet, name, self._make_hook(plan)))

    def text_groups(self, plan: LayerPlan) -> list[tuple[tuple[str, ...] | None, LayerPlan]]:
        """The text site's plan split by who reads it: (readers, plan of those vectors), ``readers`` None for the
        denoiser's input (every cross-attention). One group (the call's ``readers``) unless the vectors record
        different routes; then the every-reader group comes first (its hook sits on the denoiser's input, so the
        routed groups add to what it already steered), and groups of vectors that do not steer the text are left out."""
        if self.text_routes is None:
            return [(self.config.readers, plan)]
        routes = list(dict.fromkeys(self.text_routes))
        routes.sort(key=lambda r: r is not None)
        groups = []
        for readers in routes:
            members = torch.tensor([float(x == readers) for x in self.text_routes])
            if bool(plan.directions[members.bool()].any()):
                groups.append((readers, LayerPlan(plan.name, plan.directions, plan.levels, plan.fixed_tokens, members)))
        return groups

    def branch_sign(self, branch: str | None = None) -> int:
        """With sequential CFG: +1, -1 or 0, how ``branch`` treats the branch of the call in progress (``"split"``: + on
        the conditional call, - on the unconditional one; default ``config.branch``, with one per vector: nonzero when
        any of them steers the call). 1 otherwise."""
        if branch is None and self.branches is not None:
            return int(any(self.branch_sign(b) for b in self._branch_masks))
        branch, call = branch or self.config.branch, self.call_branch
        if call is None or branch == "both":
            return 1
        if branch == "split":
            return {"cond": 1, "uncond": -1}.get(call, 0)
        return int(branch == call)

    def adds_now(self) -> bool:
        """Whether the additive part acts on the call in progress: inside the window (some vector's own, with one
        per vector), on a steered branch."""
        if not self.branch_sign():
            return False
        if self.windows is None:
            return self.in_window(self.config.window)
        return any(self.in_window(w) for w in self.windows)

    def removes_now(self) -> bool:
        """Whether the removal acts on the call in progress: inside the removal window (default the window; with
        one per vector, that of a vector being removed), on the conditional branch."""
        if not self.removing or not self.branch_sign("cond"):
            return False
        if self.removal_windows is None:
            return self.in_window(self.config.removal_window or self.config.window)
        used = (self.removal > 0).any(dim=0).tolist()
        return any(u and self.in_window(w) for u, w in zip(used, self.removal_windows, strict=True))

    def window_mask(self, windows: list[tuple[float, float]] | None) -> torch.Tensor | None:
        """(K,) 1 for the vectors whose own window holds the current step, 0 for the others; None without
        per-vector windows. Computed once per step (every hook of the step asks)."""
        if windows is None:
            return None
        key = (id(windows), self.step, self.num_steps)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._masks[key] = torch.tensor([float(self.in_window(w)) for w in windows])
        return mask

    def row_scales(self, n: int, scales: torch.Tensor | None = None, branch: str | None = None) -> torch.Tensor:
        """(n, K) ``scales`` (default the additive ones) for a UNet batch of n rows, laid out for ``branch`` (default
        ``config.branch``; with one per vector, each column for its own): the unsteered CFG half zeroed, ``"split"``
        negated on the unconditional half."""
        scales = self.scales if scales is None else scales
        if branch is None and self.branches is not None:
            # each branch's columns laid out for it, the others' zero: a sum of one value and exact zeros per entry
            parts = [self.row_scales(n, scales * mask, b) for b, mask in self._branch_masks.items()]
            return torch.stack(parts).sum(0)
        branch = branch or self.config.branch
        if self.call_branch is not None:  # sequential CFG: the whole call is one branch
            s = scales.expand(n, -1) if scales.shape[0] == 1 else scales
            if s.shape[0] != n:
                raise ValueError(f"steering_scale has {s.shape[0]} rows but the batch has {n} images")
            return s * self.branch_sign(branch)
        cfg = self.cfg
        if cfg and n % 2:
            raise ValueError(f"classifier-free guidance expects an even UNet batch, got {n} rows")
        images = n // 2 if cfg else n
        s = scales
        if s.shape[0] == 1:
            s = s.expand(images, -1)
        elif s.shape[0] != images:
            raise ValueError(f"steering_scale has {s.shape[0]} rows but the batch has {images} images")
        if not cfg:
            if branch == "uncond" and not self._said_no_cfg:  # once a call
                self._said_no_cfg = True
                warnings.warn("steering_branch='uncond' steers the unconditional half of classifier-free guidance, and this "
                              "call has none (guidance_scale <= 1): its one prediction is steered, where +scale pushes toward "
                              "the direction (under guidance 'uncond' pushes away from it)", UserWarning, stacklevel=2)
            return s
        zero = torch.zeros_like(s)
        return {
            "cond": torch.cat([zero, s]),
            "uncond": torch.cat([s, zero]),
            "both": torch.cat([s, s]),
            "split": torch.cat([-s, s]),
        }[branch]

    def step_delta(self, plan: LayerPlan, rows: int) -> torch.Tensor:
        """(rows, C) delta of ``plan`` at the current step: each row's weighted sum of the vectors' directions."""
        scales, directions = self.row_scales(rows), plan.at(self.step, self.num_steps)
        if plan.members is not None:
            scales = scales * plan.members
        if (mask := self.window_mask(self.windows)) is not None:
            scales = scales * mask
        # products first, then the sum (not a matmul, whose kernels may fuse them): a direction added and taken away
        # again (scales s and -s) then cancels exactly, whatever the CPU's instructions
        return (scales[:, :, None] * directions[None]).sum(dim=1)

    def _make_hook(self, plan: LayerPlan) -> Callable[[torch.Tensor], torch.Tensor | None]:
        def hook(h: torch.Tensor) -> torch.Tensor | None:
            return self.steered(plan, h) if self.mine() else None

        return hook

    def steered(self, plan: LayerPlan, h: torch.Tensor) -> torch.Tensor | None:
        """``h`` (the output of ``plan``'s site, or the text tokens) as ``plan`` steers it at the denoiser call in
        progress: the additive part, then the removal; None where neither acts now."""
        adding, removing = self.adds_now(), self.removes_now()
        if not (adding or removing):
            return None
        dim = channel_dim(h)
        if h.shape[dim] != plan.directions.shape[-1]:
            raise ValueError(
                f"channel mismatch at layer {plan.name!r}: the direction has {plan.directions.shape[-1]} channels, "
                f"this call's output has {h.shape[dim]} (shape {tuple(h.shape)})"
            )
        if self.step not in self.applied_steps:
            self.applied_steps.append(self.step)
        reuse = self._text_reuse_key(plan, h, adding, removing)
        if reuse is not None and (hit := plan.cache.get(("text", self.call_branch))) is not None and hit.holds(reuse, h):
            return hit.out
        source = h
        if self.call_branch is not None and h.shape[0] == 1 < self.scales.shape[0]:
            # a one-row input the denoiser broadcasts over the images (Flux's negative prompt given as one
            # string for several prompts): one row per image, so each row gets its own scale
            h = h.expand(self.scales.shape[0], *h.shape[1:])
        out = self._steer(plan, h, adding, removing)
        if reuse is not None:
            plan.cache[("text", self.call_branch)] = SteeredText(reuse, source, source._version, out, out._version)
        return out

    def _text_reuse_key(self, plan: LayerPlan, h: torch.Tensor, adding: bool, removing: bool) -> tuple | None:
        """What the steered text tokens depend on besides the tokens themselves, when they may be reused: a pipeline
        gives the denoiser the same text tensor at every step, so the text site is steered once per step bucket,
        window mask and CFG branch instead of at every call (on a GPU the step's end waits for the device, so a
        hook's work at the call's start is not hidden). None (steer at every call) for other sites, with autograd
        on, and for inference tensors, whose in-place changes (a step callback's) could not be seen."""
        if plan.name != CONTEXT_SITE or torch.is_grad_enabled() or h.is_inference():
            return None
        masks = [self.window_mask(self.windows) if adding else None, self.window_mask(self.removal_windows) if removing else None]
        return (plan.bucket(self.step, self.num_steps), self.call_branch, adding, removing,
                *(None if m is None else m.numpy().tobytes() for m in masks))

    def _steer(self, plan: LayerPlan, h: torch.Tensor, adding: bool, removing: bool) -> torch.Tensor:
        out = h
        if removing and self.word_swap is not None and plan.name == CONTEXT_SITE:
            out = self._swap_words(plan, out, adding)
        if adding:
            mask = self.window_mask(self.windows)
            key = (plan.bucket(self.step, self.num_steps), h.shape[0], h.device, h.dtype, self.call_branch,
                   None if mask is None else mask.numpy().tobytes())
            delta = plan.cache.get(key)
            if delta is None:  # (n, C): each row's weighted sum of directions
                delta = to_device(self.step_delta(plan, h.shape[0]), h.device, h.dtype)
                plan.cache[key] = delta
            out = apply_delta(out, delta, self.config.mode, self.config.preserve_norm, plan.fixed_tokens)
        if removing:
            out = self._remove(plan, out)
        return out

    def _swap_words(self, plan: LayerPlan, h: torch.Tensor, adding: bool) -> torch.Tensor:
        """``h`` with each row's stated phrase turned into its target's (`steer.engine.word_swap`) by `swap_amounts`."""
        return swap_words(h, self.word_swap, self.swap_amounts(plan, h.shape[0], adding))

    def swap_amounts(self, plan: LayerPlan, rows: int, adding: bool) -> torch.Tensor:
        """(rows,) each batch row's word-swap amount at this step: the take-away's removal amount, at the steps where
        the target is added (its window; docs/steering.md "Session 41": following the removal past it was measured
        too and not adopted), for the readers that read the target (its route: ``plan``'s members; the source may be
        removed for every reader)."""
        added = self.row_scales(rows) * (adding if (mask := self.window_mask(self.windows)) is None else mask)
        if plan.members is not None:
            added = added * plan.members
        return self.word_swap.row_amounts(self._removal_amounts(rows), added)

    def _removal_amounts(self, rows: int) -> torch.Tensor:
        """(rows, K) the removal amounts at this step: the conditional half only, each vector's removal window
        applied."""
        amounts = self.row_scales(rows, self.removal, "cond")
        if (mask := self.window_mask(self.removal_windows)) is not None:
            amounts = amounts * mask
        return amounts

    def _remove(self, plan: LayerPlan, h: torch.Tensor) -> torch.Tensor:
        if h.ndim != 3:
            raise ValueError(
                f"steering_negative='remove' at {plan.name!r} expects (batch, tokens, channels) text tokens, got shape "
                f"{tuple(h.shape)}"
            )
        units, levels, amounts, active = self._removal_inputs(plan, h)
        k = plan.fixed_tokens  # left alone here too (their projection equals the level up to its rounding)
        removed = remove_excess(h[:, k:].float(), units, levels[:, k:], amounts, active).to(h.dtype)
        return torch.cat([h[:, :k], removed], dim=1) if k else removed

    def _removal_inputs(self, plan: LayerPlan, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """The removal's unit directions (K, C), levels (K, L) and amounts (n, K) on ``h``'s device, and the
        directions it takes away; computed on the CPU once per step bucket, layout and window mask, like the additive
        delta, so that a steered call copies nothing to the device and reads nothing back at most of its steps (each
        would wait for the device to finish its queued work)."""
        mask = self.window_mask(self.removal_windows)
        key = ("remove", plan.bucket(self.step, self.num_steps), h.shape[0], h.shape[1], h.device, self.call_branch,
               None if mask is None else mask.numpy().tobytes())
        found = plan.cache.get(key)
        if found is None:
            d = plan.at(self.step, self.num_steps)
            units = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            amounts = self._removal_amounts(h.shape[0])
            if plan.members is not None:
                amounts = amounts * plan.members
            levels = torch.nan_to_num(levels_for_length(plan.levels, h.shape[1]))
            found = plan.cache[key] = (to_device(units, h.device, torch.float32), to_device(levels, h.device, torch.float32),
                                       to_device(amounts, h.device, torch.float32), removal_active(units, amounts))
        return found
