"""Gradio demo of training-free representation steering: generate, learn directions, check memorization.

    python app.py                       # the embedded demo model on http://127.0.0.1:7860 (offline)
    python app.py --model path/or/hub-id --device cuda --port 7861
    python app.py --share               # opt-in public link

`build_app(pipe_or_model)` returns the `gr.Blocks`, so tests and notebooks can launch it in-process. The logic
lives in `steer.app_helpers`; this file only wires components to it.
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from steer import app_helpers as H
from steer.hooks import BRANCHES, MODES, PAPER_WINDOW

log = logging.getLogger("steer.app")
PROGRESS = gr.Progress()  # default of handler arguments: gradio injects a per-request tracker

OK_STYLE = "border-left: 4px solid #2a2; padding-left: .6em"
ERROR_STYLE = "border-left: 4px solid #d33; padding-left: .6em; color: #a11"

INTRO = """# steer - representation steering for Stable Diffusion
Pick a direction, set the **strength** (negative subtracts) and the **layer**, and compare the original and the
steered image from the same seed. Learn new directions from two prompt sets (or two image sets) in the *Learn* tab -
no training, only forward passes."""


# ----------------------------------------------------------------------------------------------------------------------
# Status boxes and error handling
# ----------------------------------------------------------------------------------------------------------------------
def ok_box(text: str) -> str:
    """A success message (Markdown inside a div the tests and the CSS can find)."""
    return f'<div class="steer-status-ok" style="{OK_STYLE}">\n\n{text}\n\n</div>'


def error_box(text: str) -> str:
    """An error message: what went wrong and how to fix it, never a traceback."""
    return f'<div class="steer-status-error" style="{ERROR_STYLE}">\n\n**Error:** {text}\n\n</div>'


def guarded(num_outputs: int) -> Callable:
    """Turn any exception of a handler into a readable message: a warning toast and an error box in the last
    output (the other outputs are left as they were). Never shows a traceback in the UI."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - every failure becomes a message
                message = H.readable(err)
                if isinstance(err, H.READABLE_ERRORS):
                    log.info("%s: %s", fn.__name__, message)
                else:
                    log.exception("%s failed", fn.__name__)
                gr.Warning(message)
                outputs = [gr.skip()] * num_outputs
                outputs[-1] = error_box(message)
                return tuple(outputs) if num_outputs > 1 else outputs[0]

        return wrapper

    return decorate


def progress_fn(progress: gr.Progress | None) -> H.ProgressFn | None:
    """Adapt `gr.Progress` to the ``(fraction, desc)`` callables of steer."""
    if progress is None:
        return None
    return lambda fraction, desc: progress(fraction, desc=desc)


