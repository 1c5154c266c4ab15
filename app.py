"""Gradio demo of training-free representation steering: generate, learn directions, check memorization.

    python app.py                       # the embedded demo model on http://127.0.0.1:7860 (offline)
    python app.py --model path/or/hub-id --device cuda --port 7861
    python app.py --share               # opt-in public link

`build_app(pipe_or_model)` returns the `gr.Blocks`, so tests and notebooks can launch it in-process. The handlers
live in `steer.app.handlers` and the logic in `steer.app.helpers`; this file only wires components to them.
Uploads are capped (``--max-upload-mb``, default 20 MiB; larger ones are refused while they stream in) and the
files gradio keeps are swept after 6 hours.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from steer.app import helpers as H
from steer.app.handlers import (  # noqa: F401 - re-exported for tests and notebooks
    ERROR_STYLE,
    OK_STYLE,
    PROGRESS,
    SteerApp,
    error_box,
    guarded,
    ok_box,
    progress_fn,
    take_away_choices,
)
from steer.config import BRANCHES, MODES, NEGATIVES, PAPER_WINDOW

INTRO = """# steer - representation steering for Stable Diffusion
Pick a direction, set the **strength** (negative subtracts, or removes: Advanced) and the **layer**, and compare the original and the
steered image from the same seed (or two edits of your own picture: *Edit an image*). Learn new directions from two
prompt sets (or two image sets) in the *Learn* tab - no training, only forward passes."""

# Uploaded and generated files gradio keeps are swept: every 30 minutes, those older than 6 hours are deleted.
CACHE_SWEEP = (30 * 60, 6 * 3600)


class SteerBlocks(gr.Blocks):
    """`gr.Blocks` whose `launch` caps the size of every uploaded file (gradio's ``max_file_size``) by default, so
    ``demo.launch()`` from a notebook is as safe as ``python app.py``: a larger upload is refused while it streams in
    (HTTP 413) and nothing of it is kept."""

    max_upload_bytes: int = H.LIMITS.max_upload_bytes

    def launch(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("max_file_size", self.max_upload_bytes)
        return super().launch(*args, **kwargs)


def build_app(
    pipe_or_model: Any = None,
    device: str | None = None,
    catalog: H.DirectionCatalog | None = None,
    detector: str | Path | None = None,
    max_upload_bytes: int | None = None,
) -> gr.Blocks:
    """The demo UI around a pipeline (or a model path / hub id, loaded with `steer.cli.loading.load_pipeline`).

    ``catalog``: the directions offered in the picker (default: those shipped for the model: its folder's own
    ``directions/``, else ``assets/directions``); ``detector``:
    a calibrated memorization detector file (default: looked up next to the model, see `H.detector_candidates`);
    ``max_upload_bytes``: the largest file a user may upload (default `H.Limits.max_upload_bytes`, 20 MiB).
    """
    cap = H.LIMITS.max_upload_bytes if max_upload_bytes is None else int(max_upload_bytes)
    if cap < 1:
        raise ValueError(f"max_upload_bytes must be at least 1, got {max_upload_bytes}")
    if pipe_or_model is None or isinstance(pipe_or_model, str | Path):
        from steer.cli.loading import load_pipeline

        pipe = load_pipeline(pipe_or_model, device=device)
    else:
        pipe = pipe_or_model
    app = SteerApp(pipe, catalog, detector=detector)
    with SteerBlocks(title="steer: representation steering", delete_cache=CACHE_SWEEP) as demo:
        demo.max_upload_bytes = cap
        demo.steer_app = app  # for tests and notebooks
        session = gr.State({})
        last = gr.State(None)
        own_detector = gr.State(None)  # the detector this page calibrated (SteerApp.calibrate), else the app's is used
        gr.Markdown(INTRO)
        gr.Markdown(f"Model: {H.md_code(H.model_name(pipe), 200)} · {len(app.layers)} hookable layers · native size {app.size}px")
        with gr.Tab("Generate"):
            direction = _generate_panel(app, demo, session, last, own_detector)
        with gr.Tab("Learn"):
            _learn_panel(app, session, direction)
        with gr.Tab("Memorization"):
            _memorization_panel(app, demo, last, own_detector)
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


def _generate_panel(app: SteerApp, demo: gr.Blocks, session: gr.State, last: gr.State, own_detector: gr.State):
    """The Generate tab; returns the direction picker (the Learn tab updates it)."""
    L = H.LIMITS
    choices = app.catalog.choices(None)
    # the default direction's recommended settings as the controls' values: what the page fills in on load, and what an
    # API client (gradio_client) that leaves them out gets (it got the paper's window, branch and mode: a weaker edit)
    try:
        rec = H.recommended_settings(app.catalog.get(_default_direction(choices), None)) if choices else (None,) * 6
    except H.UserError:  # a damaged bundled file: the picker says so when it is picked
        rec = (None,) * 6

    def initial(index: int, default):
        return rec[index] if rec[index] is not None else default
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(
                label="Prompt", value=_default_prompt(app), max_length=L.max_prompt_chars, elem_id="prompt"
            )
            negative = gr.Textbox(
                label="Negative prompt", value="", max_length=L.max_prompt_chars,
                info="a direction's full edit is calibrated for the negative prompt it was learned with (none, for the bundled "
                "ones); under another a colour edit does less: learn it with yours in the Learn tab",
            )
            with gr.Accordion("Edit an image (optional)", open=False):
                gr.Markdown(
                    "The prompt leaves open what the direction changes ('a t-shirt' -> blue). With a mask (white is "
                    "repainted, black kept) the model's inpainting pipeline edits inside it only."
                )
                with gr.Row():
                    # image_mode=None: the uploaded file as it is (steer.images.open_image decodes it: gradio's own
                    # conversion made a 16-bit grey picture white and spent seconds on a large one before any check)
                    edit_image = gr.Image(
                        label="Image to edit", type="filepath", image_mode=None, sources=["upload", "clipboard"], height=160,
                        elem_id="edit-image",
                    )
                    edit_mask = gr.Image(
                        label="Mask (optional)", type="filepath", image_mode=None, sources=["upload", "clipboard"], height=160,
                        elem_id="edit-mask",
                    )
                edit_strength = gr.Slider(
                    0.05, 1.0, value=0.8, step=0.05, elem_id="edit-strength",
                    label="Edit strength (how much of the run re-draws the image; the window counts the steps it runs)",
                )
                edit_invert = gr.Checkbox(
                    False, elem_id="edit-invert",
                    label="From its inversion instead (SD, SDXL, SD3, Flux): the original is the picture itself and the direction "
                          "changes only what it edits; no mask, the strength is the whole run",
                )
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=L.max_seed, elem_id="seed")
                steps = gr.Slider(1, L.max_steps, value=20, step=1, label="Steps", elem_id="steps")
                guidance = gr.Slider(0, L.max_guidance, value=5.0, step=0.5, label="Guidance")
            with gr.Row():
                direction = gr.Dropdown(
                    choices,
                    value=_default_direction(choices),
                    label="Direction",
                    allow_custom_value=True,
                    elem_id="direction",
                    scale=3,
                )
                upload = gr.UploadButton(
                    "Upload a direction (.safetensors)", file_types=[".safetensors"], scale=2, elem_id="upload"
                )
            take_away = gr.Dropdown(
                take_away_choices(app.catalog, None),
                value=H.NONE_CHOICE,
                label="Take away (optional)",
                info="the direction of what the prompt says against the edit, removed as the direction is added ('a "
                "red dress' -> bag: add to_bag, take away to_dress). 'Fit' picks the strength and window from the "
                "model (a few seconds); if the garment goes dark, raise the strength",
                allow_custom_value=True,  # the session's own directions (checked by the handler, like the picker's)
                elem_id="take-away",
            )
            fit = gr.Button("Fit strength and window to this take-away", size="sm", elem_id="fit-take-away")
            hint = gr.Markdown("", elem_id="take-away-hint")  # what the prompt states against the edit, if anything
            direction_info = gr.Markdown("", elem_id="direction-info")
            strength = gr.Slider(
                -10, 10, value=initial(0, 1.0), step=0.05, label="Strength (negative subtracts or removes; a two-sided slider's: toward its negatives)", elem_id="strength"
            )
            layer = gr.Slider(
                0,
                len(app.layers),
                value=0,
                step=1,
                label="Layer (0 = all of the direction's layers, or its own route; 1 → input side, max → output side; "
                      "a direction on the prompt's tokens: the one cross-attention that reads it)",
                elem_id="layer",
            )
            layer_info = gr.Markdown(H.describe_layer(app.pipe, None, 0), elem_id="layer-info")
            with gr.Accordion("Advanced", open=False):
                layers = gr.Dropdown(  # the picked direction's layers where they are not hookable (app.layer_choices);
                    # an API client's are checked by the handler (H.selected_layers)
                    app.layers, value=[], multiselect=True, label="Several layers (overrides the slider)",
                    allow_custom_value=True, elem_id="several-layers",
                )
                with gr.Row():
                    w_start = gr.Slider(
                        0, 1, value=initial(1, PAPER_WINDOW[0]), step=0.05, label="Window start (fraction of the run)"
                    )
                    w_end = gr.Slider(0, 1, value=initial(2, PAPER_WINDOW[1]), step=0.05, label="Window end")
                with gr.Row():
                    branch = gr.Radio(list(BRANCHES), value=initial(3, "cond"), label="CFG branch")
                    mode = gr.Radio(list(MODES), value=initial(4, "add"), label="Mode")
                with gr.Row():
                    normalize = gr.Checkbox(initial(5, False), label="Normalize (strength in units of typical activation norm)")
                    strict = gr.Checkbox(True, label="Strict model check")
                negative_mode = gr.Radio(
                    list(NEGATIVES), value="subtract",
                    label="Negative strength: subtract the direction, remove what the prompt carries along it, or replace (remove, and turn the prompt's word for it into the added direction's)",
                )
                size = gr.Slider(
                    L.min_size, min(L.max_size, max(app.size * 2, 512)), value=app.size, step=8, label="Image size"
                )
                count = gr.Slider(2, L.max_strip, value=7, step=1, label="Strip length")
                sampler = gr.Dropdown(
                    H.sampler_choices(app.pipe), value="", label="Sampler",
                    info="the scheduler that samples (and fits a take-away); a direction's calibrated strength "
                    "carries over between samplers within a few percent",
                    elem_id="sampler",
                )
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

    inputs = {  # the settings of generate and strip, by the names `H.GenerateSettings.from_inputs` takes
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": seed,
        "steps": steps,
        "guidance": guidance,
        "size": size,
        "strength": strength,
        "layer": layer,
        "layers": layers,
        "window_start": w_start,
        "window_end": w_end,
        "branch": branch,
        "normalize": normalize,
        "mode": mode,
        "strict": strict,
        "negative": negative_mode,
        "sampler": sampler,
        "edit_image": edit_image,
        "edit_strength": edit_strength,
        "edit_mask": edit_mask,
        "edit_invert": edit_invert,
    }
    with_take_away = {**inputs, "take_away": take_away}
    go.click(
        guarded(5)(app.generate),
        [direction, session],
        [original, steered, png, last, status],
        inputs_kwargs={**with_take_away, "own_detector": own_detector},  # inline scores: the page's detector
        api_name="generate",
    )
    go_strip.click(
        guarded(2)(app.strip),
        [direction, session, count],
        [gallery, status],
        inputs_kwargs=with_take_away,
        api_name="strip",
    )
    fit.click(
        guarded(4)(app.fit_take_away),
        [direction, session, take_away, guidance, strict, sampler, negative, prompt],
        [strength, w_start, w_end, status],
        api_name="fit_take_away",
    )
    upload.upload(
        guarded(3)(app.upload_direction),
        [upload, session, strict],
        [session, direction, status],
        api_name="upload_direction",
    )
    guarded_describe = guarded(9)(app.describe_direction)
    described = [layer_info, layer, strength, w_start, w_end, branch, mode, normalize, direction_info]
    direction.change(guarded_describe, [direction, session, layer], described, api_name=False)
    # directions learned or uploaded join the picker: offer them as take-aways too
    direction.change(app.take_away_choices, [session, take_away], take_away, api_name=False, queue=False)
    direction.change(app.layer_choices, [direction, session, layers], layers, api_name=False, queue=False)
    layer.change(app.describe_layer, [direction, session, layer], layer_info, api_name=False, queue=False)
    for changed in (prompt.change, direction.change, take_away.change):  # the take-away to pick, before generating
        changed(app.take_away_hint, [direction, session, take_away, prompt], hint, api_name=False, queue=False)
    demo.load(guarded_describe, [direction, session, layer], described, api_name=False)
    return direction


def _learn_panel(app: SteerApp, session: gr.State, direction: gr.Dropdown) -> None:
    """The Learn tab: two prompt sets (or image sets) -> a new direction, usable at once and downloadable."""
    L = H.LIMITS
    gr.Markdown(
        "Write one prompt per line for each set, or upload images instead (then both sets are images). "
        "`mean_diff` = positive − negative, `pca` = first principal direction of paired differences, "
        "`mean` = the paper's mean of the positive set. The fast and reference modes learn at the layers picked below (**all "
        "layers** lets the layer slider pick any); the text mode learns at the prompt's tokens, the trajectory mode at "
        "every cross-attention (or the chosen layers)."
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
            value="text",
            label="Mode (prompts)",
            info="text: the text tokens, strength calibrated (default); trajectory: per-step cross-attention outputs "
            "(CASteer); fast: record while sampling; reference: generate, then re-encode (the paper)",
        )
        scope = gr.Radio(list(H.LAYER_SCOPES), value="all layers", label="Layers")
        window = gr.Radio(
            list(H.LEARN_WINDOWS),
            value="mode default",
            label="Window",
            info="mode default: for text with negatives, the calibration chooses between the first half and the whole "
            "run (the one whose samples come closer to the positives' own; on the demo model 15 and 14 of 18 benchmark "
            "edits pass, 13 and 12 with the first half alone); the whole run for trajectory; auto: that choice for "
            "trajectory too",
        )
        readers = gr.Radio(
            list(H.LEARN_READERS),
            value="auto",
            label="Read by",
            info="text mode: which cross-attentions read the direction. auto: the layout blocks where the model's own "
            "prompt edit moves the layout, else all; layout: the down and mid blocks only, so an object/class edit keeps "
            "the prompt's colour; detail: the up blocks only",
        )
    layers = gr.Dropdown(app.layers, value=[], multiselect=True, label="Chosen layers (with 'chosen layers')")
    with gr.Row():
        num_samples = gr.Slider(1, L.max_learn_samples, value=8, step=1, label="Samples per set")
        steps = gr.Slider(1, L.max_learn_steps, value=20, step=1, label="Sampling steps")
        guidance = gr.Slider(0, L.max_guidance, value=5.0, step=0.5, label="Guidance")
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
        sampler = gr.Dropdown(H.sampler_choices(app.pipe), value="", label="Sampler", elem_id="learn-sampler",
                              info="the scheduler the samples are drawn with (recorded in the direction)")
    with gr.Row():
        name = gr.Textbox(label="Name (optional)", max_length=L.max_prompt_chars)
        image_prompt = gr.Textbox(label="Prompt for image sets (optional)", max_length=L.max_prompt_chars)
        calibrate_negative = gr.Textbox(
            label="Negative prompt to calibrate for (optional)", value="", max_length=L.max_prompt_chars, elem_id="learn-negative-prompt",
            info="the one you generate with: a colour direction calibrated without it under-edits under it (docs/steering.md)",
        )
        two_sided = gr.Checkbox(
            False, label="Two-sided slider", elem_id="learn-two-sided",
            info="negatives that state their own attribute ('a red sneaker' vs 'a blue sneaker'): each side calibrated, "
            "so strength 1 is the full edit toward the positives and -1 toward the negatives (twice the learning time)",
        )
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
        window,
        readers,
        sampler,
        calibrate_negative,
        two_sided,
    ]
    go.click(guarded(4)(app.learn), inputs, [session, direction, file, status], api_name="learn")


def _memorization_panel(app: SteerApp, demo: gr.Blocks, last: gr.State, own_detector: gr.State) -> None:
    """The Memorization tab: the calibrated detector's verdict on the current image, and in-app calibration (the
    page's own detector: other visitors keep the app's)."""
    gr.Markdown(
        "Scores the current image (last *Generate*) with the memorization detector calibrated on ordinary samples of "
        "this model, and shows where it falls on their histogram. Images generated while a calibrated detector was "
        "loaded get the inline score read during their own sampling (for the bundled detectors: the distance between "
        "the guidance branches' activations, docs/detection.md); others, and every steered image (steering moves the "
        "inline score as memorization does), get the paper's re-encode score (Zhang et al.: spikiness of UNet "
        "activations)."
    )
    detector_info = gr.Markdown("", elem_id="detector-info")
    which = gr.Radio(["steered", "original"], value="steered", label="Image")
    go = gr.Button("Score the current image", variant="primary", elem_id="score")
    status = gr.Markdown("", elem_id="mem-status")
    plot = gr.Image(label="Score vs ordinary samples", type="pil", format="png", interactive=False, elem_id="mem-plot")
    with gr.Accordion("Calibrate a detector on ordinary prompts (for this page only)", open=False):
        gr.Markdown(
            "The detector calibrated here scores this page's images (verdicts and inline scores); other visitors keep "
            "the app's. Download it to keep it: `python app.py --detector FILE` serves it to everyone."
        )
        prompts = gr.Textbox(label="Ordinary prompts (one per line)", lines=3, value=_default_prompt(app))
        with gr.Row():
            samples = gr.Slider(4, 256, value=32, step=1, label="Samples")
            fpr = gr.Slider(0.01, 0.5, value=0.05, step=0.01, label="False-positive rate")
            steps = gr.Slider(1, H.LIMITS.max_steps, value=20, step=1, label="Steps")
            guidance = gr.Slider(0, H.LIMITS.max_guidance, value=5.0, step=0.5, label="Guidance")
        calibrate = gr.Button("Calibrate", elem_id="calibrate")
        detector_file = gr.File(label="Calibrated detector (.safetensors)", interactive=False, elem_id="detector-file")
    go.click(guarded(2)(app.memorization), [last, which, own_detector], [plot, status], api_name="memorization")
    calibrate.click(
        guarded(3)(app.calibrate),
        [prompts, samples, fpr, steps, guidance],
        [own_detector, detector_file, detector_info],
        api_name="calibrate",
    )
    demo.load(guarded(1)(app.detector_status), own_detector, detector_info, api_name=False)


def _default_prompt(app: SteerApp) -> str:
    """An attribute-open prompt: the model picks the colour, the direction sets it."""
    return "a sneaker" if "demo" in H.model_name(app.pipe) else "a photo of a dog"


def _default_direction(choices: list[str]) -> str:
    """The calibrated bundled direction toward blue where it ships, else the first bundled one."""
    for name in ("to_blue", *choices[1:2]):
        if name in choices:
            return name
    return choices[0]


def _default_learn(app: SteerApp) -> tuple[str, str]:
    if "demo" in H.model_name(app.pipe):  # X vs X left open: the contrast the calibrated default learns best
        return (
            "a blue sneaker\na blue dress\na blue bag\na blue coat",
            "a sneaker\na dress\na bag\na coat",
        )
    return "a photo of a dog in the snow", "a photo of a dog"


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from steer.assets import default_model
    from steer.cli.arguments import add_lora_argument

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
    add_lora_argument(parser)
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=H.LIMITS.max_upload_bytes / 2**20,
        help="largest file a user may upload, in MiB (default %(default)g); larger uploads are refused",
    )
    args = parser.parse_args(argv)
    if not 0 < args.max_upload_mb <= 1024:  # NaN fails too
        parser.error(f"--max-upload-mb must be in (0, 1024], got {args.max_upload_mb:g}")
    return args


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
    """``demo.launch(**kwargs)`` with the patient reachability check and the upload size cap of `build_app`."""
    from gradio import networking

    networking.url_ok = patient_url_ok
    kwargs.setdefault("max_file_size", getattr(demo, "max_upload_bytes", H.LIMITS.max_upload_bytes))
    return demo.launch(**kwargs)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from steer.cli.loading import load_pipeline
    from steer.detect.detector import read_detector_file
    from steer.errors import DetectorFileError

    if args.detector is not None:  # missing or damaged: one line now, not an error on the Memorization tab later
        try:
            read_detector_file(Path(args.detector).expanduser())
        except DetectorFileError as err:
            raise SystemExit(f"app.py: error: --detector: {err}") from None
    try:
        pipe = load_pipeline(args.model, device=args.device, loras=args.lora)  # a LoRA file: recorded in every recipe
    except (OSError, ValueError) as err:  # a model that cannot load, a LoRA of another model: one line, no traceback
        raise SystemExit(f"app.py: error: {err}") from None
    demo = build_app(pipe, device=args.device, detector=args.detector, max_upload_bytes=int(args.max_upload_mb * 2**20))
    launch(demo, server_name=args.host, server_port=args.port, share=args.share, show_error=True)


if __name__ == "__main__":
    main()
