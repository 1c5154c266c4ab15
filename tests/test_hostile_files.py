"""Hostile direction and detector files: every one is refused with one line naming the file and the problem.

Each file is forged with a *correct* content digest (`steer.files.write_checked`), so what is tested is the schema
validation behind it, through the Python API, ``steer inspect`` and ``steer generate`` (directions) or ``steer detect``
and ``pipe(..., detect_memorization=path)`` (detectors). Before these checks, most of them ended in an uncaught
AttributeError / TypeError / KeyError / RecursionError, or (NaN thresholds, 2-D calibration tensors) were accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steer import DetectorFileError, MemorizationDetector, SteeringFileError, SteeringVector
from steer.cli.main import main
from steer.files import tensor_digest, write_checked
from steer.testing import assert_one_line_error
from steer.vectors import unet_fingerprint

LAYERS = ("up_blocks.0.resnets.0", "up_blocks.0.resnets.1")


def _header(path: Path, key: str) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[key])


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _raw_file(path: Path, tensors: dict[str, torch.Tensor], key: str, text: str) -> Path:
    """A file whose header JSON is ``text`` verbatim (for JSON that Python's json.dumps cannot produce)."""
    save_file(tensors, str(path), metadata={key: text})
    return path




# ----------------------------------------------------------------------------------------------------------------------
# Directions
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_direction(tiny_pipe, tmp_path_factory) -> Path:
    gen = torch.Generator().manual_seed(0)
    dirs = {name: torch.randn(64, generator=gen) for name in LAYERS}
    meta = {
        "name": "good",
        "method": "mean_diff",
        "source": "images",
        "timestep": 10,
        "activation_norm": {name: 5.0 for name in LAYERS},
        "model": unet_fingerprint(tiny_pipe.unet, LAYERS),
        "recommended": {"window": [0.0, 1.0], "scale": 1.0, "mode": "add", "normalize": False, "layers": list(LAYERS)},
    }
    return SteeringVector(dirs, meta).save(tmp_path_factory.mktemp("good") / "good.safetensors")


def _set(*keys: str, value: Any) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        target = header
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return edit


NAN, INF = float("nan"), float("inf")

# (case id, edit of the header dict, expected words of the error)
DIRECTION_HEADER_CASES: list[tuple[str, Callable[[dict], None], str]] = [
    ("metadata-is-a-list", _set("metadata", value=[1, 2]), "metadata must be an object, got a list"),
    ("metadata-is-a-string", _set("metadata", value="hello"), "metadata must be an object, got a string"),
    ("format-version-is-a-list", _set("format_version", value=[1]), "format_version must be an integer, got a list"),
    ("format-version-is-a-string", _set("format_version", value="1"), "format_version must be an integer"),
    ("format-version-is-a-bool", _set("format_version", value=True), "format_version must be an integer"),
    ("format-version-newer", _set("format_version", value=99), "newer steer"),
    ("format-is-a-list", _set("format", value=["steer.SteeringVector"]), "unknown format"),
    ("nested-40-levels", _set("metadata", "measured", value=_nested(40)), "nested more than"),
    ("model-fingerprint-is-a-string", _set("metadata", "model", value="sd15"), "metadata.model must be an object, got a string"),
    ("model-channels-is-a-list", _set("metadata", "model", "channels", value=[64]), "metadata.model.channels must be an object"),
    ("model-channels-negative", _set("metadata", "model", "channels", LAYERS[0], value=-3), "channels"),
    ("model-unet-class-is-an-int", _set("metadata", "model", "unet_class", value=7), "metadata.model.unet_class must be a string"),
    ("model-config-hash-is-a-dict", _set("metadata", "model", "config_hash", value={}), "config_hash must be a string"),
    ("name-is-an-object", _set("metadata", "name", value={"a": 1}), "metadata.name must be a string"),
    ("timestep-is-a-string", _set("metadata", "timestep", value="10"), "metadata.timestep must be an integer"),
    ("activation-norm-nan", _set("metadata", "activation_norm", LAYERS[0], value=NAN), "finite"),
    ("activation-norm-infinite", _set("metadata", "activation_norm", LAYERS[0], value=INF), "finite"),
    ("activation-norm-string", _set("metadata", "activation_norm", LAYERS[0], value="5"), "must be a number"),
    ("activation-norm-is-a-list", _set("metadata", "activation_norm", value=[5.0]), "activation_norm must be an object"),
    ("recommended-is-a-string", _set("metadata", "recommended", value="fast"), "recommended must be an object"),
    ("recommended-window-reversed", _set("metadata", "recommended", "window", value=[0.9, 0.1]), "start < end"),
    ("recommended-window-nan", _set("metadata", "recommended", "window", value=[NAN, 1.0]), "finite"),
    ("recommended-window-three", _set("metadata", "recommended", "window", value=[0, 0.5, 1]), "[start, end]"),
    ("recommended-removal-window-reversed", _set("metadata", "recommended", "removal_window", value=[1.0, 0.0]), "removal_window must satisfy start < end"),
    ("recommended-scale-huge", _set("metadata", "recommended", "scale", value=1e30), "recommended.scale must be between"),
    ("recommended-scale-string", _set("metadata", "recommended", "scale", value="1"), "recommended.scale must be a number"),
    ("recommended-mode-unknown", _set("metadata", "recommended", "mode", value="sideways"), "recommended.mode must be one of"),
    ("recommended-branch-list", _set("metadata", "recommended", "branch", value=["cond"]), "recommended.branch must be a string"),
    ("recommended-normalize-string", _set("metadata", "recommended", "normalize", value="yes"), "true or false"),
    ("recommended-layers-int", _set("metadata", "recommended", "layers", value=3), "recommended.layers must be a non-empty list"),
    ("recommended-layers-control-chars", _set("metadata", "recommended", "layers", value=["up\x1b[31m"]), "not a layer name"),
    ("recommended-scales-nan", _set("metadata", "recommended", "scales", value=[0.4, NAN]), "finite"),
    ("components-is-a-string", _set("metadata", "components", value="a+b"), "metadata.components must be a list"),
    ("reference-level-is-a-list", _set("metadata", "reference_level", value=[0.1]), "metadata.reference_level must be an object"),
    ("reference-level-strings", _set("metadata", "reference_level", value={LAYERS[0]: ["0.1"]}), "must be a number"),
    ("reference-level-nan", _set("metadata", "reference_level", value={LAYERS[0]: [0.1, NAN]}), "finite"),
    ("reference-level-out-of-range", _set("metadata", "reference_level", value={LAYERS[0]: [3.0]}), "between"),
    ("reference-level-huge", _set("metadata", "reference_level", value={LAYERS[0]: [0.0] * 5000}), "at most 4096"),
    ("fixed-tokens-negative", _set("metadata", "fixed_tokens", value={LAYERS[0]: -1}), "between 0 and 4096"),
    ("fixed-tokens-string", _set("metadata", "fixed_tokens", value={LAYERS[0]: "1"}), "must be an integer"),
    ("fixed-tokens-bool", _set("metadata", "fixed_tokens", value={LAYERS[0]: True}), "must be an integer"),
    ("fixed-tokens-list", _set("metadata", "fixed_tokens", value=[1]), "metadata.fixed_tokens must be an object"),
]


def _forge_direction(good: Path, tmp_path: Path, edit=None, tensors=None, name="bad.safetensors") -> Path:
    header = _header(good, "steer")
    header.pop("digest")
    if edit is not None:
        edit(header)
    return write_checked(tmp_path / name, tensors if tensors is not None else _tensors(good), "steer", header)


def _direction_refused_everywhere(path: Path, tmp_path: Path, capsys, *needles: str) -> None:
    with pytest.raises(SteeringFileError) as info:
        SteeringVector.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for needle in needles:
        assert needle in message, message
    assert_one_line_error(main(["inspect", str(path)]), capsys.readouterr().err, "steer inspect: error:", *needles)
    out = tmp_path / "gen-out"
    rc = main(["generate", "--prompt", "x", "--direction", str(path), "--steps", "2", "--out", str(out)])
    assert_one_line_error(rc, capsys.readouterr().err, "steer generate: error:", *needles)
    assert not out.exists() or not any(out.iterdir()), "a refused direction must write nothing"


@pytest.mark.parametrize(("case", "edit", "needle"), DIRECTION_HEADER_CASES, ids=[c[0] for c in DIRECTION_HEADER_CASES])
def test_direction_header_schema(good_direction, tmp_path, capsys, case, edit, needle):
    path = _forge_direction(good_direction, tmp_path, edit)
    _direction_refused_everywhere(path, tmp_path, capsys, needle)


TENSOR_CASES: list[tuple[str, dict[str, torch.Tensor], str]] = [
    ("glob-layer-name", {"up_blocks.*": torch.ones(64)}, "not a module path"),
    ("glob-question-mark", {"up_blocks.0.resnets.?": torch.ones(64)}, "not a module path"),
    ("layer-name-newline", {"up_blocks.0\nresnets.0": torch.ones(64)}, "not a module path"),
    ("layer-name-spaces", {"up blocks": torch.ones(64)}, "not a module path"),
    ("three-d-tensor", {LAYERS[0]: torch.ones(2, 2, 64)}, "tensor, expected (channels,) or (steps, channels) float"),
    ("too-many-step-buckets", {LAYERS[0]: torch.ones(5000, 64)}, "tensor, expected (channels,) or (steps, channels) float"),
    ("too-many-channels", {LAYERS[0]: torch.ones(70_000)}, "tensor, expected (channels,) or (steps, channels) float"),
    ("too-many-channels-per-step", {LAYERS[0]: torch.ones(2, 70_000)}, "tensor, expected (channels,) or (steps, channels) float"),
    ("int-tensor", {LAYERS[0]: torch.ones(64, dtype=torch.int32)}, "tensor, expected (channels,) or (steps, channels) float"),
    ("empty-tensor", {LAYERS[0]: torch.ones(0)}, "tensor, expected (channels,) or (steps, channels) float"),
    ("3e38-entries", {LAYERS[0]: torch.full((64,), 3e38)}, "above the limit"),
    ("infinite-entry", {LAYERS[0]: torch.tensor([1.0, INF])}, "NaN or infinite"),
    ("nan-entry", {LAYERS[0]: torch.tensor([NAN, 1.0])}, "NaN or infinite"),
    ("no-layers", {}, "contains no layers"),
]


@pytest.mark.parametrize(("case", "tensors", "needle"), TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_direction_tensor_names_and_values(good_direction, tmp_path, capsys, case, tensors, needle):
    path = _forge_direction(good_direction, tmp_path, tensors=tensors)
    _direction_refused_everywhere(path, tmp_path, capsys, needle)


RAW_CASES = [
    # json.loads of deep nesting raises RecursionError (it was uncaught)
    ("nested-100000-levels", lambda d: f'{{"format": "steer.SteeringVector", "format_version": 1, "digest": "{d}", '
     f'"metadata": {"[" * 100_000}{"]" * 100_000}}}', "nested too deeply"),
    ("header-is-a-list", lambda d: "[1, 2, 3]", "unknown format"),
    ("header-is-a-string", lambda d: '"steer.SteeringVector"', "unknown format"),
    ("5000-digit-integer", lambda d: f'{{"format": "steer.SteeringVector", "format_version": {"9" * 5000}}}', "not valid JSON"),
    ("not-json", lambda d: "{'format': 1", "not valid JSON"),
]


@pytest.mark.parametrize(("case", "text", "needle"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_direction_raw_header(good_direction, tmp_path, capsys, case, text, needle):
    tensors = _tensors(good_direction)
    path = _raw_file(tmp_path / "raw.safetensors", tensors, "steer", text(tensor_digest(tensors)))
    _direction_refused_everywhere(path, tmp_path, capsys, needle)


def test_oversized_header_is_refused_before_parsing(good_direction, tmp_path, capsys, monkeypatch):
    import steer.files

    monkeypatch.setattr(steer.files, "MAX_HEADER_CHARS", 1000)
    path = _forge_direction(good_direction, tmp_path, _set("metadata", "measured", value="x" * 2000))
    _direction_refused_everywhere(path, tmp_path, capsys, "characters long (limit 1000)")


def test_the_good_direction_and_the_bundled_ones_still_load(good_direction, capsys):
    from steer.assets import bundled_directions

    assert SteeringVector.load(good_direction).name == "good"
    bundled = bundled_directions()
    assert bundled, "the bundled directions are missing"
    for path in bundled.values():
        assert SteeringVector.load(path).layers
    assert main(["inspect", str(good_direction)]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "good"


def test_save_refuses_what_load_would_refuse_and_writes_nothing(good_direction, tmp_path):
    v = SteeringVector.load(good_direction)
    deep = SteeringVector(v.directions, {**v.metadata, "measured": _nested(2000)})  # json.dumps would recurse
    with pytest.raises(ValueError, match="nested more than"):
        deep.save(tmp_path / "deep.safetensors")
    bad = SteeringVector(v.directions, {**v.metadata, "recommended": {"scale": 1e30}})
    with pytest.raises(ValueError, match="recommended.scale"):
        bad.save(tmp_path / "bad.safetensors")
    huge = SteeringVector({LAYERS[0]: torch.full((64,), 3e38)}, {})
    with pytest.raises(ValueError, match="above the limit"):
        huge.save(tmp_path / "huge.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_real_model_widths_save_and_load(tmp_path):
    """Every real model's sites are wider than 1,000 channels (SD1.5 1280, SDXL 2048, SD3/Flux 4096): the step-bucket
    limit was applied to a (channels,) tensor's only axis, so any such direction failed to save after its learning."""
    for shape in [(1280,), (2048,), (4096,), (4, 4096), (1000, 8)]:
        v = SteeringVector({"encoder_hidden_states": torch.randn(shape)}, {"name": "wide"})
        back = SteeringVector.load(v.save(tmp_path / f"wide_{len(shape)}_{shape[-1]}.safetensors"))
        assert torch.equal(back.directions["encoder_hidden_states"], v.directions["encoder_hidden_states"])
    with pytest.raises(ValueError, match=r"\(1001, 8\) torch.float32 tensor"):
        SteeringVector({"encoder_hidden_states": torch.randn(1001, 8)}, {}).save(tmp_path / "steps.safetensors")


def test_unloadable_names_are_one_line(tmp_path):
    """A name too long for the system raised a raw OSError (Errno 36) echoing it; a filename that is no string raised
    an AttributeError from inside the Hub lookup."""
    for name in ("x" * 300, str(tmp_path / ("y" * 300)), str(tmp_path / "nul\0name")):
        with pytest.raises(SteeringFileError, match="^direction file not found: "):
            SteeringVector.load(name)
    with pytest.raises(SteeringFileError, match="filename must be a string, got int"):
        SteeringVector.from_pretrained("user/dir", filename=3)
    # "blue" beside a folder blue/ (steer generate --out blue) is still blue.safetensors, as it always loaded
    v = SteeringVector({"encoder_hidden_states": torch.ones(8)}, {"name": "blue"})
    v.save(tmp_path / "blue")
    (tmp_path / "blue").mkdir()
    assert SteeringVector.load(tmp_path / "blue").name == "blue"


def test_long_chains_of_combinations_stay_loadable(good_direction, tmp_path):
    v = SteeringVector.load(good_direction)
    total = v
    for _ in range(60):  # each combination used to nest the metadata two levels deeper
        total = total + v
    loaded = SteeringVector.load(total.save(tmp_path / "sum.safetensors"))
    assert len(loaded.metadata["components"]) == 61
    torch.testing.assert_close(loaded.directions[LAYERS[0]], 61 * v.directions[LAYERS[0]])


# ----------------------------------------------------------------------------------------------------------------------
# Detectors
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_detector(tiny_pipe, tmp_path_factory) -> Path:
    det = MemorizationDetector(tiny_pipe)
    det.calibration = {"reencode": torch.rand(16), "inline": torch.rand(16), "early": torch.rand(16)}
    det.threshold, det.inline_threshold, det.early_threshold, det.fpr = 0.9, 0.8, 0.7, 0.05
    return det.save(tmp_path_factory.mktemp("det") / "det.safetensors")


DETECTOR_HEADER_CASES: list[tuple[str, Callable[[dict], None], str]] = [
    ("config-is-a-list", _set("config", value=["max"]), "config must be an object, got a list"),
    ("config-missing", _set("config", value=None), "config must be an object"),
    ("config-lacks-layers", lambda h: h["config"].pop("layers"), "lack ['layers']"),
    ("layers-are-ints", _set("config", "layers", value=[3, 4]), "config.layers[0] must be a layer name"),
    ("layers-is-an-int", _set("config", "layers", value=3), "config.layers must be a non-empty list"),
    ("layers-empty", _set("config", "layers", value=[]), "config.layers must be a non-empty list"),
    ("layers-glob", _set("config", "layers", value=["up_blocks.*"]), "globs are not allowed"),
    ("inline-layers-int", _set("config", "inline_layers", value=5), "config.inline_layers must be"),
    ("pooling-is-a-list", _set("config", "pooling", value=["max"]), "config.pooling must be a string"),
    ("pooling-null", _set("config", "pooling", value=None), "config.pooling must be a string"),
    ("statistic-unknown", _set("config", "statistic", value="median"), "config.statistic must be one of"),
    ("inline-score-unknown", _set("config", "inline_score", value="magic"), "config.inline_score must be one of"),
    ("timestep-string", _set("config", "timestep", value="10"), "config.timestep must be an integer"),
    ("seed-negative", _set("config", "seed", value=-1), "config.seed must be between"),
    ("early-steps-zero", _set("config", "early_steps", value=0), "config.early_steps must be between"),
    ("inline-window-reversed", _set("config", "inline_window", value=[1.0, 0.0]), "start < end"),
    ("threshold-nan", _set("thresholds", "reencode", value=NAN), "thresholds.reencode must be a finite number"),
    ("threshold-infinite", _set("thresholds", "inline", value=INF), "thresholds.inline must be a finite number"),
    ("threshold-string", _set("thresholds", "early", value="0.5"), "thresholds.early must be a number"),
    ("thresholds-is-a-list", _set("thresholds", value=[0.5]), "thresholds must be an object"),
    ("thresholds-unknown-key", _set("thresholds", "bogus", value=1.0), "unknown key"),
    ("fpr-above-one", _set("fpr", value=5), "fpr must be between"),
    ("fpr-nan", _set("fpr", value=NAN), "fpr must be a finite number"),
    ("sampling-is-a-list", _set("sampling", value=[25]), "sampling must be an object"),
    ("sampling-steps-string", _set("sampling", value={"num_inference_steps": "25"}), "sampling.num_inference_steps must be an integer"),
    ("sampling-guidance-nan", _set("sampling", value={"guidance_scale": NAN}), "sampling.guidance_scale must be a finite number"),
    ("sampling-sampler-int", _set("sampling", value={"sampler": 3}), "sampling.sampler must be a string"),
    ("model-is-a-string", _set("model", value="sd15"), "model must be an object, got a string"),
    ("model-channels-keys-glob", _set("model", "channels", value={"up_blocks.*": 64}), "not a module path"),
    ("format-version-list", _set("format_version", value=[1]), "format_version must be an integer"),
    ("nested-40-levels", _set("extra", value=_nested(40)), "nested more than"),
]


def _forge_detector(good: Path, tmp_path: Path, edit=None, tensors=None) -> Path:
    header = _header(good, "steer_detector")
    header.pop("digest")
    if edit is not None:
        edit(header)
    return write_checked(tmp_path / "bad-det.safetensors", tensors if tensors is not None else _tensors(good), "steer_detector", header)


def _detector_refused(path: Path, pipe, needle: str) -> None:
    with pytest.raises(DetectorFileError) as info:
        MemorizationDetector.load(path, pipe)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and needle in message, message


@pytest.mark.parametrize(("case", "edit", "needle"), DETECTOR_HEADER_CASES, ids=[c[0] for c in DETECTOR_HEADER_CASES])
def test_detector_header_schema(tiny_pipe, good_detector, tmp_path, case, edit, needle):
    _detector_refused(_forge_detector(good_detector, tmp_path, edit), tiny_pipe, needle)


DETECTOR_TENSOR_CASES = [
    ("calibration-2d", {"calibration.reencode": torch.rand(4, 4)}, "expected 1-D float"),
    ("calibration-nan", {"calibration.inline": torch.tensor([0.1, NAN])}, "NaN or infinite"),
    ("calibration-int", {"calibration.early": torch.ones(4, dtype=torch.int64)}, "expected 1-D float"),
    ("calibration-empty", {"calibration.early": torch.ones(0)}, "expected 1-D float"),
    ("unexpected-tensor", {"weights": torch.ones(4)}, "unexpected tensor"),
    ("unknown-kind", {"calibration.other": torch.ones(4)}, "unexpected tensor"),
]


@pytest.mark.parametrize(("case", "tensors", "needle"), DETECTOR_TENSOR_CASES, ids=[c[0] for c in DETECTOR_TENSOR_CASES])
def test_detector_calibration_tensors(tiny_pipe, good_detector, tmp_path, case, tensors, needle):
    _detector_refused(_forge_detector(good_detector, tmp_path, tensors=tensors), tiny_pipe, needle)


def test_detector_deep_raw_header(tiny_pipe, good_detector, tmp_path):
    tensors = _tensors(good_detector)
    text = f'{{"format": "steer.MemorizationDetector", "format_version": 1, "config": {"[" * 100_000}{"]" * 100_000}}}'
    _detector_refused(_raw_file(tmp_path / "deep.safetensors", tensors, "steer_detector", text), tiny_pipe, "nested too deeply")


def test_good_detector_loads_and_hostile_ones_fail_in_the_pipeline_and_the_cli(tiny_pipe, good_detector, tmp_path, capsys):
    det = MemorizationDetector.load(good_detector, tiny_pipe)
    assert det.threshold == pytest.approx(0.9) and det.calibration["reencode"].shape == (16,)
    bad = _forge_detector(good_detector, tmp_path, _set("thresholds", "reencode", value=NAN))
    with pytest.raises(DetectorFileError, match="finite"):
        tiny_pipe("x", num_inference_steps=2, detect_memorization=bad)
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    images = tmp_path / "imgs"
    images.mkdir()
    tiny_pipe("x", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0].save(images / "a.png")
    capsys.readouterr()
    report = tmp_path / "report.jsonl"
    bad_layers = _forge_detector(good_detector, tmp_path, _set("config", "layers", value=[3]))
    rc = main(["detect", "--model", str(model), "--device", "cpu", "--images", str(images), "--detector", str(bad_layers),
               "--out", str(report)])
    assert_one_line_error(rc, capsys.readouterr().err, "steer detect: error:", "config.layers[0]")
    assert not report.exists()


def test_bundled_detectors_still_load():
    from steer.assets import ASSETS
    from steer.detect.detector import read_detector_file

    files = sorted((ASSETS / "detectors").glob("*.safetensors"))
    assert files
    for path in files:
        header, tensors = read_detector_file(path)
        assert header["config"]["layers"] and tensors


def test_glob_layer_name_used_to_raise_keyerror_in_steering(tiny_pipe, good_direction, tmp_path):
    """The original report: a file whose layer is ``up_blocks.*`` ended in ``KeyError: 'up_blocks.*'`` mid-call."""
    path = _forge_direction(good_direction, tmp_path, tensors={"up_blocks.*": torch.ones(64)})
    with pytest.raises(SteeringFileError, match="globs are not allowed"):
        tiny_pipe("x", num_inference_steps=2, steering=str(path))