# ----------------------------------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------------------------------
class SteerApp:
    """Handlers bound to one pipeline; per-user data (uploads, learned directions, last result) lives in gr.State."""

    def __init__(
        self,
        pipe,
        catalog: H.DirectionCatalog | None = None,
        workdir: str | Path | None = None,
        detector: str | Path | None = None,
    ):
        self.pipe = pipe
        self.detector_path = detector
        self._detector: Any = None
        self._detector_loaded = False
        self._detector_lock = threading.Lock()
        self._detector_version = 0  # bumped when the detector is replaced: inline scores name the one that made them
        self.catalog = catalog if catalog is not None else H.DirectionCatalog.from_assets()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="steer-app-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.layers = H.layer_names(pipe)
        self.size = H.native_size(pipe)

    # ----- directions ------------------------------------------------------------------------------------------
    def _dropdown(self, session: dict, value: str) -> dict:
        return gr.update(choices=self.catalog.choices(session), value=value)

    def upload_direction(self, file: Any, session: dict | None, strict: bool):
        """Load an uploaded ``.safetensors`` direction into this user's list and select it."""
        if not file:
            raise H.UserError("no file uploaded")
        vector = H.load_direction_file(getattr(file, "name", file), self.pipe, strict=bool(strict))
        session = dict(session or {})
        name = H.unique_name(f"{vector.name} (uploaded)", set(self.catalog.choices(session)))
        session[name] = vector
        return session, self._dropdown(session, name), ok_box(f"Loaded {H.direction_summary(vector)}")

    def describe_direction(self, name: str, session: dict | None, index: Any):
        """Summary of the picked direction, the layer slider position, and the direction's recommended settings
        (strength, window start, window end, mode, normalize; left as they are when it recommends none)."""
        vector = self.catalog.get(name, session)
        summary = H.direction_summary(vector) if vector is not None else "No direction: both images are the original."
        rec = (vector.metadata.get("recommended") or {}) if vector is not None else {}
        window = rec.get("window") or (None, None)
        values = (rec.get("scale"), window[0], window[1], rec.get("mode"), rec.get("normalize"))
        updates = [gr.update(value=v) if v is not None else gr.skip() for v in values]
        if any(v is not None for v in values):
            summary += " · recommended settings applied"
        return (H.describe_layer(self.pipe, vector, index), *updates, summary)

    def describe_layer(self, name: str, session: dict | None, index: Any) -> str:
        try:
            vector = self.catalog.get(name, session)
        except Exception as err:  # noqa: BLE001 - a label, never an error
            return f"⚠ {H.readable(err)}"
        return H.describe_layer(self.pipe, vector, index)

    # ----- generation ------------------------------------------------------------------------------------------
    def _settings(
        self,
        prompt: str,
        negative_prompt: str,
        seed: Any,
        steps: Any,
        guidance: Any,
        size: Any,
        strength: Any,
        layer: Any,
        layers: Any,
        window_start: Any,
        window_end: Any,
        branch: str,
        normalize: bool,
        mode: str,
        strict: bool,
    ) -> H.GenerateSettings:
        return H.GenerateSettings(
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=seed,
            steps=steps,
            guidance=guidance,
            strength=strength,
            layer_index=layer,
            layers=tuple(layers or ()),
            window_start=window_start,
            window_end=window_end,
            branch=branch,
            normalize=normalize,
            mode=mode,
            strict=strict,
            height=size,
            width=size,
        ).validated(self.pipe)

    def generate(
        self,
        direction: str,
        session: dict | None,
        prompt: str,
        negative_prompt: str,
        seed: Any,
        steps: Any,
        guidance: Any,
        size: Any,
        strength: Any,
        layer: Any,
        layers: Any,
        window_start: Any,
        window_end: Any,
        branch: str,
        normalize: bool,
        mode: str,
        strict: bool,
        progress: gr.Progress = PROGRESS,
    ):
        """Original and steered image from the same seed (one batched call, per-row scales [0, s])."""
        settings = self._settings(
            prompt,
            negative_prompt,
            seed,
            steps,
            guidance,
            size,
            strength,
            layer,
            layers,
            window_start,
            window_end,
            branch,
            normalize,
            mode,
            strict,
        )
        vector = self.catalog.get(direction, session)
        detector, version = self._detector_or_none()
        original, steered, scores = H.run_pair(self.pipe, vector, settings, progress_fn(progress), detector=detector)
        recipe = settings.recipe(self.pipe, vector, settings.strength)
        png = H.save_with_recipe(steered, recipe, self.workdir, "steered")
        last = {"original": original, "steered": steered, "prompt": settings.prompt, "recipe": recipe}
        if scores is not None:  # inline memorization scores, read during this very sampling
            last["inline"] = {"original": scores[0], "steered": scores[1], "detector": version}
        where = (
            f" at layer `{recipe['steering']['layers'][0]}`"
            if vector is not None and len(recipe["steering"]["layers"]) == 1
            else ""
        )
        note = (
            f"Steered with **{vector.name}** × {settings.strength:g}{where}."
            if vector is not None
            else "No direction picked: both images are the original."
        )
        return H.upscale_for_display(original), H.upscale_for_display(steered), str(png), last, ok_box(note)

    def strip(
        self,
        direction: str,
        session: dict | None,
        count: Any,
        prompt: str,
        negative_prompt: str,
        seed: Any,
        steps: Any,
        guidance: Any,
        size: Any,
        strength: Any,
        layer: Any,
        layers: Any,
        window_start: Any,
        window_end: Any,
        branch: str,
        normalize: bool,
        mode: str,
        strict: bool,
        progress: gr.Progress = PROGRESS,
    ):
        """A strength strip: ``count`` scales from -|s| to +|s| in one batched call."""
        settings = self._settings(
            prompt,
            negative_prompt,
            seed,
            steps,
            guidance,
            size,
            strength,
            layer,
            layers,
            window_start,
            window_end,
            branch,
            normalize,
            mode,
            strict,
        )
        vector = self.catalog.get(direction, session)
        if vector is None:
            raise H.UserError("pick a direction first: the strip sweeps its strength")
        scales = H.strip_scales(settings.strength, count)
        images = H.run_rows(self.pipe, vector, settings, scales, progress_fn(progress))
        gallery = [(H.upscale_for_display(im, 128), f"{s:+.3g}") for im, s in zip(images, scales, strict=True)]
        return gallery, ok_box(f"Strength strip of **{vector.name}**: {', '.join(f'{s:+.3g}' for s in scales)}.")

    # ----- learning --------------------------------------------------------------------------------------------
    def learn(
        self,
        session: dict | None,
        positive: str,
        negative: str,
        pos_files: Any,
        neg_files: Any,
        method: str,
        mode: str,
        scope: str,
        layers: Any,
        num_samples: Any,
        steps: Any,
        guidance: Any,
        seed: Any,
        name: str,
        image_prompt: str,
        progress: gr.Progress = PROGRESS,
    ):
        """Learn a direction and add it to this user's picker; offer it as a download."""
        settings = H.LearnSettings(
            positive=positive,
            negative=negative,
            positive_files=tuple(pos_files or ()),
            negative_files=tuple(neg_files or ()),
            method=method,
            mode=mode,
            scope=scope,
            layers=tuple(layers or ()),
            num_samples=num_samples,
            steps=steps,
            guidance=guidance,
            seed=seed,
            name=name,
            image_prompt=image_prompt,
        )
        progress(0.0, desc="starting")
        vector = H.learn(self.pipe, settings, progress_fn(progress))
        session = dict(session or {})
        label = H.unique_name(f"{vector.name} (learned)", set(self.catalog.choices(session)))
        session[label] = vector
        path = H.save_direction(vector, tempfile.mkdtemp(dir=self.workdir))
        message = ok_box(f"Learned {H.direction_summary(vector)}. It is selected in the Generate tab.")
        return session, self._dropdown(session, label), str(path), message

    # ----- memorization ----------------------------------------------------------------------------------------
    def detector(self) -> Any:
        """The model's calibrated detector (loaded once; None when there is none yet)."""
        with self._detector_lock:
            if not self._detector_loaded:
                self._detector = H.load_detector(self.pipe, self.detector_path)
                self._detector_loaded = True
            return self._detector

    def _detector_or_none(self) -> tuple[Any, int]:
        """(detector or None, its version) for inline scores during generation; a missing or unusable file never
        blocks generating."""
        try:
            self.detector()  # loads the file once
        except H.UserError:
            return None, -1
        with self._detector_lock:  # both read together: a calibration in between cannot mislabel the scores
            return self._detector, self._detector_version

    def detector_status(self) -> str:
        """Markdown: which detector the panel uses, or how to get one."""
        try:
            detector = self.detector()
        except H.UserError as err:
            return error_box(str(err))
        if detector is None:
            where = ", ".join(f"`{p}`" for p in H.detector_candidates(self.pipe))
            return (
                "No calibrated detector found for this model (looked for "
                f"{where}). Calibrate one below on ordinary prompts, or start the app with `--detector FILE`."
            )
        n = len(detector.calibration.get("reencode", []))
        return ok_box(f"Detector calibrated on {n} ordinary samples; threshold {detector.threshold:.4g}.")

    def memorization(self, last: dict | None, which: str):
        """Score the last generated image with the calibrated detector."""
        if not last:
            raise H.UserError("generate an image first (Generate tab); the score is for the current image")
        detector = self.detector()
        if detector is None:
            raise H.UserError("no calibrated detector for this model yet: calibrate one in the box below")
        key = "steered" if which == "steered" else "original"
        inline = last.get("inline") or {}
        if inline.get("detector") == self._detector_version:  # scored during generation by the current detector
            view = H.inline_view(detector, inline[key])
        else:
            view = H.score_image(detector, last[key], last["prompt"])
        return view.plot, ok_box(view.markdown)

    def calibrate(
        self, prompts: str, samples: Any, fpr: Any, steps: Any, guidance: Any, progress: gr.Progress = PROGRESS
    ):
        """Calibrate a detector on ordinary prompts; it becomes the app's detector (for every user)."""
        lines = H.parse_prompt_lines(prompts, "calibration")
        detector = H.calibrate_detector(self.pipe, lines, samples, fpr, steps, guidance, progress_fn(progress))
        path = detector.save(Path(tempfile.mkdtemp(dir=self.workdir)) / "detector.safetensors")
        with self._detector_lock:
            self._detector, self._detector_loaded = detector, True
            self._detector_version += 1
        return str(path), self.detector_status()


