"""`SteeringFluxPipeline`: `FluxPipeline` plus steering vectors applied by forward hooks.

Flux.1 is guidance-distilled: the guidance scale is an input of the transformer and each step makes one transformer
call whose rows are all conditional, so by default every row is steered whatever ``steering_branch`` says. With
``true_cfg_scale > 1`` and a negative prompt, diffusers' `FluxPipeline` makes two *separate* transformer calls per
step (``cache_context("cond")`` then ``cache_context("uncond")``); the pipeline then tells the engine so
(`steer.engine.SequentialCFG`): steps are counted per denoising step, not per call, and ``steering_branch`` picks
calls (``"split"``: + on the conditional call, - on the unconditional one).
"""

from __future__ import annotations

import contextvars
import inspect
from typing import Any

import torch
from diffusers import FluxPipeline

from steer.dtypes import AutoDtypeMixin
from steer.engine import SequentialCFG
from steer.pipelines.finite import FiniteImageMixin
from steer.pipelines.mixin import SteeringMixin
from steer.pipelines.text import SerializedPromptMixin

# Whether the steered call in progress (this thread / task) runs true CFG; None outside a steered call.
_TRUE_CFG: contextvars.ContextVar[bool | None] = contextvars.ContextVar("steer_flux_true_cfg", default=None)
# Flux's branch order within a step under true CFG.
FLUX_BRANCHES = ("cond", "uncond")
_CALL_PARAMS = inspect.signature(FluxPipeline.__call__).parameters


def runs_true_cfg(arguments: dict[str, Any]) -> bool:
    """Whether `FluxPipeline.__call__` with these (bound) arguments makes an unconditional call per step: as diffusers
    decides it, ``true_cfg_scale > 1`` and a negative prompt (text, or both negative embeddings)."""
    def get(name: str) -> Any:
        return arguments.get(name, _CALL_PARAMS[name].default)

    try:
        scale = float(get("true_cfg_scale"))
    except (TypeError, ValueError):
        return False
    negative = get("negative_prompt") is not None or (
        get("negative_prompt_embeds") is not None and get("negative_pooled_prompt_embeds") is not None
    )
    return scale > 1 and negative


class SteeringFluxPipeline(SteeringMixin, AutoDtypeMixin, FiniteImageMixin, SerializedPromptMixin, FluxPipeline):
    """Flux.1 (dev / schnell) with training-free representation steering.

    A drop-in `FluxPipeline`: load it with `from_pretrained` or `from_pipe`; ``__call__`` takes every parent argument
    plus the ``steering_*`` options (see `steer.pipelines.mixin.STEERING_DOC`). The steered denoiser is
    ``transformer`` (sites: `steer.denoisers.flux`). Flux has no safety checker: NaN / infinite decoded images raise
    `NonFiniteOutputError` before ``image_processor.postprocess`` (`steer.pipelines.finite.FiniteImageMixin`), in
    steered and plain calls; ``encode_prompt`` runs one thread at a time (`steer.pipelines.text`); loading without a
    dtype: `steer.dtypes.AutoDtypeMixin`.
    """

    denoiser_name = "transformer"

    def steering_cfg(self) -> bool | SequentialCFG:
        """False for a steered call without true CFG (one branch: every row is steered whatever the branch); else
        Flux's sequential layout: a step per timestep (the pipeline's ``_current_timestep`` object), the conditional
        call first. Outside a steered call (a plain call recorded by `steer.learn`) true CFG is unknown and the
        sequential layout is used: the first call of each step is the conditional one either way."""
        if _TRUE_CFG.get() is False:
            return False
        return SequentialCFG(FLUX_BRANCHES, step_token=self.__dict__.get("_current_timestep"))

    def denoiser_rows_per_sample(self, **call_kwargs: Any) -> int:
        """1 per step (``guidance_scale`` is Flux's distilled guidance, not CFG), 2 with true CFG (``true_cfg_scale > 1``
        and a negative prompt: a second transformer call per step)."""
        return 2 if runs_true_cfg(call_kwargs) else 1

    @torch.no_grad()
    def steering_text_embeddings(self, prompts: list[str], max_sequence_length: int | None = None) -> torch.Tensor:
        """The T5 tokens of ``prompts`` as the transformer reads them (``encoder_hidden_states``, before its
        ``context_embedder``), at ``max_sequence_length`` (None: the call's default, 512)."""
        embeds, _pooled, _ids = self.encode_prompt(
            list(prompts), device=self._execution_device, num_images_per_prompt=1,
            max_sequence_length=max_sequence_length or _CALL_PARAMS["max_sequence_length"].default,
        )
        return embeds

    def steering_word_tokenizers(self) -> list[tuple[Any, int]]:
        """The T5 tokenizer from position 0: its ids line up with the text tokens the transformer reads (the CLIP one
        gives the pooled embedding only)."""
        return [(self.tokenizer_2, 0)] if getattr(self, "tokenizer_2", None) is not None else []

    def _steered_call(self, parent: type, *args: Any, **kwargs: Any):
        plain = {k: v for k, v in kwargs.items() if k in _CALL_PARAMS}
        try:
            arguments = inspect.signature(parent.__call__).bind_partial(self, *args, **plain).arguments
        except TypeError:
            arguments = plain  # the mixin's own binding reports the bad call
        token = _TRUE_CFG.set(runs_true_cfg(arguments))
        try:
            return super()._steered_call(parent, *args, **kwargs)
        finally:
            _TRUE_CFG.reset(token)
