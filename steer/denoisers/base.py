"""The denoiser adapter protocol: what the steering engine needs to know about one denoiser family.

A *site* is a module path whose output (a (B, C, H, W) feature map, a (B, L, C) token sequence, or an output object
or tuple holding one) is read or changed, or `CONTEXT_SITE`: the text tokens the denoiser's cross-attentions read.
An adapter lists a family's sites, picks its default steering layers, finds the hidden state inside a module's
output, counts channels and hooks one site. Everything else (the engine, learning, the pipelines) goes through it.
"""

from __future__ import annotations

import difflib
import fnmatch
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from steer.errors import LayerError

# The text tokens as every cross-attention of the denoiser reads them (its ``encoder_hidden_states`` input): a site of
# its own, steered by a pre-forward hook, with one channel per text-embedding dimension.
CONTEXT_SITE = "encoder_hidden_states"
GLOB_CHARS = "*?["


def channel_dim(h: torch.Tensor) -> int:
    """Channel axis: 1 for (B, C, H, W) and (B, C); -1 for token sequences (B, L, C)."""
    return -1 if h.ndim == 3 else 1


def main_tensor(output: Any, index: int = 0) -> torch.Tensor:
    """The hidden-state tensor inside a module output: a tensor, element ``index`` of a tuple, or ``.sample``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and len(output) > index and isinstance(output[index], torch.Tensor):
        return output[index]
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise TypeError(f"cannot find a hidden-state tensor in a module output of type {type(output).__name__}")


def replace_main_tensor(output: Any, new: torch.Tensor, index: int = 0) -> Any:
    """``output`` with its hidden state (as `main_tensor` finds it) replaced by ``new``."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple | list):
        items = list(output)
        items[index] = new
        return tuple(items) if isinstance(output, tuple) else items
    output.sample = new  # diffusers BaseOutput
    return output


class RemovableHandles:
    """Several hook handles removed as one (the shape of torch's ``RemovableHandle``)."""

    def __init__(self, handles: Sequence[Any]):
        self.handles = list(handles)

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()