def build_app(
    pipe_or_model: Any = None,
    device: str | None = None,
    catalog: H.DirectionCatalog | None = None,
    detector: str | Path | None = None,
) -> gr.Blocks:
    """The demo UI around a pipeline (or a model path / hub id, loaded with `steer.loading.load_pipeline`).

    ``catalog``: the directions offered in the picker (default: the bundled ``assets/directions``); ``detector``:
    a calibrated memorization detector file (default: looked up next to the model, see `H.detector_candidates`).
    """
    if pipe_or_model is None or isinstance(pipe_or_model, str | Path):
        from steer.loading import load_pipeline

        pipe = load_pipeline(pipe_or_model, device=device)
    else:
        pipe = pipe_or_model
    app = SteerApp(pipe, catalog, detector=detector)
    with gr.Blocks(title="steer: representation steering") as demo:
        demo.steer_app = app  # for tests and notebooks
        session = gr.State({})
        last = gr.State(None)
        gr.Markdown(INTRO)
        gr.Markdown(f"Model: `{H.model_name(pipe)}` · {len(app.layers)} hookable layers · native size {app.size}px")
        with gr.Tab("Generate"):
            direction = _generate_panel(app, demo, session, last)
        with gr.Tab("Learn"):
            _learn_panel(app, session, direction)
        with gr.Tab("Memorization"):
            _memorization_panel(app, demo, last)
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


