"""Stable Diffusion 3 / 3.5: `SD3Transformer2DModel`, a stack of `JointTransformerBlock`s (MMDiT). Each block runs one
joint attention (``attn``) over the image and text tokens together and returns ``(encoder_hidden_states,
hidden_states)``; the last block (``context_pre_only``) returns ``None`` for the text stream.

Sites: ``transformer_blocks.{i}`` (kind ``"blocks"``, the default: the middle third; the image stream, element 1 of the
block's output as diffusers' `TransformerBlockRegistry` records), ``transformer_blocks.{i}.attn`` (kind ``"attn"``:
the joint attention, whose output is ``(image, text)`` -> element 0; this is where the text enters, so it is also the
family's cross-attention site), ``transformer_blocks.{i}.attn2`` (kind ``"attn2"``, SD3.5's extra image-only
self-attention in its ``dual_attention_layers``; absent in SD3.0) and `CONTEXT_SITE` (kind ``"context"``): the
transformer's ``encoder_hidden_states`` input, the CLIP-L/G (zero-padded) and T5 tokens concatenated, *before*
``context_embedder`` (``config.joint_attention_dim`` channels, 4096), i.e. what ``encode_prompt`` returns.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from steer.denoisers.transformer import TransformerAdapter


class SD3Adapter(TransformerAdapter):
    """Sites of an `SD3Transformer2DModel` (see the module docstring).

    Args:
        model: the SD3 transformer (not a compiled wrapper).
    """

    family: ClassVar[str] = "sd3"
    model_classes: ClassVar[tuple[str, ...]] = ("SD3Transformer2DModel",)
    block_lists: ClassVar[tuple[str, ...]] = ("transformer_blocks",)
    # forward(hidden_states, encoder_hidden_states, pooled_projections, timestep, ...)
    context_position: ClassVar[int | None] = 1

    def context_dim(self) -> int | None:
        """Channels of ``encoder_hidden_states`` as the transformer receives it: ``joint_attention_dim``."""
        dim = getattr(self.model.config, "joint_attention_dim", None)
        return int(dim) if dim else None

    def cross_attention_sites(self) -> list[str]:
        """The joint attentions (``transformer_blocks.{i}.attn``): where image tokens read the text tokens (SD3 has no
        separate cross-attention; SD3.5's ``attn2`` is image-only)."""
        return self.list_layers(("attn",))

    def probe_inputs(self) -> tuple[tuple, dict[str, Any]]:
        """A 2x2-patch latent, 4 text tokens, the pooled text projection and one timestep."""
        cfg = self.model.config
        param = next(self.model.parameters())
        size = 2 * int(cfg.patch_size)
        kwargs = {
            "encoder_hidden_states": torch.zeros(1, 4, int(cfg.joint_attention_dim), device=param.device, dtype=param.dtype),
            "pooled_projections": torch.zeros(1, int(cfg.pooled_projection_dim), device=param.device, dtype=param.dtype),
            "timestep": torch.tensor([10], device=param.device),
            "return_dict": False,
        }
        return (torch.zeros(1, cfg.in_channels, size, size, device=param.device, dtype=param.dtype),), kwargs
