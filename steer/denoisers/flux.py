"""Flux.1: `FluxTransformer2DModel`, double-stream blocks (``transformer_blocks``: text and image tokens in separate
streams, one joint attention) followed by single-stream blocks (``single_transformer_blocks``: one attention over
the concatenated [text, image] sequence).

Sites:

- ``transformer_blocks.{i}`` and ``single_transformer_blocks.{i}`` (kind ``"blocks"``; the default is the middle
  third of all blocks): both kinds of block return ``(encoder_hidden_states, hidden_states)`` in diffusers 0.42
  (diffusers' `TransformerBlockRegistry` records the image stream at index 1), so only the image tokens are steered.
- ``transformer_blocks.{i}.attn`` (kinds ``"attn"`` and ``"attn2"``): the joint attention, returning
  ``(image, text)``; it is where the text enters the image stream, so it also stands for the cross-attention sites
  (`cross_attention_sites`, the ``"casteer"`` preset).
- ``single_transformer_blocks.{i}.attn`` (kind ``"attn"``): returns one tensor over the concatenated [text, image]
  sequence; its hook sees and changes only the image tokens (the text length is read from the block's input).
- `CONTEXT_SITE` (kind ``"context"``): the T5 tokens the transformer receives as ``encoder_hidden_states``, before its
  ``context_embedder`` (``config.joint_attention_dim`` channels, 4096 for Flux.1), i.e. what ``encode_prompt`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from steer.denoisers.base import RemovableHandles
from steer.denoisers.transformer import TransformerAdapter

SINGLE_BLOCKS = "single_transformer_blocks"


class FluxAdapter(TransformerAdapter):
    """Sites of a `FluxTransformer2DModel` (see the module docstring).

    Args:
        model: the Flux transformer (not a compiled wrapper).
    """

    family: ClassVar[str] = "flux"
    model_classes: ClassVar[tuple[str, ...]] = ("FluxTransformer2DModel",)
    block_lists: ClassVar[tuple[str, ...]] = ("transformer_blocks", SINGLE_BLOCKS)

    def context_dim(self) -> int | None:
        """Channels of ``encoder_hidden_states`` (the T5 width, ``config.joint_attention_dim``)."""
        return int(self.model.config.joint_attention_dim)

    def list_layers(self, kinds: Iterable[str] | None = None) -> list[str]:
        """As `TransformerAdapter.list_layers`; ``"attn2"`` lists the double-stream joint attentions."""
        kinds = set(kinds or ("blocks",))
        rest = kinds - {"attn2"}
        out = super().list_layers(rest) if rest else []
        if "attn2" in kinds:
            out += [n for n in self.cross_attention_sites() if n not in out]
        return out

    def cross_attention_sites(self) -> list[str]:
        """The double-stream blocks' joint attentions (where the text tokens are read into the image stream)."""
        modules = dict(self.model.named_modules())
        return [f"{b}.attn" for b in self.blocks() if not b.startswith(SINGLE_BLOCKS) and f"{b}.attn" in modules]

    def probe_inputs(self) -> tuple[tuple, dict[str, Any]]:
        """Four packed latent tokens, two text tokens, a pooled text vector, one timestep (and guidance)."""
        cfg = self.model.config
        param = next(self.model.parameters())
        like = {"device": param.device, "dtype": param.dtype}
        kwargs: dict[str, Any] = {
            "hidden_states": torch.zeros(1, 4, cfg.in_channels, **like),
            "encoder_hidden_states": torch.zeros(1, 2, cfg.joint_attention_dim, **like),
            "pooled_projections": torch.zeros(1, cfg.pooled_projection_dim, **like),
            "timestep": torch.full((1,), 0.5, **like),
            "img_ids": torch.zeros(4, 3, **like),
            "txt_ids": torch.zeros(2, 3, **like),
            "return_dict": False,
        }
        if cfg.guidance_embeds:
            kwargs["guidance"] = torch.full((1,), 3.5, **like)
        return (), kwargs

    def _is_single_attention(self, name: str) -> bool:
        parts = name.split(".")
        return len(parts) == 3 and parts[0] == SINGLE_BLOCKS and parts[2] == "attn"

    def _hook_site(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
        """As `DenoiserAdapter._hook_site`; a single-stream attention's hook gets its image tokens only."""
        if not self._is_single_attention(name):
            return super()._hook_site(name, fn)
        modules = dict(self.model.named_modules())
        block, attn = modules[name.rsplit(".", 1)[0]], modules[name]
        text_len: list[int] = []

        def pre(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            text_len[:] = [int(context.shape[1])] if isinstance(context, torch.Tensor) else []

        def post(_module: nn.Module, _args: Any, output: Any) -> Any:
            if not isinstance(output, torch.Tensor) or not text_len:
                return None
            n = text_len[0]
            new = fn(output[:, n:])
            return None if new is None else torch.cat([output[:, :n], new], dim=1)

        first = block.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            second = attn.register_forward_hook(post)
        except BaseException:
            first.remove()
            raise
        return RemovableHandles([first, second])
