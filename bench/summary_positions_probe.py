"""Experiment (not adopted): steer only the text positions from the prompt's end token on, leaving its word tokens alone.

    python bench/summary_positions_probe.py --methods ours --out docs/steering/summary_positions   # the matrix, 362 s

In CLIP's causal text encoder the positions from the end token on have read the whole prompt (a summary), while the
word positions carry the words themselves. The idea: adding the direction to the summary positions only would keep
the prompt's own words (the class under a colour edit, the colour under a class edit) and so raise "kept". The
text preset is patched for this run only (`steer.engine.steering.apply_delta` leaves each row's positions before its
end token unchanged; the rows' end positions come from the tokenizer as the pipeline encodes the prompts), then
`bench/steering_matrix.py` runs unchanged with every argument passed on: learning, calibration and generation all
see the variant. SD-family (CLIP) pipelines only. Results: docs/steering.md ("Steering the summary positions only").
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import steering_matrix  # noqa: E402

import steer.engine.steering as S  # noqa: E402
from steer.pipelines.stable_diffusion import SteeringStableDiffusionPipeline as P  # noqa: E402

ROWS: dict[str, torch.Tensor | None] = {"end": None}  # per UNet row: the first position that may be steered
_apply_delta, _encode_prompt = S.apply_delta, P.encode_prompt


def summary_only_delta(h, delta, mode, preserve_norm, fixed_tokens=0):
    new = _apply_delta(h, delta, mode, preserve_norm, fixed_tokens)
    end = ROWS["end"]
    if end is not None and h.ndim == 3 and h.shape[0] == end.numel():
        words = torch.arange(h.shape[1], device=h.device)[None, :] < end.to(h.device)[:, None]
        new = torch.where(words[..., None], h, new)
    return new


def end_positions(pipe, prompts: list[str]) -> torch.Tensor:
    t = pipe.tokenizer
    ids = t(prompts, padding="max_length", max_length=t.model_max_length, truncation=True).input_ids
    return torch.tensor([row.index(t.eos_token_id) if t.eos_token_id in row else len(row) for row in ids])


def encode_prompt_recording_ends(self, *args, **kwargs):
    out = _encode_prompt(self, *args, **kwargs)
    names = ("prompt", "device", "num_images_per_prompt", "do_classifier_free_guidance", "negative_prompt")
    a = {**dict(zip(names, args, strict=False)), **kwargs}
    prompt, n = a.get("prompt"), a.get("num_images_per_prompt", 1)
    if prompt is None:
        ROWS["end"] = None
        return out
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    neg = a.get("negative_prompt")
    negs = [""] * len(prompts) if neg is None else [neg] * len(prompts) if isinstance(neg, str) else list(neg)
    cond, uncond = end_positions(self, prompts).repeat_interleave(n), end_positions(self, negs).repeat_interleave(n)
    ROWS["end"] = torch.cat([uncond, cond]) if a.get("do_classifier_free_guidance", True) else cond  # [uncond, cond]
    return out


if __name__ == "__main__":
    S.apply_delta, P.encode_prompt = summary_only_delta, encode_prompt_recording_ends
    steering_matrix.main()