class DenoiserAdapter:
    """One denoiser family's sites. Subclasses set `family`, `model_classes` and implement `list_layers`,
    `default_layers` and `probe_inputs`; the rest is shared.

    Args:
        model: the denoiser (`UNet2DConditionModel`, a diffusers transformer, ...), not a compiled wrapper.
    """

    family: ClassVar[str] = ""
    model_classes: ClassVar[tuple[str, ...]] = ()
    # Keyword under which the denoiser receives the text tokens, and its positional index when passed positionally.
    context_kwarg: ClassVar[str] = "encoder_hidden_states"
    context_position: ClassVar[int | None] = None
    # Every kind of site, for listings (`steer layers`, the app's layer slider); `list_layers()` alone gives the
    # family's usual steering sites.
    listing_kinds: ClassVar[tuple[str, ...]] = ()
    # Named groups of cross-attentions that `steering_readers` accepts (glob patterns over `cross_attention_sites`);
    # empty where the text is not read by cross-attentions alone (the text site cannot be routed there).
    reader_groups: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return type(model).__name__ in cls.model_classes

    # -- what a family defines ----------------------------------------------------------------------------------
    def list_layers(self, kinds: Iterable[str] | None = None) -> list[str]:
        raise NotImplementedError

    def default_layers(self) -> list[str]:
        raise NotImplementedError

    def probe_inputs(self) -> tuple[tuple, dict[str, Any]]:
        """Arguments of one tiny forward pass (to read channel counts of modules that do not declare them)."""
        raise NotImplementedError

    def context_dim(self) -> int | None:
        """Channels of the text tokens the denoiser reads (`CONTEXT_SITE`), or None when it has no such input."""
        return None

    def output_index(self, name: str) -> int:
        """Which element of the module's tuple output is the hidden state to steer (image tokens)."""
        return 0

    def cross_attention_sites(self) -> list[str]:
        """Every cross-attention (``attn2``) module, input side first: where the text enters."""
        return self.list_layers(("attn2",))

    # -- shared -------------------------------------------------------------------------------------------------
    def glob_candidates(self) -> list[str]:
        """The sites a glob pattern is matched against before falling back to every module path."""
        return self.list_layers()

    def resolve_layers(self, patterns: str | Iterable[str]) -> list[str]:
        """Expand exact module paths and glob patterns (``"up_blocks.0.resnets.*"``) into module paths.

        Raises `LayerError` naming the unknown entry and its closest matches.
        """
        if isinstance(patterns, str):
            patterns = [patterns]
        modules = dict(self.model.named_modules())
        candidates = [n for n in modules if n]
        out: list[str] = []
        for pattern in patterns:
            if any(ch in pattern for ch in GLOB_CHARS):
                hits = [n for n in self.glob_candidates() if fnmatch.fnmatchcase(n, pattern)]
                hits = hits or [n for n in candidates if fnmatch.fnmatchcase(n, pattern)]
                if not hits:
                    raise LayerError(
                        f"layer pattern {pattern!r} matches no module of this {self.family}; e.g. {self.list_layers()[:6]}"
                    )
            elif (pattern in modules and pattern) or (pattern == CONTEXT_SITE and self.context_dim()):
                hits = [pattern]
            else:
                close = difflib.get_close_matches(pattern, candidates, n=5, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; hookable layers include {self.list_layers()[:8]}"
                raise LayerError(f"unknown layer {pattern!r}{hint}")
            out += [h for h in hits if h not in out]
        return out

    def text_readers(self, readers: Sequence[str]) -> list[str]:
        """The cross-attention modules ``readers`` names: `reader_groups` names, module paths or glob patterns over
        `cross_attention_sites`. Raises `LayerError` (one line) for a family without routing or a name that matches
        none."""
        if not self.reader_groups:
            raise LayerError(f"steering_readers needs a UNet denoiser (SD 1.x/2.x, SDXL); this {self.family} reads the text elsewhere too")
        sites = self.cross_attention_sites()
        out: list[str] = []
        for reader in readers:
            patterns = self.reader_groups.get(reader, (reader,))
            hits = [n for n in sites if any(fnmatch.fnmatchcase(n, p) for p in patterns)]  # a plain path matches itself
            if not hits:
                raise LayerError(
                    f"steering_readers {reader!r} names no cross-attention of this {self.family}; use "
                    f"{' or '.join(repr(g) for g in self.reader_groups)}, or patterns over {sites[:4]}"
                )
            out += [h for h in hits if h not in out]
        return out

    def register_site_hook(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None], readers: Sequence[str] | None = None):
        """Hook ``fn(h) -> new h | None`` on site ``name``: a module's output, or (`CONTEXT_SITE`) the denoiser's
        text input, or with ``readers`` (see `text_readers`) the text input of those cross-attentions only. Returns
        the removable handle. Raises `LayerError` (one line) where ``torch.compile`` would ignore the hook
        (`check_hookable`)."""
        if name == CONTEXT_SITE and readers is not None:
            names = self.text_readers(readers)
            self.check_hookable(names, site=name)
            return self._register_reader_hooks(names, fn)
        self.check_hookable([name])
        return self._hook_site(name, fn)

    def _hook_site(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
        """`register_site_hook` for a module site or the denoiser's text input (checked hookable)."""
        if name == CONTEXT_SITE:

            def pre(_module: nn.Module, args: tuple, kwargs: dict) -> Any:
                h = self.context_input(args, kwargs)
                new = fn(h) if h is not None else None
                return None if new is None else self.with_context_input(args, kwargs, new)

            return self.model.register_forward_pre_hook(pre, with_kwargs=True)

        index = self.output_index(name)

        def post(_module: nn.Module, _args: Any, output: Any) -> Any:
            new = fn(main_tensor(output, index))
            return None if new is None else replace_main_tensor(output, new, index)

        return dict(self.model.named_modules())[name].register_forward_hook(post)

    def context_input(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The text tokens (`CONTEXT_SITE`) in a denoiser call's arguments, or None (an unconditional call)."""
        h = kwargs.get(self.context_kwarg)
        if isinstance(h, torch.Tensor):
            return h
        position = self.context_position
        if self.context_kwarg not in kwargs and position is not None and len(args) > position and isinstance(args[position], torch.Tensor):
            return args[position]
        return None

    def with_context_input(self, args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
        """A denoiser call's ``(args, kwargs)`` with ``new`` in place of the text tokens `context_input` found."""
        if isinstance(kwargs.get(self.context_kwarg), torch.Tensor):
            return args, {**kwargs, self.context_kwarg: new}
        position = self.context_position
        return (*args[:position], new, *args[position + 1:]), kwargs

    def _register_reader_hooks(self, readers: Sequence[str], fn: Callable[[torch.Tensor], torch.Tensor | None]) -> RemovableHandles:
        """``fn`` on the ``encoder_hidden_states`` each of the ``readers`` modules (cross-attentions) receives.

        Within one denoiser call every cross-attention receives the same text tensor, so ``fn`` runs once per call and
        its answer is reused by the other readers (the memo is per thread and is cleared at the call's start and end:
        a new call is a new step or CFG branch, where ``fn`` may answer differently)."""
        memo = threading.local()

        def forget(*_: Any, **__: Any) -> None:
            memo.pair = None

        def steered(h: torch.Tensor) -> torch.Tensor | None:
            pair = getattr(memo, "pair", None)
            if pair is not None and pair[0] is h:
                return pair[1]
            new = fn(h)
            memo.pair = (h, new)
            return new

        handles = [self.model.register_forward_pre_hook(forget), self.model.register_forward_hook(forget, always_call=True)]
        return RemovableHandles(handles + [self.register_reader_hook(n, steered) for n in readers])

    def register_reader_hook(self, reader: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
        """``fn(h) -> new h | None`` on the text tokens one cross-attention module (a `text_readers` name) receives,
        every time it runs; returns the removable handle. With an IP-Adapter loaded the module receives
        ``(text tokens, image tokens)``: ``fn`` gets the text tokens and the pair is rebuilt around its answer."""

        def pre(_module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if "encoder_hidden_states" in kwargs:
                found = _text_part(kwargs["encoder_hidden_states"])
                if found is None:
                    return None
                new = fn(found[0])
                return None if new is None else (args, {**kwargs, "encoder_hidden_states": found[1](new)})
            found = _text_part(args[1]) if len(args) > 1 else None  # Attention.forward(hidden_states, encoder_hidden_states)
            if found is None:
                return None
            new = fn(found[0])
            return None if new is None else ((args[0], found[1](new), *args[2:]), kwargs)

        return self.model.get_submodule(reader).register_forward_pre_hook(pre, with_kwargs=True)

    def check_hookable(self, names: Sequence[str], site: str | None = None) -> None:
        """Raise `LayerError` (one line) when a hook on module ``names`` (paths; `CONTEXT_SITE` is the denoiser's
        input) would never run: a module above it is compiled in place (``module.compile()``, diffusers'
        ``compile_repeated_blocks()``), and a compiled graph ignores hooks added inside it. A hook on a compiled
        module itself still runs. ``site``: the steering site named in the message (default: the module)."""
        for name in names:
            if name == CONTEXT_SITE:
                continue
            parts = name.split(".")
            for depth in range(len(parts)):  # the denoiser itself, then each module strictly above ``name``
                above = ".".join(parts[:depth])
                try:
                    module = self.model.get_submodule(above)
                except AttributeError:  # not a module path: the caller's own lookup names it
                    break
                if getattr(module, "_compiled_call_impl", None) is None:
                    continue
                what = "the denoiser is" if not above else f"its module {above!r} is"
                where = repr(site or name) + (f" (read at {name!r})" if site else "")
                raise LayerError(
                    f"steering site {where} cannot be steered or recorded: {what} compiled in place (.compile() or "
                    "compile_repeated_blocks()), and a compiled graph ignores hooks inside it; load the pipeline "
                    "uncompiled and use pipe.compile_unet(layers=...) instead"
                )

    def layer_channels(self, names: Sequence[str]) -> dict[str, int]:
        """Output channel count of each named site (cached on the model)."""
        cache: dict[str, int] = self.model.__dict__.setdefault("_steer_channels", {})
        modules = dict(self.model.named_modules())
        self.resolve_layers([n for n in names if n not in modules])  # raises a helpful error for unknown names
        todo = []
        for name in names:
            if name in cache:
                continue
            if name == CONTEXT_SITE:
                cache[name] = self.context_dim()
                continue
            out_ch = getattr(modules[name], "out_channels", None)
            if isinstance(out_ch, int):
                cache[name] = out_ch
            else:
                todo.append(name)
        if todo:
            cache.update(self._probe_channels(todo))
        return {n: cache[n] for n in names}

    def _probe_channels(self, names: Sequence[str]) -> dict[str, int]:
        self.check_hookable(names)
        modules = dict(self.model.named_modules())
        seen: dict[str, int] = {}
        handles = []
        for name in names:
            def hook(_m, _a, out, name=name):
                h = main_tensor(out, self.output_index(name))
                seen[name] = int(h.shape[channel_dim(h)])
            handles.append(modules[name].register_forward_hook(hook))
        args, kwargs = self.probe_inputs()
        try:
            with torch.no_grad():
                self.model(*args, **kwargs)
        except Exception as err:
            raise LayerError(
                f"cannot read the channel count of {list(names)}: a trial forward of this {self.family} failed "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from None
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in names if n not in seen]
        if missing:
            raise LayerError(
                f"cannot read the channel count of {missing}: the module never ran in a trial forward of this "
                f"{self.family} (a hook there would never fire either)"
            )
        return seen


def _text_part(h: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]] | None:
    """The text tokens in what a cross-attention receives as ``encoder_hidden_states`` and how to put new ones
    back: a tensor, or with an IP-Adapter loaded ``(text tokens, image tokens...)``; None for anything else."""
    if isinstance(h, torch.Tensor):
        return h, lambda new: new
    if isinstance(h, tuple | list) and h and isinstance(h[0], torch.Tensor):
        return h[0], lambda new: type(h)([new, *h[1:]])
    return None
