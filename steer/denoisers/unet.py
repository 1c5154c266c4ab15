"""`UNet2DConditionModel` (SD 1.x / 2.x, SDXL): sites are the resnets, attention blocks, resamplers and their
cross-attentions of the down, mid and up blocks; the text tokens enter as the third positional argument."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from steer.denoisers.base import CONTEXT_SITE, DenoiserAdapter
from steer.errors import LayerError

BLOCK_KINDS = ("resnets", "attentions", "downsamplers", "upsamplers")


def _block_layers(prefix: str, block: nn.Module) -> list[str]:
    """A block's sites in execution order: resnet, attention, resnet, attention, ..., then resamplers."""
    resnets = list(getattr(block, "resnets", None) or [])
    attentions = list(getattr(block, "attentions", None) or [])
    names: list[str] = []
    is_mid = prefix.startswith("mid_block")
    for i in range(len(resnets)):
        if is_mid:  # mid: resnet0, (attn0, resnet1), ...
            if i > 0 and i - 1 < len(attentions):
                names.append(f"{prefix}.attentions.{i - 1}")
            names.append(f"{prefix}.resnets.{i}")
        else:
            names.append(f"{prefix}.resnets.{i}")
            if i < len(attentions):
                names.append(f"{prefix}.attentions.{i}")
    for sampler in ("downsamplers", "upsamplers"):
        for j, _ in enumerate(getattr(block, sampler, None) or []):
            names.append(f"{prefix}.{sampler}.{j}")
    return names


class UNetAdapter(DenoiserAdapter):
    """Sites of a `UNet2DConditionModel`, ordered from the input side to the output side."""

    family = "unet"
    model_classes = ("UNet2DConditionModel",)
    context_position = 2
    listing_kinds = ("context", "resnets", "attentions", "attn2")
    # `steering_readers` groups: where the layout is decided (the contracting path and the middle) and where the image
    # is drawn back up (docs/steering.md, "Which cross-attentions read the edit")
    reader_groups = {"all": ("*",), "layout": ("down_blocks.*", "mid_block.*"), "detail": ("up_blocks.*",)}

    def list_layers(self, kinds: Iterable[str] | None = None) -> list[str]:
        """Block-level sites; ``kinds`` filters by path component (``"resnets"``, ``"attentions"``,
        ``"downsamplers"``, ``"upsamplers"``), ``"attn2"`` adds the cross-attentions inside each attention block and
        ``"context"`` the text-token site."""
        unet = self.model
        kinds = set(kinds or ("resnets", "attentions"))
        names: list[str] = [CONTEXT_SITE] if "context" in kinds and self.context_dim() else []
        for i, block in enumerate(getattr(unet, "down_blocks", [])):
            names += _block_layers(f"down_blocks.{i}", block)
        if getattr(unet, "mid_block", None) is not None:
            names += _block_layers("mid_block", unet.mid_block)
        for i, block in enumerate(getattr(unet, "up_blocks", [])):
            names += _block_layers(f"up_blocks.{i}", block)
        out = [n for n in names if n == CONTEXT_SITE or n.split(".")[-2] in kinds]
        if "attn2" in kinds:  # the cross-attention outputs inside each attention block, in the same order
            modules = dict(unet.named_modules())
            for block in [n for n in names if n != CONTEXT_SITE and n.split(".")[-2] == "attentions"]:
                inner = [m for m in modules if m.startswith(block + ".") and m.endswith(".attn2")]
                at = out.index(block) + 1 if block in out else len(out)
                out[at:at] = inner
        return out

    def glob_candidates(self) -> list[str]:
        return self.list_layers(BLOCK_KINDS)

    def context_dim(self) -> int | None:
        dim = getattr(getattr(self.model, "config", None), "cross_attention_dim", None)
        if isinstance(dim, list | tuple):  # per-block dims: the context site needs one
            dim = dim[0] if len(set(dim)) == 1 else None
        return int(dim) if isinstance(dim, int) else None

    def default_layers(self) -> list[str]:
        """The paper's steering layers mapped to this UNet's layout.

        SD1.x: ``up_blocks.0.resnets.0-2`` and ``up_blocks.1.resnets.0-1``. In general: every resnet of the
        lowest-resolution up block plus all but the last resnet of the next one.
        """
        ups = list(getattr(self.model, "up_blocks", []))
        if not ups:
            raise LayerError("this UNet has no up_blocks; pass layers explicitly (see steer.denoisers.list_layers)")
        names = [f"up_blocks.0.resnets.{i}" for i in range(len(ups[0].resnets))]
        if len(ups) > 1:
            names += [f"up_blocks.1.resnets.{i}" for i in range(max(len(ups[1].resnets) - 1, 1))]
        return names

    def probe_inputs(self) -> tuple[tuple, dict[str, Any]]:
        cfg = self.model.config
        param = next(self.model.parameters())
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        size = max(8, min(int(size), 2 ** (len(cfg.block_out_channels) - 1) * 4))
        sample = torch.zeros(1, cfg.in_channels, size, size, device=param.device, dtype=param.dtype)
        context = torch.zeros(1, 1, cfg.cross_attention_dim, device=param.device, dtype=param.dtype)
        kwargs: dict[str, Any] = {"encoder_hidden_states": context}
        added = _text_time_inputs(cfg, param) if getattr(cfg, "addition_embed_type", None) == "text_time" else {}  # SDXL
        if getattr(cfg, "encoder_hid_dim_type", None) == "ip_image_proj":  # an IP-Adapter is loaded: it needs its images
            embeds = _image_embeds(self.model, param)
            if embeds is not None:
                added["image_embeds"] = embeds
        if added:
            kwargs["added_cond_kwargs"] = added
        return (sample, torch.tensor([10], device=param.device)), kwargs


def _image_embeds(unet: nn.Module, param: torch.Tensor) -> list[torch.Tensor] | None:
    """Zero ``image_embeds`` for the IP-Adapters loaded on ``unet`` (one (1, 1, [tokens,] width) tensor each, the
    width its projection's first linear layer reads, with tokens where the projection wants them), or None when a
    projection takes neither shape (the trial forward then fails, in one line)."""
    layers = getattr(getattr(unet, "encoder_hid_proj", None), "image_projection_layers", None)
    if layers is None:
        return None
    embeds = []
    for layer in layers:
        width = next((m.in_features for m in layer.modules() if isinstance(m, nn.Linear)), None)
        if width is None:
            return None
        for shape in ((1, 1, width), (1, 1, 1, width)):  # (batch, images, [tokens,] width)
            embed = torch.zeros(shape, device=param.device, dtype=param.dtype)
            try:
                with torch.no_grad():
                    layer(embed.flatten(0, 1))
            except Exception:  # noqa: BLE001  (a shape this projection does not take: try the next)
                continue
            embeds.append(embed)
            break
        else:
            return None
    return embeds


def _text_time_inputs(cfg: Any, param: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero ``text_embeds`` and ``time_ids`` whose embedded concatenation has the width the UNet's ``add_embedding``
    expects: 6 ids (SDXL base; the refiner has 5, any split of the width works) and the rest pooled text."""
    width, per_id = int(cfg.projection_class_embeddings_input_dim), int(cfg.addition_time_embed_dim)
    ids = min(6, width // per_id)
    return {
        "text_embeds": torch.zeros(1, width - ids * per_id, device=param.device, dtype=param.dtype),
        "time_ids": torch.zeros(1, ids, device=param.device, dtype=param.dtype),
    }