def _generate_panel(app: SteerApp, demo: gr.Blocks, session: gr.State, last: gr.State):
    """The Generate tab; returns the direction picker (the Learn tab updates it)."""
    L = H.LIMITS
    choices = app.catalog.choices(None)
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(
                label="Prompt", value=_default_prompt(app), max_length=L.max_prompt_chars, elem_id="prompt"
            )
            negative = gr.Textbox(label="Negative prompt", value="", max_length=L.max_prompt_chars)
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=L.max_seed, elem_id="seed")
                steps = gr.Slider(1, L.max_steps, value=20, step=1, label="Steps", elem_id="steps")
                guidance = gr.Slider(0, L.max_guidance, value=5.0, step=0.5, label="Guidance")
            with gr.Row():
                direction = gr.Dropdown(
                    choices,
                    value=choices[1] if len(choices) > 1 else choices[0],
                    label="Direction",
                    allow_custom_value=True,
                    elem_id="direction",
                    scale=3,
                )
                upload = gr.UploadButton(
                    "Upload a direction (.safetensors)", file_types=[".safetensors"], scale=2, elem_id="upload"
                )
            direction_info = gr.Markdown("", elem_id="direction-info")
            strength = gr.Slider(
                -10, 10, value=1.0, step=0.05, label="Strength (negative subtracts)", elem_id="strength"
            )
            layer = gr.Slider(
                0,
                len(app.layers),
                value=0,
                step=1,
                label="Layer (0 = all of the direction's layers; 1 → input side, max → output side)",
                elem_id="layer",
            )
            layer_info = gr.Markdown(H.describe_layer(app.pipe, None, 0))
            with gr.Accordion("Advanced", open=False):
                layers = gr.Dropdown(
                    app.layers, value=[], multiselect=True, label="Several layers (overrides the slider)"
                )
                with gr.Row():
                    w_start = gr.Slider(
                        0, 1, value=PAPER_WINDOW[0], step=0.05, label="Window start (fraction of the run)"
                    )
                    w_end = gr.Slider(0, 1, value=PAPER_WINDOW[1], step=0.05, label="Window end")
                with gr.Row():
                    branch = gr.Radio(list(BRANCHES), value="cond", label="CFG branch")
                    mode = gr.Radio(list(MODES), value="add", label="Mode")
                with gr.Row():
                    normalize = gr.Checkbox(False, label="Normalize (strength in units of typical activation norm)")
                    strict = gr.Checkbox(True, label="Strict model check")
                size = gr.Slider(
                    L.min_size, min(L.max_size, max(app.size * 2, 512)), value=app.size, step=8, label="Image size"
                )
                count = gr.Slider(2, L.max_strip, value=7, step=1, label="Strip length")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                go_strip = gr.Button("Strength strip", elem_id="strip")
        with gr.Column(scale=3):
            with gr.Row():
                original = gr.Image(
                    label="Original (strength 0)", format="png", type="pil", interactive=False, elem_id="original"
                )
                steered = gr.Image(label="Steered", format="png", type="pil", interactive=False, elem_id="steered")
            status = gr.Markdown("", elem_id="status")
            png = gr.File(label="Steered PNG with its recipe", interactive=False, height=60, elem_id="png")
            gallery = gr.Gallery(
                label="Strength strip (-|s| … +|s|)", format="png", columns=L.max_strip, height=200, elem_id="gallery"
            )

    values = [
        prompt,
        negative,
        seed,
        steps,
        guidance,
        size,
        strength,
        layer,
        layers,
        w_start,
        w_end,
        branch,
        normalize,
        mode,
        strict,
    ]
    go.click(
        guarded(5)(app.generate),
        [direction, session, *values],
        [original, steered, png, last, status],
        api_name="generate",
    )
    go_strip.click(guarded(2)(app.strip), [direction, session, count, *values], [gallery, status], api_name="strip")
    upload.upload(
        guarded(3)(app.upload_direction),
        [upload, session, strict],
        [session, direction, status],
        api_name="upload_direction",
    )
    guarded_describe = guarded(7)(app.describe_direction)
    described = [layer_info, strength, w_start, w_end, mode, normalize, direction_info]
    direction.change(guarded_describe, [direction, session, layer], described, api_name=False)
    layer.change(app.describe_layer, [direction, session, layer], layer_info, api_name=False, queue=False)
    demo.load(guarded_describe, [direction, session, layer], described, api_name=False)
    return direction


