"""Hash what the CLI, the batch runner and the app produce on fixed seeds, so two versions of the package can be
compared bit for bit (the layout issue's "no behaviour change" check).

    PYTHONPATH=<tree> python scripts/output_identity.py OUT.json

runs with the ``steer`` package found first on ``PYTHONPATH`` (a checkout of another commit works), on the embedded demo
model, CPU, 1 thread. Each entry is the SHA-256 of an image's RGB pixels (and, for PNGs, of the recipe it carries).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)


def pixels(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def png_entry(path: Path, *places: Path) -> dict[str, str]:
    """Pixel hash and recipe hash of a PNG; the recipe with the package root and the temporary folder written as
    placeholders (they differ between the two checkouts, not between versions)."""
    with Image.open(path) as im:
        recipe, digest = str(im.info.get("steer:recipe", "")), pixels(im)
    for i, place in enumerate(places):
        recipe = recipe.replace(str(place), f"<place{i}>")
    return {"pixels": digest, "recipe": hashlib.sha256(recipe.encode()).hexdigest()}


def cli_main():
    try:
        from steer.cli.main import main
    except ImportError:  # the flat layout before the packages
        from steer.cli import main
    return main


def main(out_json: str) -> None:
    import steer

    root = Path(steer.__file__).resolve().parent.parent
    results: dict[str, object] = {"package": str(root)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. steer generate: a sweep toward blue (the calibrated recommended settings), seed 0
        code = cli_main()(["generate", "--prompt", "a sneaker", "--direction", "to_blue", "--sweep=0,1,3", "--seed", "3",
                           "--steps", "12", "--out", str(tmp / "gen")])
        results["cli_exit"] = code
        results["cli"] = {p.name: png_entry(p, root, tmp) for p in sorted((tmp / "gen").glob("*.png"))}
        # 2. steer batch: two jobs, two seeds, a sweep and explicit options
        jobs = tmp / "jobs.jsonl"
        jobs.write_text(
            json.dumps({"prompt": "a bag", "seeds": [0, 1], "num_inference_steps": 10,
                        "directions": [{"path": "to_red", "sweep": [0, 1, 3]}], "name": "bag"}) + "\n"
            + json.dumps({"prompt": "a red dress", "seeds": [2], "num_inference_steps": 10, "guidance_scale": 4.0,
                          "directions": [{"path": "to_green", "scale": 0.8}], "steering_window": [0.2, 0.9],
                          "steering_branch": "both", "name": "dress"}) + "\n"
        )
        code = cli_main()(["batch", str(jobs), "--out", str(tmp / "batch"), "--device", "cpu", "--no-progress"])
        results["batch_exit"] = code
        results["batch"] = {str(p.relative_to(tmp / "batch")): png_entry(p, root, tmp) for p in sorted((tmp / "batch").rglob("*.png"))}
    # 3. the app: original + steered pair and a strength strip, as its Generate and Strip buttons run them
    try:
        from steer.app import helpers as H
        from steer.cli.loading import load_pipeline
    except ImportError:
        from steer.loading import load_pipeline

        from steer import app_helpers as H
    pipe = load_pipeline(None, "cpu")
    from steer.vectors import SteeringVector

    vector = SteeringVector.load(root / "assets" / "directions" / "to_blue.safetensors")
    settings = H.GenerateSettings(prompt="a red sneaker", seed=5, steps=12, strength=1.0).validated(pipe)
    original, steered, _ = H.run_pair(pipe, vector, settings)
    strip = H.run_rows(pipe, vector, settings, H.strip_scales(1.0, 3))
    results["app"] = {"original": pixels(original), "steered": pixels(steered), "strip": [pixels(im) for im in strip]}
    Path(out_json).write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"wrote {out_json}: {sum(len(v) for v in results.values() if isinstance(v, dict))} hashes")


if __name__ == "__main__":
    main(sys.argv[1])
