"""Every ```python block of README.md runs, in order, as one script, exactly as written.

The script runs in a subprocess from a temporary folder that links the repository's ``assets/`` (so relative paths
such as ``assets/models/demo`` resolve and files the README saves, like ``blue.safetensors``, land in the temporary
folder), offline, on the CPU. Nothing is substituted: a README example that needs a placeholder fails this test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(text)]


def test_readme_has_the_python_examples():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2, "README.md lost its Python examples"
    assert any("SteeringStableDiffusionPipeline.from_pretrained" in b for b in blocks)
    assert any("MemorizationDetector" in b for b in blocks)


def test_readme_python_blocks_run_as_written(tmp_path):
    script = "\n\n".join(python_blocks(README.read_text()))
    # The checks below are appended after the README's own code: they read its variables.
    script += "\n\n" + "\n".join(
        [
            "import math, torch",
            "from pathlib import Path",
            "assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32, 'CPU pipelines run in float32'",
            "import numpy as np",
            "assert len(images) == 4 and image.size == images[0].size",
            "assert np.asarray(images[0]).tolist() != np.asarray(images[2]).tolist(), 'the full-strength edit changes the image'",
            "assert blue.metadata['calibration']['strength'] > 0 and paper.metadata['preset'] == 'paper'",
            "assert Path('blue.safetensors').is_file() and Path('detector.safetensors').is_file()",
            "assert all(math.isfinite(float(s)) for s in out.memorization_scores)",
            "assert fit.window == (0.25, 1.0) and 1.1 <= fit.strength <= 1.5 and fit.negative == 'replace', f'the README states the fit (1.3 over (0.25, 1), replace): {fit}'",
            "turned_blue = np.asarray(pipe('a red t-shirt', steering=[blue, red], generator=torch.Generator().manual_seed(0), **fit.options()).images[0], dtype=float)",
            "assert turned_blue[..., 2].mean() > turned_blue[..., 0].mean() + 20, 'the take-away turns the red t-shirt blue'",
            "assert taken == [('red', ['red'])], f'the README states the suggestion: {taken}'",
            "assert bundled_fit.converged and bundled_fit.prompts[0] == ('a red t-shirt', 'a blue t-shirt')",
            "blue_end, red_end = (np.asarray(e, dtype=float) for e in (ends[0], ends[2]))",
            "assert blue_end[..., 2].mean() > blue_end[..., 0].mean() + 20 and red_end[..., 0].mean() > red_end[..., 2].mean() + 20, "
            "'the slider: blue at -1, red at +1'",
            "assert slider.opposite is not None and slider.opposite.metadata['positive']['prompts'][0] == 'a blue t-shirt'",
            "assert blue.metadata['calibration']['strength_by'] == 'colour', 'a one-sided colour edit: its full edit where its colour comes closest'",
            "assert all(v.metadata['calibration'].get('strength_by') == 'colour' for v in (slider, slider.opposite)), "
            "'a colour slider side: its full edit where its colour comes closest too (session 40)'",
            "blue_shirt, red_bag = (np.asarray(e, dtype=float) for e in turned)",
            "assert blue_shirt[..., 2].mean() > blue_shirt[..., 0].mean() + 20 and red_bag[..., 0].mean() > red_bag[..., 2].mean() + 20, "
            "'the slider turns a prompt that states one end to the other'",
            "photo_px = np.asarray(photo, dtype=float)",
            "assert np.abs(np.asarray(strip[0], dtype=float) - photo_px).mean() < 8, 'the inversion gives the photo back (its VAE reconstruction)'",
            "assert np.abs(np.asarray(strip[2], dtype=float) - photo_px).mean() > 20, 'the inverted edit moves'",
            "print('README OK')",
        ]
    )
    (tmp_path / "assets").symlink_to(ROOT / "assets", target_is_directory=True)
    (tmp_path / "readme_blocks.py").write_text(script)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "readme_blocks.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"README code failed:\n{proc.stderr[-4000:]}"
    assert "README OK" in proc.stdout


def test_from_pretrained_without_a_dtype_is_float32_on_cpu_and_stored_half_elsewhere():
    """The demo model is stored in float16. With no dtype: float32 on the CPU (where its first call used to fail with
    'mat1 and mat2 must have the same dtype'), the stored float16 once moved to an accelerator (``meta`` stands in
    here: any non-CPU device). An explicit dtype is always obeyed."""
    import torch

    from steer import SteeringStableDiffusionPipeline

    demo = ROOT / "assets" / "models" / "demo"

    def dtypes(pipe) -> set:
        return {m.dtype for m in pipe.components.values() if isinstance(m, torch.nn.Module)}

    pipe = SteeringStableDiffusionPipeline.from_pretrained(demo)
    pipe.set_progress_bar_config(disable=True)
    assert dtypes(pipe) == {torch.float32}
    image = pipe("a sneaker", num_inference_steps=2, output_type="np").images
    assert image.shape[0] == 1 and image.dtype.kind == "f"
    assert dtypes(pipe.to("cpu")) == {torch.float32}
    assert dtypes(pipe.to("meta")) == {torch.float16}

    half = SteeringStableDiffusionPipeline.from_pretrained(demo, dtype=torch.float16)
    assert dtypes(half) == {torch.float16} and dtypes(half.to("cpu")) == {torch.float16}
    chosen = SteeringStableDiffusionPipeline.from_pretrained(demo)
    chosen.to(torch.bfloat16)  # an explicit dtype ends the automatic choice
    assert dtypes(chosen.to("cpu")) == {torch.bfloat16}


def test_readme_command_lines_parse():
    """Every ``steer ...`` line of the README's bash blocks is a valid command line (parsed, not run): a renamed
    option or a wrong --sweep would otherwise only show when a user pastes it."""
    import shlex

    from steer.cli.main import parse_args

    bash = re.compile(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
    lines = [line for block in bash.findall(README.read_text()) for line in block.replace("\\\n", " ").splitlines()]
    commands = [shlex.split(line, comments=True) for line in lines if line.startswith("steer ")]
    assert len(commands) >= 8, "README.md lost its command-line examples"
    for argv in commands:
        try:
            parse_args(argv[1:])
        except SystemExit as exc:
            if exc.code == 0 and argv[1:] == ["--version"]:  # prints and exits, as asked
                continue
            raise AssertionError(f"README command does not parse: {shlex.join(argv)}") from exc