def _learn_panel(app: SteerApp, session: gr.State, direction: gr.Dropdown) -> None:
    """The Learn tab: two prompt sets (or image sets) -> a new direction, usable at once and downloadable."""
    L = H.LIMITS
    gr.Markdown(
        "Write one prompt per line for each set, or upload images instead (then both sets are images). "
        "`mean_diff` = positive − negative, `pca` = first principal direction of paired differences, "
        "`mean` = the paper's mean of the positive set. Learning on **all layers** lets the layer slider pick any layer."
    )
    with gr.Row():
        with gr.Column():
            positive = gr.Textbox(
                label="Positive prompts (one per line)", lines=4, value=_default_learn(app)[0], elem_id="learn-positive"
            )
            pos_files = gr.File(
                label="…or positive images", file_count="multiple", file_types=["image"], elem_id="learn-pos-files"
            )
        with gr.Column():
            negative = gr.Textbox(
                label="Negative prompts (one per line)", lines=4, value=_default_learn(app)[1], elem_id="learn-negative"
            )
            neg_files = gr.File(
                label="…or negative images", file_count="multiple", file_types=["image"], elem_id="learn-neg-files"
            )
    with gr.Row():
        method = gr.Radio(list(H.LEARN_METHODS), value="mean_diff", label="Method")
        mode = gr.Radio(
            list(H.LEARN_MODES),
            value="fast",
            label="Mode (prompts)",
            info="fast: record while sampling; reference: generate, then re-encode (the paper)",
        )
        scope = gr.Radio(list(H.LAYER_SCOPES), value="all layers", label="Layers")
    layers = gr.Dropdown(app.layers, value=[], multiselect=True, label="Chosen layers (with 'chosen layers')")
    with gr.Row():
        num_samples = gr.Slider(1, L.max_learn_samples, value=8, step=1, label="Samples per set")
        steps = gr.Slider(1, L.max_learn_steps, value=20, step=1, label="Sampling steps")
        guidance = gr.Slider(0, L.max_guidance, value=5.0, step=0.5, label="Guidance")
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
    with gr.Row():
        name = gr.Textbox(label="Name (optional)", max_length=L.max_prompt_chars)
        image_prompt = gr.Textbox(label="Prompt for image sets (optional)", max_length=L.max_prompt_chars)
    go = gr.Button("Learn direction", variant="primary", elem_id="learn")
    file = gr.File(label="Learned direction (.safetensors)", interactive=False, elem_id="learned-file")
    status = gr.Markdown("", elem_id="learn-status")
    inputs = [
        session,
        positive,
        negative,
        pos_files,
        neg_files,
        method,
        mode,
        scope,
        layers,
        num_samples,
        steps,
        guidance,
        seed,
        name,
        image_prompt,
    ]
    go.click(guarded(4)(app.learn), inputs, [session, direction, file, status], api_name="learn")


