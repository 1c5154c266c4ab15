"""PixArt-Sigma / PixArt-Alpha: `PixArtTransformer2DModel`, a stack of `BasicTransformerBlock`s (self-attention
``attn1``, cross-attention ``attn2`` reading the T5 tokens, feed-forward), each returning the image tokens (B, N, C).

Sites: ``transformer_blocks.{i}`` (kind ``"blocks"``, the default: the middle third), ``transformer_blocks.{i}.attn1``
(kind ``"attn"``), ``transformer_blocks.{i}.attn2`` (kind ``"attn2"``, where the text enters) and `CONTEXT_SITE`
(kind ``"context"``): the T5 tokens the transformer receives, *before* its ``caption_projection`` (so
``config.caption_channels`` channels, 4096 for PixArt-Sigma), i.e. exactly what ``encode_prompt`` returns.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from steer.denoisers.transformer import TransformerAdapter


class PixArtAdapter(TransformerAdapter):
    """Sites of a `PixArtTransformer2DModel` (see the module docstring).

    Args:
        model: the PixArt transformer (not a compiled wrapper).
    """

    family: ClassVar[str] = "pixart"
    model_classes: ClassVar[tuple[str, ...]] = ("PixArtTransformer2DModel",)
    block_lists: ClassVar[tuple[str, ...]] = ("transformer_blocks",)
    attention_modules: ClassVar[dict[str, tuple[str, ...]]] = {"attn": ("attn1",), "attn2": ("attn2",)}

    def context_dim(self) -> int | None:
        """Channels of ``encoder_hidden_states``: ``caption_channels`` when the model projects captions (every
        released PixArt), else the blocks' ``cross_attention_dim``."""
        cfg = self.model.config
        if getattr(self.model, "caption_projection", None) is not None and cfg.caption_channels:
            return int(cfg.caption_channels)
        dim = cfg.cross_attention_dim or getattr(self.model, "inner_dim", None)
        return int(dim) if dim else None

    def probe_inputs(self) -> tuple[tuple, dict[str, Any]]:
        """A 2x2-patch latent, 4 text tokens and one timestep (micro-conditions when the model uses them)."""
        cfg = self.model.config
        param = next(self.model.parameters())
        size = 2 * int(cfg.patch_size)
        sample = torch.zeros(1, cfg.in_channels, size, size, device=param.device, dtype=param.dtype)
        context = torch.zeros(1, 4, self.context_dim() or 1, device=param.device, dtype=param.dtype)
        added: dict[str, Any] = {"resolution": None, "aspect_ratio": None}
        if getattr(self.model, "use_additional_conditions", False):
            added = {
                "resolution": torch.tensor([[size * 8.0, size * 8.0]], device=param.device, dtype=param.dtype),
                "aspect_ratio": torch.tensor([[1.0]], device=param.device, dtype=param.dtype),
            }
        kwargs = {
            "encoder_hidden_states": context,
            "timestep": torch.tensor([10], device=param.device),
            "added_cond_kwargs": added,
            "return_dict": False,
        }
        return (sample,), kwargs
