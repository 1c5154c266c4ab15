"""Tiny random-weight pipelines built from configs (no downloads), for tests, benchmarks and demos; helpers the
families' tests share (random directions, hook checks, capturing a site, concurrent calls)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from steer.assets import ASSETS  # noqa: E402
from steer.denoisers import CONTEXT_SITE, adapter_for, layer_channels
from steer.testing.parts import tiny_clip_config, tiny_vae
from steer.vectors import SteeringVector, unet_fingerprint

TOKENIZER_DIR = ASSETS / "clip-tokenizer"

K = TypeVar("K")
T = TypeVar("T")


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """The real CLIP BPE tokenizer committed under ``assets/clip-tokenizer``."""
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), model_max_length=model_max_length)


def tiny_components(seed: int = 0, sample_size: int = 8, text_width: int = 32) -> dict:
    """UNet (32->64 channels, SD-style block layout), VAE (x4), CLIP text encoder and DDIM, randomly initialised."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = tiny_vae((16, 32, 32), sample_size * 4)
    text_encoder = CLIPTextModel(tiny_clip_config(text_width))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {
        "unet": unet.eval(),
        "vae": vae,
        "text_encoder": text_encoder.eval(),
        "tokenizer": clip_tokenizer(),
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def tiny_pipeline(seed: int = 0, cls=None, **kwargs):
    """A `SteeringStableDiffusionPipeline` (or ``cls``) on `tiny_components`; fp32 on the CPU."""
    if cls is None:
        from steer.pipelines.stable_diffusion import SteeringStableDiffusionPipeline as cls
    pipe = cls(**tiny_components(seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_one_line_error(rc: object, err: str, *needles: str, prefix: str = "") -> str:
    """A command line's refusal as the project promises it: exit status 2, exactly one stderr line (starting with
    ``prefix`` and containing every needle), no traceback. Returns the line."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), f"expected one '{prefix}...' line on stderr, got:\n{err}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _denoiser(pipe: Any) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def random_vector(
    pipe: Any, layers: Iterable[str], seed: int = 0, scale: float = 1.0, fingerprint: bool = False, **meta: Any
) -> SteeringVector:
    """A `SteeringVector` of ``scale`` x standard-normal directions (drawn from ``seed``, layer by layer) on the sites
    ``layers`` of ``pipe``'s denoiser (``pipe.unet``, else ``pipe.transformer``), named ``rand<seed>``;
    ``fingerprint`` records the denoiser's fingerprint as its ``model``; ``meta`` adds metadata."""
    denoiser = _denoiser(pipe)
    layers = list(layers)
    g = torch.Generator().manual_seed(seed)
    metadata: dict[str, Any] = {"name": f"rand{seed}"}
    if fingerprint:
        metadata["model"] = unet_fingerprint(denoiser, layers)
    directions = {n: scale * torch.randn(c, generator=g) for n, c in layer_channels(denoiser, layers).items()}
    return SteeringVector(directions, {**metadata, **meta})


def no_hooks_left(module: torch.nn.Module) -> bool:
    """No forward hook or forward pre-hook on ``module`` or any of its submodules."""
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def capture_site(
    pipe: Any, layer: str, run: Callable[[Callable[..., dict]], object]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(raw, steered)`` at site ``layer`` of ``pipe``'s denoiser for each denoiser call from the second step on: what
    the site produced (the text site: what the denoiser received) before the steering hooks, and what the denoiser then
    used. ``run(callback)`` makes the steered call with ``callback_on_step_end=callback``; the callback registers the
    second hook at the end of the first step, after the call's steering hooks. A tuple output gives its hidden states
    (the adapter's `output_index`). Both hooks are removed however the call ends."""
    denoiser = _denoiser(pipe)
    raw: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    late: list[Any] = []
    if layer == CONTEXT_SITE:

        def register(store: list[torch.Tensor], prepend: bool = False) -> Any:
            def grab(_m: Any, _args: Any, kwargs: dict) -> None:
                store.append(kwargs["encoder_hidden_states"].detach().clone())

            return denoiser.register_forward_pre_hook(grab, with_kwargs=True, prepend=prepend)
    else:
        module = dict(denoiser.named_modules())[layer]
        index = adapter_for(denoiser).output_index(layer)

        def register(store: list[torch.Tensor], prepend: bool = False) -> Any:
            def grab(_m: Any, _args: Any, out: Any) -> None:
                store.append((out[index] if isinstance(out, tuple) else out).detach().clone())

            return module.register_forward_hook(grab, prepend=prepend)

    def arm(*_args: Any) -> dict:
        if not late:
            late.append(register(steered))
        return {}

    early = register(raw, prepend=True)
    try:
        run(arm)
    finally:
        early.remove()
        for h in late:
            h.remove()
    return raw[1:], steered


def step_barrier(parties: int, timeout: float = 20.0) -> Callable[..., dict]:
    """A step callback (``callback_on_step_end`` or the legacy ``callback``) that makes ``parties`` concurrent denoising
    loops wait for each other at every step, so that they interleave step by step. A wait that lasts ``timeout`` seconds
    (a loop has finished, or failed) breaks the barrier: from then on the others go on alone."""
    barrier = threading.Barrier(parties)

    def sync(*_args: Any) -> dict:
        try:
            barrier.wait(timeout=timeout)
        except threading.BrokenBarrierError:
            pass
        return {}

    return sync


def run_in_threads(work: Callable[[K], T], keys: Iterable[K]) -> dict[K, T]:
    """``{key: work(key)}`` with every call in a thread of its own, all started before any is joined; re-raises the
    first error a call raised (after all have ended)."""
    results: dict[K, T] = {}
    errors: list[BaseException] = []

    def worker(key: K) -> None:
        try:
            results[key] = work(key)
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
