"""The Gradio demo's in-app calibration of a memorization detector is the calibrating page's own (a gr.State): its
verdicts and inline scores use it, every other visitor keeps the app's detector (hunt33 finding 1: "Calibrate" replaced
the detector for everyone, and other pages kept showing the old one's description)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from app_server import (  # noqa: F401 (the *_fixture: pytest finds them here by their fixture names)
    client_fixture,
    direction_file_fixture,
    generate_args,
    pipe_fixture,
    server_fixture,
)

from steer.app import helpers as H
from steer.app.handlers import APP_DETECTOR, SteerApp


def app_detector_file(pipe, folder: Path) -> Path:
    """A re-encode detector calibrated on 16 made-up ordinary scores (threshold 0.9): the app's own."""
    from steer.detect.detector import MemorizationDetector

    detector = MemorizationDetector(pipe)
    detector.calibration = {"reencode": torch.linspace(0.1, 1.0, 16)}
    detector.threshold, detector.fpr = 0.9, 0.1
    return detector.save(folder / "app-detector.safetensors")


def plain_run(steer_app: SteerApp, own: dict | None) -> dict:
    """The ``last`` state of a Generate click without a direction (both rows scored inline where they can be)."""
    args = generate_args(H.NONE_CHOICE, steps=2)
    direction = args.pop("direction")
    *_, last, status = steer_app.generate(direction, {}, None, own_detector=own, **args)
    assert "steer-status-ok" in status, status
    return last


def test_a_pages_calibration_is_its_own_and_the_apps_detector_stays(pipe, tmp_path):
    steer_app = SteerApp(pipe, H.DirectionCatalog({}), workdir=tmp_path / "work", detector=app_detector_file(pipe, tmp_path))
    before = plain_run(steer_app, None)  # another page's image (this app's detector reads no inline score)
    own, file, info = steer_app.calibrate("a photo of a dog", 4, 0.5, 2, 5.0, progress=None)
    assert "calibrated on 4 ordinary samples" in info and "Calibrated on this page" in info, info
    from steer.detect.detector import MemorizationDetector

    assert MemorizationDetector.load(file, pipe).threshold == pytest.approx(own["detector"].threshold)  # the download
    # the app's detector is unchanged: other pages' status, verdicts and inline scores use it
    assert steer_app.detector().threshold == pytest.approx(0.9)
    assert "calibrated on 16 ordinary samples" in steer_app.detector_status() and "this page" not in steer_app.detector_status()
    _, verdict = steer_app.memorization(before, "original")
    assert "threshold 0.9" in verdict and "16 ordinary samples" in verdict, verdict
    # the calibrating page: its verdicts use its own detector, re-encoded for an image scored inline by another
    _, verdict = steer_app.memorization(before, "original", own)
    assert "4 ordinary samples" in verdict and "inline" not in verdict, verdict
    mine = plain_run(steer_app, own)
    assert mine["inline"]["detector"] == own["tag"] != APP_DETECTOR
    _, verdict = steer_app.memorization(mine, "original", own)
    assert "inline CFG distance" in verdict and "4 ordinary samples" in verdict, verdict
    _, verdict = steer_app.memorization(mine, "original")  # the app's detector did not read that inline score
    assert "inline" not in verdict and "16 ordinary samples" in verdict, verdict
    again, _, _ = steer_app.calibrate("a photo of a cat", 4, 0.5, 2, 5.0, progress=None)
    assert again["tag"] != own["tag"]  # a second calibration does not take over the first one's inline scores


def test_calibrating_in_one_session_leaves_the_others_detector_alone(server, client):
    from gradio_client import Client

    other = Client(server, verbose=False)
    other.predict(**generate_args("constructed"), api_name="/generate")
    detector_file, info = client.predict("a photo of a dog", 4, 0.5, 2, 5.0, api_name="/calibrate")
    assert "calibrated on 4 ordinary samples" in info and Path(detector_file).name == "detector.safetensors"  # a download
    _, status = other.predict("original", api_name="/memorization")  # no detector for the app: still none for others
    assert "no calibrated detector" in status, status
    assert "Calibrated on this page" in info, info
    newcomer = Client(server, verbose=False)
    newcomer.predict(**generate_args("constructed"), api_name="/generate")
    _, status = newcomer.predict("original", api_name="/memorization")
    assert "no calibrated detector" in status, status
    client.predict(**generate_args("constructed"), api_name="/generate")  # the calibrating session: its own detector
    _, status = client.predict("original", api_name="/memorization")
    assert "inline CFG distance" in status and "4 ordinary samples" in status, status
