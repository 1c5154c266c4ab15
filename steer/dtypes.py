"""Dtype handling of pipelines loaded without a dtype (see `AutoDtypeMixin`)."""

from __future__ import annotations

import contextvars
from typing import Any

import torch

# Set while `AutoDtypeMixin.from_pipe` builds a pipeline without a dtype: its closing ``to(dtype=float32)`` is skipped.
_KEEP_DTYPES: contextvars.ContextVar[bool] = contextvars.ContextVar("steer_keep_dtypes", default=False)


class AutoDtypeMixin:
    """Pipeline mixin: ``from_pretrained(path)`` with no dtype works on every device.

    With no ``torch_dtype`` / ``dtype``, diffusers loads the UNet and VAE in float32 and transformers the text encoder
    in its stored dtype: a float16 checkpoint (like the embedded demo model) then fails at the first call. Here, with no dtype given, float16 /
    bfloat16 weights are upcast to float32 on load (the pipeline starts on the CPU), and a later ``.to(device)``
    without a dtype puts them back in the stored half precision on an accelerator (``cuda``, ``mps``, ...) and in
    float32 on the CPU. An explicit ``torch_dtype=`` / ``dtype=`` (to either call) is always obeyed as is.
    """

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        auto = all(kwargs.get(k) is None for k in ("torch_dtype", "dtype", "device_map", "quantization_config"))
        pipe = super().from_pretrained(*args, **kwargs)  # type: ignore[misc]
        if auto and not any(getattr(m, "is_quantized", False) for m in _modules(pipe)):
            # diffusers loads the UNet / VAE in float32 but transformers keeps the text encoder's stored float16
            dtypes = [m.dtype for m in _modules(pipe)]
            stored = next((d for d in dtypes if d in (torch.float16, torch.bfloat16)), None)
            if stored is not None:
                pipe.__dict__["_steer_stored_dtype"] = stored
                _cast(pipe, torch.float32)
        return pipe

    @classmethod
    def from_pipe(cls, pipeline: Any, **kwargs: Any):
        """diffusers' ``from_pipe``, except that with no ``dtype`` / ``torch_dtype`` every shared component keeps its
        dtype: diffusers casts them all to float32 in place, which also changes the source pipeline (a float16 UNet
        doubles in size; a float32 VAE under a float16 UNet is kept either way). The source's automatic dtype choice
        carries over. A source whose modules mix half precision and float32 (a plain pipeline loaded without a dtype
        from half weights: it cannot run) gets `from_pretrained`'s choice: float32 on the CPU, the half precision on an
        accelerator, cast in place as diffusers' ``from_pipe`` would."""
        if any(kwargs.get(k) is not None for k in ("torch_dtype", "dtype")):
            return super().from_pipe(pipeline, **kwargs)  # type: ignore[misc]
        token = _KEEP_DTYPES.set(True)
        try:
            pipe = super().from_pipe(pipeline, **kwargs)  # type: ignore[misc]
        finally:
            _KEEP_DTYPES.reset(token)
        stored = getattr(pipeline, "__dict__", {}).get("_steer_stored_dtype")
        if stored is None and not any(getattr(m, "is_quantized", False) for m in _modules(pipe)):
            # a plain diffusers pipeline loaded without a dtype from half weights: half text encoder, float32 UNet,
            # which cannot run (diffusers' own from_pipe casts everything to float32): the same choice as from_pretrained
            parts = {k: m for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
            encoders = {m.dtype for k, m in parts.items() if k.startswith("text_encoder")}
            denoisers = {m.dtype for k, m in parts.items() if k in ("unet", "transformer")}
            half = next((d for d in encoders if d in (torch.float16, torch.bfloat16)), None)
            if half is not None and denoisers == {torch.float32}:  # (a half UNet over a float32 VAE runs: kept)
                stored = half
                device = next((m.device for m in _modules(pipe)), torch.device("cpu"))
                _cast(pipe, torch.float32 if device.type == "cpu" else half)
        if stored is not None:
            pipe.__dict__["_steer_stored_dtype"] = stored
        return pipe

    def to(self, *args: Any, **kwargs: Any):
        if _KEEP_DTYPES.get() and not args and set(kwargs) == {"dtype"}:
            return self  # the dtype cast closing `from_pipe` without a dtype
        if kwargs.get("dtype") is not None or any(isinstance(a, torch.dtype) for a in args):
            self.__dict__.pop("_steer_stored_dtype", None)  # an explicit dtype ends the automatic choice
        pipe = super().to(*args, **kwargs)  # type: ignore[misc]
        stored = self.__dict__.get("_steer_stored_dtype")
        device = kwargs.get("device", args[0] if args else None)
        if stored is not None and device is not None:
            try:
                kind = torch.device(device).type
            except (TypeError, RuntimeError):
                return pipe
            _cast(pipe, torch.float32 if kind == "cpu" else stored)
        return pipe


def _modules(pipe: Any) -> list[torch.nn.Module]:
    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


def _cast(pipe: Any, dtype: torch.dtype) -> None:
    """Every module of ``pipe`` to ``dtype`` in place, keeping a model's ``_keep_in_fp32_modules`` in float32.

    Uses `torch.nn.Module.to` directly: diffusers' own ``to(dtype)`` warns on every call, even with nothing to keep.
    """
    for module in _modules(pipe):
        torch.nn.Module.to(module, dtype=dtype)
        keep = getattr(module, "_keep_in_fp32_modules", None) or []
        if dtype != torch.float32 and keep:
            for name, sub in module.named_modules():
                if any(k in name.split(".") for k in keep):
                    torch.nn.Module.to(sub, dtype=torch.float32)
