"""`SteeringStableDiffusionPipeline`: `StableDiffusionPipeline` plus steering vectors applied by forward hooks."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from steer.detect import INLINE_CALL_PARAMS, detect_memorization, enter_inline_detection
from steer.dtypes import AutoDtypeMixin
from steer.hooks import (
    PAPER_WINDOW,
    LayerPlan,
    SteeringConfig,
    SteeringSession,
    build_layer_plans,
    resolve_layers,
)
from steer.learn import learn_direction
from steer.validation import FiniteOutputMixin, check_steering_request
from steer.vectors import SteeringVector, as_vector_list

# Per-pipeline defaults set by `pipe.steering(...)`, scoped to the current thread / task.
_CONTEXT_DEFAULTS: contextvars.ContextVar[dict[int, dict[str, Any]]] = contextvars.ContextVar("steer_defaults", default=None)

_STEERING_DEFAULTS: dict[str, Any] = {
    "steering": None,
    "steering_scale": 1.0,
    "steering_layers": None,
    "steering_window": PAPER_WINDOW,
    "steering_branch": "cond",
    "steering_normalize": False,
    "steering_mode": "add",
    "steering_preserve_norm": False,
    "steering_strict": True,
}
# Options a direction may carry in ``metadata["recommended"]`` (its learned / calibrated settings); a call that does
# not set one of them (neither as an argument nor through `pipe.steering(...)`) uses the direction's value.
RECOMMENDABLE = ("layers", "window", "branch", "normalize", "mode", "preserve_norm")


def recommended_settings(vectors: Sequence[SteeringVector]) -> dict[str, Any]:
    """The ``steering_*`` settings the vectors recommend: those all of them record with one value."""
    if not vectors:
        return {}
    recs = [v.metadata.get("recommended") or {} for v in vectors]
    out: dict[str, Any] = {}
    for key in RECOMMENDABLE:
        values = [r.get(key) for r in recs]
        if values[0] is None or any(val != values[0] for val in values[1:]):
            continue
        out[f"steering_{key}"] = tuple(values[0]) if key == "window" else values[0]
    return out


def unwrap_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """The plain UNet behind a `torch.compile` wrapper."""
    return getattr(unet, "_orig_mod", unet)


def parse_scales(scale: Any, num_vectors: int, num_images: int) -> torch.Tensor:
    """Turn ``steering_scale`` into a (rows, vectors) tensor; rows is 1 or ``num_images``.

    A float applies everywhere; a list of ``num_vectors`` floats is one per vector; a list of ``num_images`` floats
    is one per batch row (a sweep); a nested list / 2-D tensor is (rows, vectors). When both lengths are equal the
    per-vector reading wins: pass a 2-D value to be explicit.
    """
    s = torch.as_tensor(scale, dtype=torch.float32) if not isinstance(scale, torch.Tensor) else scale.float().cpu()
    if not torch.isfinite(s).all():
        raise ValueError(f"steering_scale must be finite, got {scale!r}")
    if s.ndim == 0:
        return s.reshape(1, 1).expand(1, num_vectors).clone()
    if s.ndim == 1:
        n = s.shape[0]
        if n == 1:
            return s.reshape(1, 1).expand(1, num_vectors).clone()
        if n == num_vectors:
            return s.reshape(1, n)
        if n == num_images:
            return s.reshape(n, 1).expand(n, num_vectors).clone()
        raise ValueError(
            f"steering_scale has {n} values: expected 1, one per vector ({num_vectors}) or one per image ({num_images})"
        )
    if s.ndim == 2 and s.shape[1] == num_vectors and s.shape[0] in (1, num_images):
        return s
    raise ValueError(f"steering_scale of shape {tuple(s.shape)} does not fit {num_images} images x {num_vectors} vectors")


class _ContextOnly:
    """Mark a session active in this context without registering its per-call hooks (compiled mode)."""

    def __init__(self, session: SteeringSession):
        self.session = session

    def __enter__(self):
        from steer.hooks import _ACTIVE

        self._token = _ACTIVE.set(_ACTIVE.get() | {id(self.session)})
        return self.session

    def __exit__(self, *exc: Any) -> None:
        from steer.hooks import _ACTIVE

        _ACTIVE.reset(self._token)


class SteeringStableDiffusionPipeline(AutoDtypeMixin, FiniteOutputMixin, StableDiffusionPipeline):
    """Stable Diffusion with training-free representation steering.

    A drop-in `StableDiffusionPipeline`: load it with `from_pretrained` or `from_pipe`. Extra `__call__` arguments
    (all keyword-only):

    - ``steering``: a `SteeringVector`, a path to one, a list of them, or None.
    - ``steering_scale``: float, one per vector, one per batch row, or (rows, vectors); negative subtracts.
    - ``steering_layers``: None (the vectors' layers) or names / glob patterns restricting them.
    - ``steering_window``: ``(start, end)`` fractions of the denoising run (default the paper's (0.45, 0.95)).
    - ``steering_branch``: ``"cond"`` (paper), ``"uncond"``, ``"both"`` or ``"split"`` (+scale on the conditional
      half, -scale on the unconditional one: guidance amplifies the push); irrelevant without CFG.
    - ``steering_normalize``: unit-norm each layer's vector and measure the scale in units of that layer's typical
      activation norm, so equal scales mean comparable strength across directions and layers.
    - ``steering_mode``: ``"add"`` (uniform over space, paper), ``"weighted"`` (each position weighted by its
      activation norm, so the edit lands where the content is) or ``"token"`` (the vector is in units of each
      position's own norm).
    - ``steering_preserve_norm``: rescale every steered position to its pre-steering norm.
    - ``steering_strict``: require the vector's base-model weights hash to match (False allows fine-tunes).

    Options a call leaves unset come from the direction's ``metadata["recommended"]`` (what `learn_direction`
    calibrated), else the defaults above. With no vector, or every scale zero, the call is exactly `StableDiffusionPipeline.__call__`. Out-of-range inputs and
    NaN images raise (`steer.validation`); loading without a dtype: `steer.dtypes.AutoDtypeMixin`.
    """

    _steering_params = tuple(_STEERING_DEFAULTS)

    # ------------------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def steering(self, vector: SteeringVector | Sequence[SteeringVector] | str, scale: Any = 1.0, **options: Any) -> Iterator[None]:
        """Apply ``vector`` at ``scale`` to every call inside the block (this thread only).

        ``options`` take the `__call__` names without the ``steering_`` prefix (``window=``, ``branch=``, ...)
        or with it. Arguments passed to a call inside the block override these.
        """
        settings = {"steering": vector, "steering_scale": scale}
        for key, value in options.items():
            full = key if key.startswith("steering_") else f"steering_{key}"
            if full not in _STEERING_DEFAULTS:
                raise TypeError(f"unknown steering option {key!r}; known: {[k[9:] for k in _STEERING_DEFAULTS][1:]}")
            settings[full] = value
        current = dict(_CONTEXT_DEFAULTS.get() or {})
        current[id(self)] = {**current.get(id(self), {}), **settings}
        token = _CONTEXT_DEFAULTS.set(current)
        try:
            yield
        finally:
            _CONTEXT_DEFAULTS.reset(token)

    # ------------------------------------------------------------------------------------------------------------
    def _resolve_steering(self, explicit: dict[str, Any]) -> tuple[dict[str, Any], list[SteeringVector]]:
        """Settings of this call: built-in defaults < the vectors' recommended ones < `steering(...)` < arguments."""
        given = {**(_CONTEXT_DEFAULTS.get() or {}).get(id(self), {}), **explicit}
        vectors = as_vector_list(given.get("steering"))
        settings = {**_STEERING_DEFAULTS, **recommended_settings(vectors), **given}
        return settings, vectors

    def _num_images(self, bound: inspect.BoundArguments) -> int:
        args = bound.arguments
        prompt, embeds = args.get("prompt"), args.get("prompt_embeds")
        if isinstance(prompt, str):
            batch = 1
        elif isinstance(prompt, list):
            batch = len(prompt)
        elif embeds is not None:
            batch = embeds.shape[0]
        else:
            batch = 1
        return batch * (args.get("num_images_per_prompt") or 1)

    def build_steering_session(
        self,
        vectors: list[SteeringVector],
        scales: torch.Tensor,
        *,
        layers: str | Iterable[str] | None = None,
        window: tuple[float, float] = PAPER_WINDOW,
        branch: str = "cond",
        normalize: bool = False,
        mode: str = "add",
        preserve_norm: bool = False,
        strict: bool = True,
        scheduler: Any = None,
        cfg: Any = None,
    ) -> SteeringSession:
        """Validate vectors against this UNet and build the (not yet entered) hook session."""
        unet = unwrap_unet(self.unet)
        config = SteeringConfig(window=tuple(window), branch=branch, normalize=bool(normalize), mode=mode, preserve_norm=preserve_norm)
        selected = None
        if layers is not None:
            patterns = [layers] if isinstance(layers, str) else list(layers)
            have = {n for v in vectors for n in v.layers}
            selected = []
            for pattern in patterns:
                hits = resolve_layers(unet, [pattern])
                is_glob = any(ch in pattern for ch in "*?[")
                missing = [] if is_glob else [n for n in hits if n not in have]
                hits = [n for n in hits if n in have]
                if missing or not hits:
                    raise ValueError(
                        f"steering_layers {pattern!r} is not in the direction(s) {[v.name for v in vectors]}; "
                        f"they have {sorted(have)}"
                    )
                selected += [n for n in hits if n not in selected]
        for v in vectors:
            names = [n for n in v.layers if selected is None or n in selected]
            resolve_layers(unet, names)
            v.check_compatible(unet, names, strict=strict)
        plans: dict[str, LayerPlan] = build_layer_plans(vectors, selected, config.normalize)
        scheduler = scheduler or self.scheduler
        return SteeringSession(
            unet,
            plans,
            scales,
            config,
            num_steps=lambda: len(scheduler.timesteps),
            cfg=cfg if cfg is not None else (lambda: self.do_classifier_free_guidance),
        )

    def compile_unet(self, layers: str | Iterable[str] | None = None, **compile_kwargs: Any) -> None:
        """``torch.compile`` the UNet with persistent steering sites at ``layers`` (default: every resnet and
        attention output). Later steering calls on those layers never recompile when vector, scale or window change.
        """
        from steer.hooks import StaticSteeringSites, list_layers

        unet = unwrap_unet(self.unet)
        existing = getattr(self, "_static_sites", None)
        if existing is not None:
            existing.remove()
        sites = StaticSteeringSites(unet, list(layers) if layers is not None else list_layers(unet))
        compiled = torch.compile(unet, **compile_kwargs)
        sites.attach(compiled)
        self.__dict__["_static_sites"] = sites
        self.unet = compiled

    def _call_copy(self) -> SteeringStableDiffusionPipeline:
        """A shallow per-call copy with its own scheduler, so concurrent calls never share loop state."""
        clone = copy.copy(self)
        clone.__dict__["scheduler"] = copy.deepcopy(self.scheduler)
        return clone

    # ------------------------------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any):
        explicit = {k: kwargs.pop(k) for k in list(kwargs) if k in _STEERING_DEFAULTS}
        extras = {k: kwargs.pop(k) for k in list(kwargs) if k in self._extra_call_params()}
        settings, vectors = self._resolve_steering(explicit)
        bound = inspect.signature(StableDiffusionPipeline.__call__).bind(self, *args, **kwargs)
        num_images = self._num_images(bound)
        scales = parse_scales(settings["steering_scale"], max(len(vectors), 1), num_images) if vectors else None
        check_steering_request(vectors, scales, settings, unwrap_unet(self.unet).dtype)  # ranges, empty layers
        active = bool(vectors) and bool(scales.abs().sum() > 0)

        sites = self.__dict__.get("_static_sites") if hasattr(self.unet, "_orig_mod") else None
        if not active and not any(extras.values()) and sites is None:
            return super().__call__(*args, **kwargs)

        call_pipe = self._call_copy()
        with contextlib.ExitStack() as stack:
            if sites is None and hasattr(self.unet, "_orig_mod") and active:
                raise RuntimeError(
                    "pipe.unet is torch.compile-d without steering sites: compiled graphs ignore hooks added later. "
                    "Use pipe.compile_unet(layers=...) instead of torch.compile(pipe.unet)."
                )
            if sites is not None:
                stack.enter_context(sites.lock)
            if active:
                device = self._execution_device
                vectors = [v.to(device) for v in vectors]
                session = self.build_steering_session(
                    vectors,
                    scales,
                    layers=settings["steering_layers"],
                    window=settings["steering_window"],
                    branch=settings["steering_branch"],
                    normalize=settings["steering_normalize"],
                    mode=settings["steering_mode"],
                    preserve_norm=settings["steering_preserve_norm"],
                    strict=settings["steering_strict"],
                    scheduler=call_pipe.scheduler,
                    cfg=lambda: call_pipe.do_classifier_free_guidance,
                )
                if sites is not None:
                    outside = [n for n in session.plans if n not in sites.channels]
                    if outside:
                        raise ValueError(f"layers {outside} have no steering site in the compiled UNet; compile_unet(layers=...) with them")
                    sites.mode, sites.preserve_norm = session.config.mode, session.config.preserve_norm
                    sites.session = session
                    stack.callback(setattr, sites, "session", None)
                    stack.enter_context(_ContextOnly(session))
                else:
                    stack.enter_context(session)
            finish = self._enter_extras(call_pipe, stack, extras, num_images)
            output = StableDiffusionPipeline.__call__(call_pipe, *args, **kwargs)
            return finish(output) if finish is not None else output

    # Extension points for inline measurements (memorization detection) ------------------------------------------
    def _extra_call_params(self) -> tuple[str, ...]:
        return INLINE_CALL_PARAMS

    def _enter_extras(self, call_pipe, stack: contextlib.ExitStack, extras: dict[str, Any], num_images: int):
        return enter_inline_detection(call_pipe, stack, extras, num_images)

    # ------------------------------------------------------------------------------------------------------------
    def learn_direction(self, positive, negative=None, **kwargs: Any) -> SteeringVector:
        """Learn a `SteeringVector` training-free; see `steer.learn.learn_direction`."""
        return learn_direction(self, positive, negative, **kwargs)

    def detect_memorization(self, prompt, **kwargs: Any):
        """Generate, score (inline and re-encode) and judge memorization; see `steer.detect.detect_memorization`."""
        return detect_memorization(self, prompt, **kwargs)