def _memorization_panel(app: SteerApp, demo: gr.Blocks, last: gr.State) -> None:
    """The Memorization tab: the calibrated detector's verdict on the current image, and in-app calibration."""
    gr.Markdown(
        "Scores the current image (last *Generate*) with the memorization detector calibrated on ordinary samples of "
        "this model, and shows where it falls on their histogram. Images generated while a calibrated detector was "
        "loaded get the inline score read during their own sampling (for the bundled detectors: the distance between "
        "the guidance branches' activations, docs/detection.md); others get the paper's re-encode score (Zhang et al.: "
        "spikiness of UNet activations)."
    )
    detector_info = gr.Markdown("", elem_id="detector-info")
    which = gr.Radio(["steered", "original"], value="steered", label="Image")
    go = gr.Button("Score the current image", variant="primary", elem_id="score")
    status = gr.Markdown("", elem_id="mem-status")
    plot = gr.Image(label="Score vs ordinary samples", type="pil", format="png", interactive=False, elem_id="mem-plot")
    with gr.Accordion("Calibrate a detector on ordinary prompts", open=False):
        prompts = gr.Textbox(label="Ordinary prompts (one per line)", lines=3, value=_default_prompt(app))
        with gr.Row():
            samples = gr.Slider(4, 256, value=32, step=1, label="Samples")
            fpr = gr.Slider(0.01, 0.5, value=0.05, step=0.01, label="False-positive rate")
            steps = gr.Slider(1, H.LIMITS.max_steps, value=20, step=1, label="Steps")
            guidance = gr.Slider(0, H.LIMITS.max_guidance, value=5.0, step=0.5, label="Guidance")
        calibrate = gr.Button("Calibrate", elem_id="calibrate")
        detector_file = gr.File(label="Calibrated detector (.safetensors)", interactive=False)
    go.click(guarded(2)(app.memorization), [last, which], [plot, status], api_name="memorization")
    calibrate.click(
        guarded(2)(app.calibrate),
        [prompts, samples, fpr, steps, guidance],
        [detector_file, detector_info],
        api_name="calibrate",
    )
    demo.load(app.detector_status, None, detector_info, api_name=False)


def _default_prompt(app: SteerApp) -> str:
    return "a red sneaker" if "demo" in H.model_name(app.pipe) else "a photo of a dog"


def _default_learn(app: SteerApp) -> tuple[str, str]:
    if "demo" in H.model_name(app.pipe):
        return (
            "a blue sneaker\na blue dress\na blue bag\na blue coat",
            "a red sneaker\na red dress\na red bag\na red coat",
        )
    return "a photo of a dog in the snow", "a photo of a dog on the grass"


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from steer.loading import default_model

    parser = argparse.ArgumentParser(description="Serve the steer demo (Gradio).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--model", default=default_model(), help="pipeline directory or hub id (default: the embedded demo model)"
    )
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: the best available)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--detector", default=None, help="a calibrated memorization detector file (.safetensors)")
    return parser.parse_args(argv)


def patient_url_ok(url: str, attempts: int = 20, timeout: float = 10.0) -> bool:
    """Gradio's start-up reachability check, with longer timeouts: on a busy machine its 3 s HEAD times out and
    launch() fails with "localhost is not accessible" although the server is up."""
    import time

    import httpx

    for _ in range(attempts):
        try:
            if httpx.head(url, timeout=timeout, verify=False).status_code < 400 or url.startswith("https"):
                return True
        except (httpx.ConnectError, httpx.TimeoutException):
            pass
        time.sleep(0.5)
    return False


def launch(demo: gr.Blocks, **kwargs: Any):
    """``demo.launch(**kwargs)`` with the patient reachability check."""
    from gradio import networking

    networking.url_ok = patient_url_ok
    return demo.launch(**kwargs)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    demo = build_app(args.model, device=args.device, detector=args.detector)
    launch(demo, server_name=args.host, server_port=args.port, share=args.share, show_error=True)


if __name__ == "__main__":
    main()
