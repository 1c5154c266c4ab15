"""What the take-away's word swap (`steering_negative="replace"`, `steer.word_swap`) costs a call: its planning (the
prompts tokenized and the rewritten ones encoded once per call) and the whole call, against the same call under
``"remove"``. No UNet rows are added; the text tokens are blended once per step bucket, as they are steered anyway.

    python bench/word_swap_cost.py                       # the demo model, 8 contradicting prompts, DDIM 20, CFG
    python bench/word_swap_cost.py --sd15-text           # the planning alone with SD1.5's text encoder shape (random weights)

Prints one markdown row per measurement (median of ``--repeats``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.word_swap import plan_word_swap  # noqa: E402

PROMPTS = ["a red t-shirt", "a green sneaker", "a white bag", "a purple coat", "a yellow dress", "a cyan sandal",
           "a orange trouser", "a red pullover"]


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sd15-text", action="store_true", help="swap the demo's text encoder for one of SD1.5's shape (random weights)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    vectors = []
    for colour in ("blue", "red", "green", "white", "purple", "yellow", "cyan", "orange"):
        P = prompts_for("colour", colour)
        vectors.append(pipe.learn_direction(P["positive"], P["negative"], calibrate=False, progress=False))
    # every row adds blue and takes away the colour its prompt states
    scales = torch.zeros(len(PROMPTS), len(vectors))
    scales[:, 0] = 1.0
    for r, p in enumerate(PROMPTS):
        scales[r, [i for i, c in enumerate(("blue", "red", "green", "white", "purple", "yellow", "cyan", "orange")) if c in p.split()][0]] = -1.0
    where = "demo model text encoder"
    if args.sd15_text:
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(0)
        pipe.text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                         num_attention_heads=12, max_position_embeddings=77)).eval()
        pipe.tokenizer.model_max_length = 77
        where = "SD1.5-shaped CLIP text encoder (random weights)"
    plan = median_seconds(lambda: plan_word_swap(pipe, PROMPTS, vectors, scales, "replace"), args.repeats)
    print(f"| planning the swap for {len(PROMPTS)} rows, {where} | {plan * 1000:.1f} ms | x86_64 CPU, 1 thread |")
    if args.sd15_text:
        return
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]  # noqa: E731
    for negative in ("remove", "replace"):
        call = median_seconds(lambda negative=negative: pipe(PROMPTS, generator=gens(), steering=vectors, steering_scale=scales,
                                                             steering_negative=negative, steering_window=(0.25, 1.0),
                                                             num_inference_steps=args.steps, guidance_scale=5.0, output_type="latent"),
                              args.repeats)
        print(f"| a take-away call, {len(PROMPTS)} images, DDIM {args.steps} + CFG, steering_negative={negative!r} | {call:.3f} s | x86_64 CPU, 1 thread |")


if __name__ == "__main__":
    main()
