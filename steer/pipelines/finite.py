"""NaN images raise for pipelines without a safety-checker hook (SDXL, and any pipeline that decodes through an
``image_processor``): `FiniteImageMixin`.

Stable Diffusion checks the decoded image in ``run_safety_checker`` (`steer.validation.FiniteOutputMixin`). SDXL has
no such step: its decoded image goes straight to ``self.image_processor.postprocess``, where NaN turns into black
pixels. The mixin gives the pipeline its own copy of the image processor whose ``postprocess`` refuses a non-finite
image first (`steer.validation.refuse_non_finite`), for steered and unsteered calls alike. Nothing shared with other
pipelines (``from_pipe`` siblings, the processor object passed in) is changed.
"""

from __future__ import annotations

import copy
from typing import Any

from steer.validation import refuse_non_finite

_CHECKED: dict[type, type] = {}


def _checked_class(cls: type) -> type:
    """``cls`` with a ``postprocess`` that refuses non-finite images (one subclass per processor class)."""
    sub = _CHECKED.get(cls)
    if sub is None:

        def postprocess(self, image: Any, output_type: str = "pil", *args: Any, **kwargs: Any) -> Any:
            if output_type != "latent":
                refuse_non_finite(image)
            return cls.postprocess(self, image, output_type, *args, **kwargs)

        name = f"Finite{cls.__name__}"
        if name in globals():  # same-named processor classes from different modules
            name = f"{name}_{len(_CHECKED)}"
        sub = type(name, (cls,), {"postprocess": postprocess, "__module__": __name__, "_steer_finite": True})
        _CHECKED[cls] = sub
        globals()[name] = sub  # picklable by reference, like any module-level class
    return sub


def finite_image_processor(processor: Any) -> Any:
    """A copy of ``processor`` whose ``postprocess`` raises `NonFiniteOutputError` on NaN / inf input (``processor``
    itself is left as it is; None and already-checked processors are returned as they are)."""
    if processor is None or getattr(type(processor), "_steer_finite", False) or not hasattr(processor, "postprocess"):
        return processor
    checked = copy.copy(processor)
    checked.__class__ = _checked_class(type(processor))
    return checked


class FiniteImageMixin:
    """Pipeline mixin: whatever is assigned to ``self.image_processor`` (the pipeline's ``__init__`` does) is
    replaced by its `finite_image_processor` copy, so a NaN decode raises instead of becoming a black image."""

    @property
    def image_processor(self) -> Any:
        try:
            return self.__dict__["image_processor"]
        except KeyError:
            raise AttributeError("image_processor") from None

    @image_processor.setter
    def image_processor(self, value: Any) -> None:
        self.__dict__["image_processor"] = finite_image_processor(value)
