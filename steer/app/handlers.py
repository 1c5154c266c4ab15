"""The Gradio demo's event handlers (`SteerApp`) and status boxes; `app.py` builds the UI around them.

Every handler the UI wires is wrapped in `guarded`: any exception becomes a one-line message (a toast and an
error box), never a traceback or gradio's bare "Error". The logic without gradio lives in `steer.app.helpers`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from steer.app import helpers as H
from steer.sliders import stated_note
from steer.take_away import suggested_take_aways, take_away_hint

log = logging.getLogger("steer.app")
PROGRESS = gr.Progress()  # default of handler arguments: gradio injects a per-request tracker
AUTO_CHOICE = "(auto: what the prompt states)"  # the take-away picker's entry for steer.take_away.suggested_take_aways
APP_DETECTOR = 0  # the tag of inline scores read with the app's own detector (a page's calibration: `SteerApp.calibrate`)

OK_STYLE = "border-left: 4px solid #2a2; padding-left: .6em"
ERROR_STYLE = "border-left: 4px solid #d33; padding-left: .6em; color: #a11"
KEEP_RUNS = 6 * 3600  # a run's files in the work folder are kept this long (as gradio keeps its cache: app.py)
SWEEP_EVERY = 30 * 60  # seconds between sweeps of the work folder


def take_away_choices(catalog, session: dict | None) -> list[str]:
    """The take-away picker's entries: none, auto, then the direction picker's directions."""
    none, *directions = catalog.choices(session)
    return [none, AUTO_CHOICE, *directions]


# ----------------------------------------------------------------------------------------------------------------------
# Status boxes and error handling
# ----------------------------------------------------------------------------------------------------------------------
def ok_box(text: str) -> str:
    """A success message (Markdown inside a div the tests and the CSS can find). Anything in ``text`` that comes
    from a file or a user must already be escaped (`H.md_text`, `H.md_code`)."""
    return f'<div class="steer-status-ok" style="{OK_STYLE}">\n\n{text}\n\n</div>'


def error_box(text: str) -> str:
    """An error message: what went wrong and how to fix it, never a traceback. ``text`` is plain text (it often
    quotes a file name or a direction's name): it is shown escaped, on one line, cut to a few hundred characters."""
    message = H.md_text(text, H.LIMITS.max_message_chars)
    return f'<div class="steer-status-error" style="{ERROR_STYLE}">\n\n**Error:** {message}\n\n</div>'


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
                gr.Warning(H.html_text(message, H.LIMITS.max_message_chars))  # toasts render HTML
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
    """Handlers bound to one pipeline; per-user data (uploads, learned directions, last result, a calibrated detector)
    lives in gr.State."""

    def __init__(
        self,
        pipe,
        catalog: H.DirectionCatalog | None = None,
        workdir: str | Path | None = None,
        detector: str | Path | None = None,
        upload_root: str | Path | None = None,
    ):
        self.pipe = pipe
        self._upload_root = upload_root
        self.detector_path = detector
        self._detector: Any = None
        self._detector_loaded = False
        self._detector_lock = threading.Lock()
        self._calibrations = itertools.count(1)  # tags of the pages' own detectors: inline scores name the one that made them
        self.catalog = catalog if catalog is not None else H.DirectionCatalog.from_assets(H.model_name(pipe), pipe)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="steer-app-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.layers = H.layer_names(pipe)
        self.size = H.native_size(pipe)
        self._swept_at = 0.0

    def _sweep(self) -> None:
        """At most every `SWEEP_EVERY` seconds: remove this app's run folders older than `KEEP_RUNS` seconds."""
        now = time.time()
        if now - self._swept_at >= SWEEP_EVERY:
            self._swept_at = now
            H.sweep_runs(self.workdir, KEEP_RUNS, now)

    def _run_folder(self) -> Path:
        self._sweep()
        return H.run_folder(self.workdir)

    # ----- directions ------------------------------------------------------------------------------------------
    @property
    def upload_root(self) -> Path:
        """gradio's upload folder: uploaded files the app has read are removed from it (`H.discard_upload`)."""
        from gradio.utils import get_upload_folder

        return Path(self._upload_root or get_upload_folder())

    def _dropdown(self, session: dict, value: str) -> dict:
        return gr.update(choices=self.catalog.choices(session), value=value)

    def upload_direction(self, file: Any, session: dict | None, strict: bool):
        """Load an uploaded ``.safetensors`` direction into this user's list and select it."""
        if not file:
            raise H.UserError("no file uploaded")
        path = getattr(file, "name", file)
        try:
            vector = H.load_direction_file(path, self.pipe, strict=H.check_flag(strict, "strict"))
        finally:  # read into memory or refused: either way the uploaded copy is not kept (nor served back)
            H.discard_upload(path, self.upload_root)
        session = dict(session or {})
        name = H.unique_name(f"{vector.name} (uploaded)", set(self.catalog.choices(session)))
        session[name] = vector
        return session, self._dropdown(session, name), ok_box(f"Loaded {H.direction_summary(vector)}{H.direction_advice(vector)}")

    def describe_direction(self, name: str, session: dict | None, index: Any):
        """Summary of the picked direction, the layer slider position and range (`H.slider_sites`), and the direction's
        recommended settings (strength, window start, window end, CFG branch, mode, normalize): a setting it does not
        record goes back to the built-in one, as a pipeline call that leaves it unset takes it (the previous
        direction's stayed: green_to_blue ran with to_blue's split branch); the strength, and every control when no
        direction is picked, stay as they are."""
        vector = self.catalog.get(name, session)
        summary = H.direction_summary(vector) if vector is not None else "No direction: both images are the original."
        values = H.recommended_settings(vector)
        if vector is not None:
            built_in = H.SteeringConfig()
            fallback = (None, *built_in.window, built_in.branch, built_in.mode, built_in.normalize)
            values = tuple(fallback[i] if v is None else v for i, v in enumerate(values))
        updates = [gr.update(value=v) if v is not None else gr.skip() for v in values]
        if any(v is not None for v in H.recommended_settings(vector)):
            summary += " · recommended settings applied"
        if vector is not None and H.sides_differ(vector):  # the window sliders show the + side's
            start, end = H.recorded_window(vector.opposite)
            summary += f" · its − side runs in its own window {start:g}–{end:g} while the window is left at the + side's"
        # the slider's range: the cross-attentions that read a direction on the prompt's tokens, else the layers; a
        # position past it goes back to 0 (the direction's own layers or route), not to the last reader
        sites = len(H.slider_sites(self.pipe, vector))
        try:
            position = H.check_int(index, "the layer slider", 0, sites)
        except H.UserError:
            position = 0
        slider = gr.update(maximum=sites, value=position)
        return (H.describe_layer(self.pipe, vector, position), slider, *updates, summary)

    def take_away_choices(self, session: dict | None, current: str | None) -> dict:
        """The take-away picker offers auto and the same directions as the direction picker (kept as it is when still
        there)."""
        choices = take_away_choices(self.catalog, session)
        return gr.update(choices=choices, value=current if current in choices else H.NONE_CHOICE)

    def _away(self, take_away: str | None, vector, prompt: str, session: dict | None):
        """The direction to take away: the one picked, or with `AUTO_CHOICE` the first the prompt states against
        ``vector`` among the picker's (`_found`; None where it states nothing)."""
        if take_away != AUTO_CHOICE:
            return self.catalog.get(take_away, session)
        if vector is None:
            raise H.UserError("pick a direction to add: the take-away removes what the prompt says against it")
        found = self._found(vector, prompt, session)
        return self.catalog.get(found[0][0], session) if found else None

    def layer_choices(self, name: str, session: dict | None, current: Any):
        """'Several layers' offers the layers the picked direction can be steered at (`H.layer_choices`: a trajectory
        direction's own cross-attention outputs); those picked that are still offered stay picked."""
        try:
            vector = self.catalog.get(name, session)
        except Exception:  # noqa: BLE001 - the direction's summary says why; the entries stay as they are
            return gr.skip()
        choices = H.layer_choices(self.pipe, vector)
        kept = [n for n in current if n in choices] if isinstance(current, list) else []
        return gr.update(choices=choices, value=kept)

    def describe_layer(self, name: str, session: dict | None, index: Any) -> str:
        try:
            vector = self.catalog.get(name, session)
        except Exception as err:  # noqa: BLE001 - a label, never an error
            return f"⚠ {H.md_text(H.readable(err), H.LIMITS.max_message_chars)}"
        return H.describe_layer(self.pipe, vector, index)

    # ----- generation ------------------------------------------------------------------------------------------
    # ``inputs``: the Generate tab's settings by widget name (`H.GenerateSettings.from_inputs`; app.py wires them);
    # ``take_away``: the name of a direction whose excess in the prompt is removed while ``direction`` is added
    def generate(
        self,
        direction: str,
        session: dict | None,
        progress: gr.Progress = PROGRESS,
        take_away: str | None = None,
        edit_image: str | None = None,
        edit_strength: float = 0.8,
        edit_mask: str | None = None,
        edit_invert: bool = False,
        own_detector: dict | None = None,
        **inputs: Any,
    ):
        """Original and steered image from the same seed (one batched call, per-row scales [0, s]); with
        ``edit_image``, both edit it (the model's image-to-image pipeline at ``edit_strength``; with ``edit_mask``, its
        inpainting pipeline repaints where the mask is white; with ``edit_invert``, replayed from its inversion, so the
        original is the picture itself). Inline memorization scores are read with the page's own detector
        (``own_detector``: `calibrate`'s) if it has one, else with the app's."""
        settings = H.GenerateSettings.from_inputs(self.pipe, edit_image=edit_image, edit_strength=edit_strength, edit_mask=edit_mask,
                                                edit_invert=H.check_flag(edit_invert, "invert"), **inputs)
        vector = self.catalog.get(direction, session)
        away = self._away(take_away, vector, settings.prompt, session)
        detector, version = self._detector_or_none(own_detector)
        original, steered, scores = H.run_pair(self.pipe, vector, settings, progress_fn(progress), detector, away)
        recipe = settings.recipe(self.pipe, vector, settings.strength, away, folder=self.workdir)
        self._sweep()
        png = H.save_with_recipe(steered, recipe, self.workdir, "steered")
        last = {"original": original, "steered": steered, "prompt": settings.prompt, "recipe": recipe}
        if scores is not None:  # inline memorization scores, read during this very sampling; a steered row's is not
            # calibrated (the threshold was set on unsteered samples; steering moves it): that image is re-encoded
            plain = vector is None or float(settings.strength) == 0.0
            last["inline"] = {"original": scores[0], "steered": scores[1] if plain else None, "detector": version,
                              "note": H.sampling_note(detector, self.pipe, settings)}
        readers = H.selected_readers(self.pipe, vector, settings.layer_index)
        route = recipe["steering"].get("readers") if vector is not None else None  # a text direction's own route
        route_words = ", ".join(H.ROUTE_WORDS.get(str(r), str(r)).split(" (")[0].rstrip("'") for r in route[:4]) if isinstance(route, list) else ""
        where = (
            f" read by {H.md_code(readers[0])} only" if readers
            else f" on the prompt's tokens, read by {H.md_text(route_words)}"
            if route_words and H.reads_text(vector)
            else " on the prompt's tokens" if vector is not None and H.reads_text(vector)
            else f" at layer {H.md_code(recipe['steering']['layers'][0])}"
            if vector is not None and len(recipe["steering"]["layers"]) == 1
            else ""
        )
        removed = (
            f", taking away **{H.md_text(away.name)}**{' (auto)' if take_away == AUTO_CHOICE else ''} (amount "
            f"{H.take_away_amount(settings.strength):g})"
            if away is not None
            else ", nothing taken away (auto: the prompt states nothing against the edit)" if take_away == AUTO_CHOICE else ""
        )
        note = (
            f"Steered with **{H.md_text(vector.name)}** × {settings.strength:g}{where}{removed}."
            if vector is not None
            else "No direction picked: both images are the original."
        )
        note += self._stated_note(vector, away, settings, [settings.strength], session)
        note += H.darkening_note(original, steered)
        return H.upscale_for_display(original), H.upscale_for_display(steered), str(png), last, ok_box(note)

    def _stated_note(self, vector, away, settings, scales: list[float], session: dict | None = None) -> str:
        """What the prompt states against the edit, as a sentence: how a slider treats a prompt that states one of its
        ends (`steer.sliders.stated_note`), or, for a one-sided direction added to a prompt that states what it
        replaces, the direction to pick under Take away (`steer.take_away.suggested_take_aways`, among the picker's);
        "" otherwise (and with a take-away or removal, where the slider is not split)."""
        if away is not None or settings.config.negative != "subtract" or vector is None:
            return ""
        said = stated_note(vector, settings.prompt, scales)
        if said:
            return f" {H.md_text(said, 400)}."
        if settings.edit_image is not None or not any(s > 0 for s in scales):
            return ""
        suggestion = self._suggestion(vector, settings.prompt, session)
        return f" {suggestion}" if suggestion else ""

    def _found(self, vector, prompt: str, session: dict | None) -> list[tuple[str, list[str]]]:
        """`steer.take_away.suggested_take_aways` among the picker's directions."""
        candidates = {}
        for name in self.catalog.choices(session):
            try:
                candidates[name] = self.catalog.get(name, session)
            except H.UserError:  # a bundled file that cannot be read is simply no candidate
                continue
        return suggested_take_aways(vector, prompt, {k: v for k, v in candidates.items() if v is not None})

    def _suggestion(self, vector, prompt: str, session: dict | None) -> str:
        """The take-away to pick for ``vector`` on ``prompt`` among the picker's directions, as a Markdown sentence; ""
        when the prompt states nothing against the edit."""
        found = self._found(vector, prompt, session)
        if not found:
            return ""
        return (f"{H.md_text(take_away_hint(prompt, vector, found), 400)}. Pick **{H.md_text(found[0][0], 80)}** "
                "under *Take away* (and *Fit*) to take it away as the edit is added.")

    def take_away_hint(self, name: str, session: dict | None, take_away: str | None, prompt: str) -> str:
        """Shown under the Take away picker before generating: the direction to take away where the prompt states what
        the picked one-sided direction replaces (none picked yet), else ""; never an error (a label)."""
        if take_away not in (None, "", H.NONE_CHOICE, AUTO_CHOICE) or not isinstance(prompt, str) or len(prompt) > H.LIMITS.max_prompt_chars:
            return ""
        try:
            vector = self.catalog.get(name, session)
            if vector is None:
                return ""
            if take_away != AUTO_CHOICE:
                return self._suggestion(vector, prompt, session)
            found = self._found(vector, prompt, session)
            if not found:
                return "Auto: the prompt states nothing against the edit; nothing is taken away."
            stated = ", ".join(f"'{H.md_text(p, 60)}'" for p in found[0][1])
            return f"Auto: taking away **{H.md_text(found[0][0], 80)}** (the prompt states {stated})."
        except Exception:  # noqa: BLE001 - a hint, never an error
            return ""

    def strip(
        self,
        direction: str,
        session: dict | None,
        count: Any,
        progress: gr.Progress = PROGRESS,
        take_away: str | None = None,
        edit_image: str | None = None,
        edit_strength: float = 0.8,
        edit_mask: str | None = None,
        edit_invert: bool = False,
        **inputs: Any,
    ):
        """A strength strip: ``count`` scales from -|s| to +|s| (from 0 with a take-away) in one batched call (editing
        ``edit_image``, inside ``edit_mask``, when given)."""
        settings = H.GenerateSettings.from_inputs(self.pipe, edit_image=edit_image, edit_strength=edit_strength, edit_mask=edit_mask,
                                                edit_invert=H.check_flag(edit_invert, "invert"), **inputs)
        vector = self.catalog.get(direction, session)
        if vector is None:
            raise H.UserError("pick a direction first: the strip sweeps its strength")
        away = self._away(take_away, vector, settings.prompt, session)
        scales = H.strip_scales(settings.strength, count, signed=away is None)
        images = H.run_rows(self.pipe, vector, settings, scales, progress_fn(progress), away)
        gallery = [(H.upscale_for_display(im, 128), f"{s:+.3g}") for im, s in zip(images, scales, strict=True)]
        removed = f", taking away **{H.md_text(away.name)}**" if away is not None else ""
        said = self._stated_note(vector, away, settings, scales, session)
        return gallery, ok_box(f"Strength strip of **{H.md_text(vector.name)}**{removed}: {', '.join(f'{s:+.3g}' for s in scales)}.{said}")

    def fit_take_away(
        self, direction: str, session: dict | None, take_away: str, guidance: Any, strict: bool, sampler: str = "",
        negative_prompt: str = "", prompt: str = "", progress: gr.Progress = PROGRESS,
    ):
        """Set the strength and window sliders to what `steer.take_away.fit_take_away` finds for this pair (with the
        sampler and negative prompt picked for generation; with auto, the take-away ``prompt`` states)."""
        vector = self.catalog.get(direction, session)
        away = self._away(take_away, vector, prompt if isinstance(prompt, str) else "", session)
        if away is None and take_away == AUTO_CHOICE:
            raise H.UserError("auto takes away what the prompt states against the edit, and this prompt states nothing: nothing to fit")
        pipe = H.sampling_pipe(self.pipe, H.check_sampler_choice(self.pipe, sampler))
        fit = H.fit_take_away(pipe, vector, away, guidance, H.check_flag(strict, "strict"), progress_fn(progress), negative_prompt)
        strength = round(fit.strength / 0.05) * 0.05  # the slider's step
        note = (
            f"Fitted: **{H.md_text(vector.name)}** × {strength:g} taking away **{H.md_text(away.name)}**, window "
            f"{fit.window[0]:g}-{fit.window[1]:g} (from the model alone: {H.md_text(fit.prompts[0][0])} -> "
            f"{H.md_text(fit.prompts[0][1])}, relative distance {fit.distance:.2f}{fit.window_note()}). Strength and window are set."
        )
        if not fit.converged:
            note += " **Note:** no strength brought the samples closer; this is a guess."
        elif fit.advice():
            note += f" **Note:** {H.md_text(fit.advice().removeprefix('take-away fit: '))}."
        return strength, fit.window[0], fit.window[1], ok_box(note)

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
        window: str = "mode default",
        readers: str = "auto",
        sampler: str = "",
        negative_prompt: str = "",
        two_sided: bool = False,
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
            window=window,
            readers=readers,
            sampler=sampler,
            negative_prompt=negative_prompt,
            two_sided=H.check_flag(two_sided, "two-sided"),
        )
        progress(0.0, desc="starting")
        vector = H.learn(self.pipe, settings, progress_fn(progress))
        session = dict(session or {})
        label = H.unique_name(f"{H.clean_text(vector.name)} (learned)", set(self.catalog.choices(session)))
        session[label] = vector
        path = H.save_direction(vector, self._run_folder())
        message = ok_box(f"Learned {H.direction_summary(vector)}. It is selected in the Generate tab.{H.window_choice_note(vector)}{H.route_choice_note(vector)}{H.direction_advice(vector)}")
        return session, self._dropdown(session, label), str(path), message

    # ----- memorization ----------------------------------------------------------------------------------------
    def detector(self) -> Any:
        """The model's calibrated detector (loaded once; None when there is none yet)."""
        with self._detector_lock:
            if not self._detector_loaded:
                self._detector = H.load_detector(self.pipe, self.detector_path)
                self._detector_loaded = True
            return self._detector

    def _detector_or_none(self, own: dict | None = None) -> tuple[Any, Any]:
        """(detector or None, its tag) for inline scores during generation: the page's own (``own``: `calibrate`'s),
        else the app's; a missing or unusable file never blocks generating."""
        if own:
            return own["detector"], own["tag"]
        try:
            return self.detector(), APP_DETECTOR  # loads the file once
        except Exception as err:  # noqa: BLE001 - the Memorization tab shows why; generating goes on without it
            log.warning("no inline memorization scores: %s", H.readable(err))
            return None, -1

    def detector_status(self, own: dict | None = None) -> str:
        """Markdown: which detector the panel uses (the page's own calibration, else the app's), or how to get one."""
        if own:
            return ok_box(f"{detector_summary(own['detector'])} Calibrated on this page: only this page's scores use it "
                          "(other visitors keep the app's detector); download it below to keep it.")
        try:
            detector = self.detector()
        except H.UserError as err:
            return error_box(str(err))
        if detector is None:
            where = ", ".join(H.md_code(p, 200) for p in H.detector_candidates(self.pipe))
            return (
                "No calibrated detector found for this model (looked for "
                f"{where}). Calibrate one below on ordinary prompts, or start the app with `--detector FILE`."
            )
        return ok_box(detector_summary(detector))

    def memorization(self, last: dict | None, which: str, own: dict | None = None):
        """Score the last generated image with the page's own calibrated detector (``own``), else the app's."""
        if not last:
            raise H.UserError("generate an image first (Generate tab); the score is for the current image")
        detector, tag = (own["detector"], own["tag"]) if own else (self.detector(), APP_DETECTOR)
        if detector is None:
            raise H.UserError("no calibrated detector for this model yet: calibrate one in the box below")
        key = "steered" if which == "steered" else "original"
        inline = last.get("inline") or {}
        if inline.get("detector") == tag and inline.get(key) is not None:  # scored while generated, by this detector
            view = H.inline_view(detector, inline[key], inline.get("note"))
        else:
            view = H.score_image(detector, last[key], last["prompt"])
        return view.plot, ok_box(view.markdown)

    def calibrate(
        self, prompts: str, samples: Any, fpr: Any, steps: Any, guidance: Any, progress: gr.Progress = PROGRESS
    ):
        """Calibrate a detector on ordinary prompts: it becomes this page's own (a gr.State: its memorization verdicts
        and inline scores use it; other visitors keep the app's detector), offered as a download."""
        lines = H.parse_prompt_lines(prompts, "calibration")
        detector = H.calibrate_detector(self.pipe, lines, samples, fpr, steps, guidance, progress_fn(progress))
        path = detector.save(self._run_folder() / "detector.safetensors")
        own = {"detector": detector, "tag": f"calibration {next(self._calibrations)}"}
        return own, str(path), self.detector_status(own)


def detector_summary(detector) -> str:
    """Markdown: what ``detector`` was calibrated on, and its threshold."""
    source = "reencode" if detector.threshold is not None else "inline"
    threshold = detector.threshold if detector.threshold is not None else detector.inline_threshold
    if threshold is None:
        return "Detector loaded but not calibrated: scores are shown without a verdict."
    kind = "" if source == "reencode" else " (inline score)"
    return f"Detector calibrated on {len(detector.calibration.get(source, []))} ordinary samples; threshold {threshold:.4g}{kind}."
