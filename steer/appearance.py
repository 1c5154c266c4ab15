"""What decoded samples look like, read without a classifier: where light and dark lie (their layout) and their mean
colour. The calibration (`steer.calibrate`) reads a prompt edit's kind and an appearance edit's window from them."""

from __future__ import annotations

import warnings

import torch

from steer.vae_codec import codec_vae, decode_latents

LAYOUT_GRID = 8  # the layout is the decoded grayscale averaged over this many cells a side: where light and dark lie


def _signatures(pipe, latents: torch.Tensor, grid: int | None, batch_size: int | None,
                vae: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """`layout_signatures`, and which images decoded to finite values."""
    size = max(1, int(batch_size)) if batch_size else max(1, len(latents))
    units, finite = [], []
    with torch.no_grad():
        for i in range(0, len(latents), size):
            decoded = decode_latents(pipe, latents[i : i + size], vae)
            gray = decoded.clamp(-1, 1).mean(1, keepdim=True)  # (n, 1, H, W)
            gray = (gray if grid is None else torch.nn.functional.adaptive_avg_pool2d(gray, grid)).flatten(1)
            gray = gray - gray.mean(1, keepdim=True)
            norms = gray.norm(dim=1, keepdim=True)
            unit = gray / norms.clamp_min(1e-12)
            ok = torch.isfinite(decoded).flatten(1).all(1)
            unit[~(ok & (norms[:, 0] > 0))] = float("nan")
            units.append(unit.cpu())
            finite.append(ok.cpu())
    if not units:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.bool)
    return torch.cat(units), torch.cat(finite)


def layout_signatures(pipe, latents: torch.Tensor, grid: int | None = LAYOUT_GRID, batch_size: int | None = 8,
                      vae: torch.nn.Module | None = None) -> torch.Tensor:
    """Each image's layout as one unit vector ([n, grid * grid]): the decoded grayscale averaged over a ``grid`` x
    ``grid`` grid of the frame (None: every pixel), centred. A row of NaN for an image that decodes to a non-finite
    value (an fp16 VAE overflowing: the clamp would read inf as white) or a flat one (no layout to compare).
    ``latents``: unflattened final latents of SD-family UNet pipelines; at most ``batch_size`` decodes at once (None:
    all); ``vae``: `steer.vae_codec.codec_vae`, made once for many calls."""
    return _signatures(pipe, latents, grid, batch_size, codec_vae(pipe) if vae is None else vae)[0]


def layout_agreement(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """The mean over pairs of the correlation of two `layout_signatures` (``a[i]`` with ``b[i]``), over the pairs both
    read; None where no pair does."""
    if len(a) != len(b):
        raise ValueError(f"layout_agreement: {len(a)} and {len(b)} samples do not pair up")
    both = torch.isfinite(a).all(1) & torch.isfinite(b).all(1) if len(a) else torch.zeros(0, dtype=torch.bool)
    if not bool(both.any()):
        return None
    return float((a[both] * b[both]).sum(1).mean())


def structure_kept(pipe, latents_a: torch.Tensor, latents_b: torch.Tensor, grid: int | None = LAYOUT_GRID,
                   vae: torch.nn.Module | None = None) -> float:
    """How much of its layout an image keeps across a prompt edit: the mean over pairs of the Pearson correlation of
    the decoded images' grayscale, averaged over a ``grid`` x ``grid`` grid of the frame (where light and dark lie,
    not the detail; None: every pixel; ``latents_a[i]`` and ``latents_b[i]``: unflattened final latents of SD-family
    UNet pipelines, same seed; ``vae``: `steer.vae_codec.codec_vae`, made once for many calls). 1: the same layout,
    only the appearance changed; near 0: a new layout. Pairs with a flat or non-finite decode are left out; with none
    left, 1.0."""
    if len(latents_a) != len(latents_b):
        raise ValueError(f"structure_kept: {len(latents_a)} and {len(latents_b)} samples do not pair up")
    vae = codec_vae(pipe) if vae is None else vae
    (a, finite_a), (b, finite_b) = (_signatures(pipe, z, grid, 2, vae) for z in (latents_a, latents_b))
    if len(latents_a) and not bool((finite_a & finite_b).any()):
        warnings.warn(f"every decode of the {len(latents_a)} sample pairs overflowed (an fp16 VAE the pipeline does not "
                      "run in float32 gives NaN or inf images; load it in float32): their layout reads as kept", stacklevel=2)
    agreement = layout_agreement(a, b)
    return 1.0 if agreement is None else agreement


@torch.no_grad()
def mean_colours(pipe, latents: torch.Tensor, batch_size: int | None = 8, vae: torch.nn.Module | None = None) -> torch.Tensor:
    """The mean RGB ([n, 3], in [0, 1]) of the images decoded from unflattened final latents of SD-family UNet
    pipelines: the hue and brightness an appearance edit sets, without where things lie. A non-finite decode (an fp16
    VAE overflowing) gives a NaN row. At most ``batch_size`` images per decode (None: all at once); ``vae``: as in
    `structure_kept`."""
    vae = codec_vae(pipe) if vae is None else vae
    size = max(1, int(batch_size)) if batch_size else max(1, len(latents))
    out = [torch.empty(0, 3)]
    for i in range(0, len(latents), size):
        decoded = decode_latents(pipe, latents[i : i + size], vae)
        colours = ((decoded.clamp(-1, 1) + 1) / 2).mean((2, 3))
        # an overflowing decode (inf as well as NaN) reads as no colour, not as the clamp's white or black
        colours[~torch.isfinite(decoded).flatten(1).all(1)] = float("nan")
        out.append(colours.cpu())
    return torch.cat(out)


def relative_colour_distances(pipe, steered: torch.Tensor, reference: torch.Tensor, start: torch.Tensor,
                              batch_size: int | None = 8, vae: torch.nn.Module | None = None) -> list[float]:
    """How close in colour each set of steered samples comes to the samples it should look like: for ``steered``
    (sets, images, *latent shape: unflattened final latents, image ``i`` of each set from the seed of ``reference[i]``),
    the mean over images of the distance of each image's `mean_colours` to ``reference`` ([images, 3], the target
    samples' own), relative to the unsteered images' (``start`` [images, 3]: 1 = no closer than not steering). A
    non-finite decode gives a NaN entry: the caller then has no verdict."""
    unsteered = float((start - reference).norm(dim=1).mean().clamp_min(1e-6))
    colours = mean_colours(pipe, steered.flatten(0, 1), batch_size, vae).reshape(len(steered), -1, 3)
    return [float((c - reference).norm(dim=1).mean()) / unsteered for c in colours]
