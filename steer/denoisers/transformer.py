"""Shared base of the diffusion-transformer families (SD3, PixArt, Flux): sites are the transformer blocks (and the
cross-attention inside each block where it has one); activations are token sequences (B, N, C).

Which element of a block's tuple output is the image stream comes from diffusers' own record
(`diffusers.hooks._helpers.TransformerBlockRegistry`, ``return_hidden_states_index``): joint blocks return
``(encoder_hidden_states, hidden_states)``; plain blocks return the image tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from torch import nn

from steer.denoisers.base import CONTEXT_SITE, DenoiserAdapter
from steer.errors import LayerError


def hidden_states_index(block: nn.Module) -> int:
    """Index of the image tokens in ``block``'s tuple output, as diffusers records it (0 when unrecorded)."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    try:
        index = TransformerBlockRegistry.get(type(block)).return_hidden_states_index
    except ValueError:
        return 0
    return int(index or 0)


class TransformerAdapter(DenoiserAdapter):
    """Sites of a diffusers transformer denoiser. Subclasses set ``block_lists`` (the ``nn.ModuleList`` attributes
    holding the blocks, input side first) and implement `probe_inputs`, `context_dim` and, when the default (the
    middle third of the blocks) does not suit the family, `default_layers`.

    Kinds for `list_layers`: ``"blocks"`` (every block's output, the default), ``"attn2"`` (cross-attention modules
    inside blocks), ``"attn"`` (self/joint attention modules) and ``"context"`` (the text tokens, `CONTEXT_SITE`).
    """

    block_lists: ClassVar[tuple[str, ...]] = ("transformer_blocks",)
    listing_kinds = ("context", "blocks", "attn", "attn2")
    # Kind -> names of the attention modules of that kind inside a block (PixArt's self-attention is ``attn1``).
    attention_modules: ClassVar[dict[str, tuple[str, ...]]] = {"attn": ("attn",), "attn2": ("attn2",)}

    def blocks(self) -> list[str]:
        names: list[str] = []
        for attr in self.block_lists:
            for i, _ in enumerate(getattr(self.model, attr, None) or []):
                names.append(f"{attr}.{i}")
        return names

    def list_layers(self, kinds: Iterable[str] | None = None) -> list[str]:
        kinds = set(kinds or ("blocks",))
        out: list[str] = [CONTEXT_SITE] if "context" in kinds and self.context_dim() else []
        modules = dict(self.model.named_modules())
        for block in self.blocks():
            if "blocks" in kinds:
                out.append(block)
            for kind, attrs in self.attention_modules.items():
                if kind in kinds:
                    out += [f"{block}.{a}" for a in attrs if f"{block}.{a}" in modules]
        return out

    def glob_candidates(self) -> list[str]:
        return self.list_layers(("blocks", "attn", "attn2"))

    def output_index(self, name: str) -> int:
        if name in self.blocks():
            return hidden_states_index(dict(self.model.named_modules())[name])
        return 0

    def default_layers(self) -> list[str]:
        """The middle third of the blocks (composition and attributes live mid-depth in diffusion transformers)."""
        blocks = self.blocks()
        if not blocks:
            raise LayerError(f"this {self.family} has no transformer blocks; pass layers explicitly")
        n = len(blocks)
        first, stop = n // 3, max(n // 3 + 1, (2 * n) // 3)
        return blocks[first:stop]
