"""Building blocks the tiny random-weight pipelines of every family share: a toy VAE, toy CLIP and T5 text encoders.

Each builder draws its random weights from torch's global generator, so a family's components stay reproducible as
long as they are built in the same order after the same ``torch.manual_seed``.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, T5Config, T5EncoderModel

CLIP_VOCAB = 49408  # the real CLIP BPE vocabulary (assets/clip-tokenizer); bos 49406, eos = pad 49407
# the SD3 / Flux latent space: no quant convs, SD3's shift and scaling factors
FLOW_VAE: dict[str, Any] = {
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": 0.0609,
    "scaling_factor": 1.5035,
}


def tiny_vae(block_out_channels: tuple[int, ...], sample_size: int, latent_channels: int = 4, **extra: Any) -> AutoencoderKL:
    """An `AutoencoderKL` with one encoder / decoder level per entry of ``block_out_channels`` (downsampling by
    ``2 ** (levels - 1)``), one layer per block and 8 norm groups; ``extra`` (e.g. `FLOW_VAE`) goes to the config."""
    levels = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=block_out_channels,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size,
        **extra,
    ).eval()


def tiny_clip_config(width: int, projection: bool = False) -> CLIPTextConfig:
    """A 2-layer, 4-head CLIP text config of hidden size ``width`` (MLP ``2 * width``) on the real CLIP vocabulary and
    77 positions; ``projection`` sets ``projection_dim = width`` (else the config's default)."""
    extra = {"projection_dim": width} if projection else {}
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        **extra,
    )


def tiny_t5_encoder(width: int, **overrides: Any) -> T5EncoderModel:
    """A 2-layer, 4-head T5 encoder of width ``width`` (``d_kv`` 8, MLP ``2 * width``, 8 relative-position buckets,
    no dropout) for the `steer.testing.t5.t5_tokenizer` vocabulary (1,000 pieces, ``<pad>`` 0, ``</s>`` 1);
    ``overrides`` replace or add config values."""
    config: dict[str, Any] = {
        "vocab_size": 1000,
        "d_model": width,
        "d_kv": 8,
        "d_ff": 2 * width,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "dropout_rate": 0.0,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }
    return T5EncoderModel(T5Config(**{**config, **overrides})).eval()
