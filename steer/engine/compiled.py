"""torch.compile: persistent steering sites driven by tensors, so a compiled denoiser never recompiles per call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from steer.denoisers import (
    CONTEXT_SITE,
    adapter_for,
    cross_attention_sites,
    layer_channels,
    register_site_hook,
    resolve_layers,
    sites_lock,
    text_readers,
)
from steer.engine.steering import LayerPlan, SteeringSession, apply_delta
from steer.errors import LayerError


class StaticSteeringSites:
    """Persistent steering sites for a `torch.compile`-d UNet.

    Dynamo bakes module hooks into the compiled graph and (by default) does not guard on hooks added later, so
    per-call hooks would be silently ignored. Instead, ``install`` puts one hook per site *before* compiling; each
    adds a (rows, C) delta tensor that lives outside the graph. A pre-forward hook on the compiled wrapper fills
    the deltas in place before every UNet call (zeros when nothing is steered, outside the window, or in the other
    CFG branch), so changing the vector, scale or window never recompiles. Only ``mode`` and ``preserve_norm`` are
    Python constants (a change recompiles once). Every use of the UNet is serialised by its lock
    (`steer.denoisers.sites_lock`, `steer.denoisers.denoiser_use`): the buffers are shared by all of them.

    With the text site on a UNet, every cross-attention also gets a site of its own on the tokens it reads (its
    *reader* delta), so directions read by some cross-attentions only (`steering_readers`, given or recorded) steer
    the compiled denoiser too: each reader adds the deltas of the routes that include it, on top of the denoiser's
    input, as the eager hooks do.

    ``steering_negative="remove"`` (the take-away) is not a delta: it depends on each token; nor are two routes on one
    cross-attention (each preserves norms in turn). The text tokens are an input of the denoiser, so for such a call
    they are steered before the compiled graph runs, by the eager hooks' own functions: the denoiser's text input is
    replaced, and each cross-attention reads a (rows, tokens, channels) buffer holding the tokens of its routes
    (``replacing``, a Python constant: the first such call compiles once more).
    """

    def __init__(self, unet: nn.Module, layers: Sequence[str]):
        self.unet = unet
        self.layers = resolve_layers(unet, layers)
        # one line, before any hook is put on: sites (or reader sites) inside a module compiled in place
        readers = cross_attention_sites(unet) if CONTEXT_SITE in self.layers and adapter_for(unet).reader_groups else []
        adapter_for(unet).check_hookable(self.layers)
        adapter_for(unet).check_hookable(readers, site=CONTEXT_SITE)
        self.channels = layer_channels(unet, self.layers)
        self.deltas: dict[str, torch.Tensor] = {}
        self.reader_deltas: dict[str, torch.Tensor] = {}  # per cross-attention: routed text directions it reads
        # per site, from the session's plans; every key present from the start (adding one later would recompile)
        self.fixed_tokens: dict[str, int] = dict.fromkeys(self.layers, 0)
        self.mode = "add"  # Python constants of the graph: a change recompiles once
        self.preserve_norm = False
        self.replacing = False  # the readers take whole token tensors (`reader_tokens`) instead of adding deltas
        self.reader_tokens: dict[str, torch.Tensor] = {}
        self.session: SteeringSession | None = None
        # the session's text groups with the cross-attentions each is read by, fixed for the session (`activate`)
        self.text_groups: list[tuple[list[str] | None, LayerPlan]] = []
        self.lock = sites_lock(unet)  # one per module: every pipeline calling it (compiled or not) takes it
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for name in self.layers:
            self._handles.append(register_site_hook(unet, name, self._make_hook(name)))
        # one site per cross-attention for routed text directions (UNets: the families whose readers can be chosen)
        self.readers: list[str] = readers
        for reader in self.readers:
            self._handles.append(adapter_for(unet).register_reader_hook(reader, self._make_reader_hook(reader)))
        self._named: dict[tuple[str, ...], list[str]] = {}  # readers as named by a call -> cross-attention modules

    def _make_hook(self, name: str, deltas: dict[str, torch.Tensor] | None = None, site: str | None = None) -> Callable[[torch.Tensor], torch.Tensor | None]:
        """The hook adding ``deltas[name]`` (default `deltas`; a reader's: `reader_deltas`) with the fixed positions of
        ``site`` (default ``name``; a reader's: the text site's)."""
        deltas = self.deltas if deltas is None else deltas
        site = site or name

        def hook(h: torch.Tensor) -> torch.Tensor | None:
            delta = deltas.get(name)
            if delta is None or delta.shape[0] != h.shape[0]:  # a call not through the compiled wrapper (another batch)
                return None
            return apply_delta(h, delta, self.mode, self.preserve_norm, self.fixed_tokens.get(site, 0))

        return hook

    def _make_reader_hook(self, reader: str) -> Callable[[torch.Tensor], torch.Tensor | None]:
        """A cross-attention's hook: its route's tokens while `replacing`, else its reader delta added."""
        add = self._make_hook(reader, self.reader_deltas, CONTEXT_SITE)

        def hook(h: torch.Tensor) -> torch.Tensor | None:
            return self.reader_tokens[reader] if self.replacing else add(h)

        return hook

    def reader_groups_of(self, session: SteeringSession) -> list[tuple[list[str] | None, LayerPlan]]:
        """The text site's groups of ``session`` with the cross-attentions each is read by (None: the denoiser's
        input). ValueError in one line when this compiled denoiser cannot apply them: a route with no reader sites
        (the text site was not compiled with the readers)."""
        plan = session.plans.get(CONTEXT_SITE)
        if plan is None:
            return []
        groups = []
        for readers, routed in session.text_groups(plan):
            if readers is None:
                groups.append((None, routed))
                continue
            if not self.readers:
                raise ValueError("this compiled denoiser has no reader sites (compile_unet with the text site on a UNet); "
                                 "steer the eager one, or pass steering_readers='all'")
            key = tuple(readers)
            if key not in self._named:
                try:
                    self._named[key] = text_readers(self.unet, readers)
                except LayerError as err:
                    raise ValueError(str(err)) from None
            groups.append((self._named[key], routed))
        return groups

    def activate(self, session: SteeringSession) -> None:
        """Drive the sites from ``session`` for the calls that follow (until `deactivate`). ValueError in one line,
        before any sampling, when this compiled denoiser cannot apply it (`reader_groups_of`)."""
        groups = self.reader_groups_of(session)
        routed = [m for modules, _ in groups if modules is not None for m in modules]
        # a delta per reader cannot compose two routes on one cross-attention (norms are preserved at each): those
        # calls, like removing ones, steer the tokens before the graph
        replacing = session.removing or len(routed) != len(set(routed))
        if replacing and self.readers and getattr(getattr(self.unet, "config", None), "encoder_hid_dim_type", None):
            raise ValueError("a take-away (steering_negative='remove') or routes sharing a cross-attention on a compiled UNet "
                             "that projects its text input (encoder_hid_proj) are not supported; steer the eager one")
        self.mode, self.preserve_norm = session.config.mode, session.config.preserve_norm
        self.replacing = replacing
        self.text_groups, self.session = groups, session

    def deactivate(self) -> None:
        """Back to zero deltas: no session drives the sites. The readers' token buffers (a removing call's: one
        (rows, tokens, channels) tensor per cross-attention) are let go of."""
        self.session, self.text_groups, self.replacing = None, [], False
        self.reader_tokens.clear()
        # the hooks sit on the uncompiled module the parent pipeline (and copies made before compiling) still call:
        # the last call's deltas, left in the buffers, steered those unsteered calls
        for buf in (*self.deltas.values(), *self.reader_deltas.values()):
            buf.zero_()

    def attach(self, wrapper: nn.Module) -> None:
        """Fill the deltas before every call of ``wrapper`` (the compiled module)."""
        self._handles.append(wrapper.register_forward_pre_hook(self._before_call, with_kwargs=True))

    def _before_call(self, _module: nn.Module, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        # The latents: the first positional argument (UNet) or the ``hidden_states`` / ``sample`` keyword
        # (diffusion transformers are called with keywords only).
        sample = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        session = self.session
        if session is not None:
            session.advance()
        n = sample.shape[0] if isinstance(sample, torch.Tensor) else 1
        ref = sample if isinstance(sample, torch.Tensor) else next(self.unet.parameters())
        adding = session is not None and session.mine() and session.adds_now()
        for deltas, names in ((self.deltas, self.layers), (self.reader_deltas, self.readers)):
            for name in names:
                buf = deltas.get(name)
                if buf is None or buf.shape[0] != n or (buf.device, buf.dtype) != (ref.device, ref.dtype):
                    channels = self.channels[name if deltas is self.deltas else CONTEXT_SITE]
                    buf = deltas[name] = torch.zeros(n, channels, device=ref.device, dtype=ref.dtype)
                buf.zero_()
        replaced = self._replace_text(session, args, kwargs) if self.replacing else None
        if session is None or not session.mine():
            return replaced
        for name, plan in session.plans.items():
            if name in self.layers:  # kept otherwise: a zero delta leaves every token alone anyway, and no recompile
                self.fixed_tokens[name] = plan.fixed_tokens
        if not adding:
            return replaced
        for name, plan in session.plans.items():
            if name == CONTEXT_SITE:
                if self.replacing:  # steered before the graph (`_replace_text`)
                    continue
                for modules, routed in self.text_groups:
                    delta = session.step_delta(routed, n)
                    for buf in [self.reader_deltas[m] for m in modules] if modules is not None else [self.deltas[name]]:
                        buf.copy_(delta, non_blocking=buf.is_cuda)  # as `to_device`
            else:
                # on CUDA not waiting for the device's queued work (see `steer.engine.steering.to_device`)
                self.deltas[name].copy_(session.step_delta(plan, n), non_blocking=self.deltas[name].is_cuda)
        if session.step not in session.applied_steps:
            session.applied_steps.append(session.step)
        return replaced

    def _replace_text(self, session: SteeringSession | None, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        """While `replacing`: the call's text tokens steered by the session's every-reader group (returned as the
        call's new arguments), and each cross-attention's `reader_tokens` filled with what it reads: its routes'
        steering on top of those, as the eager hooks apply them."""
        adapter = adapter_for(self.unet)
        h = adapter.context_input(args, kwargs)
        if h is None:
            raise ValueError("this call steers the text tokens before the compiled denoiser, which needs them in the call")
        groups = self.text_groups if session is not None and session.mine() else []
        steered = h
        for modules, plan in groups:
            if modules is None:
                steered = session.steered(plan, h)
                steered = h if steered is None else steered
        # each cross-attention: the routed groups that include it, in order, on top of the input (as the eager
        # hooks chain on it); computed once per distinct set of groups
        routed = [(set(modules), plan) for modules, plan in groups if modules is not None]
        by_groups: dict[tuple[int, ...], torch.Tensor] = {}
        for reader in self.readers:
            key = tuple(i for i, (modules, _) in enumerate(routed) if reader in modules)
            if key not in by_groups:
                tokens = steered
                for i in key:
                    new = session.steered(routed[i][1], tokens)
                    tokens = tokens if new is None else new
                by_groups[key] = tokens
            tokens = by_groups[key]
            buf = self.reader_tokens.get(reader)
            if buf is None or buf.shape != tokens.shape or (buf.device, buf.dtype) != (tokens.device, tokens.dtype):
                buf = self.reader_tokens[reader] = torch.empty_like(tokens)
            buf.copy_(tokens)
        return None if steered is h else adapter.with_context_input(args, kwargs, steered)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
