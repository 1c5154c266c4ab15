"""Directions on the Hugging Face Hub (steer/hub.py): downloads go through the real `hf_hub_download` code path and
the real Hugging Face cache layout, offline (the Hub is unreachable here; nothing mocks its HTTP API)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard, constants
from huggingface_hub.utils import _http as hf_http

from steer import hub
from steer.errors import SteeringFileError, UnsafePathError
from steer.hub import DEFAULT_FILENAME, parse_hub_spec, resolve_direction
from steer.vectors import SteeringVector, unet_fingerprint

LAYERS = ["up_blocks.0.resnets.0", "up_blocks.1.resnets.1"]
OFFLINE_MISSING = "direction 'user/nothing' is not in the Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE=1)"


@pytest.fixture(scope="module")
def fingerprint(tiny_pipe):
    return {**unet_fingerprint(tiny_pipe.unet, LAYERS), "name_or_path": "someone/tiny-sd"}


def make_vector(fingerprint, seed: int = 0, name: str = "to blue") -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    dirs = {n: torch.randn(c, generator=g) for n, c in fingerprint["channels"].items()}
    meta = {
        "name": name, "method": "mean_diff", "preset": "text", "source": "prompts-text", "model": fingerprint,
        "positive": {"prompts": ["a blue sneaker", "a blue bag"]}, "negative": {"prompts": ["a red sneaker"]},
        "activation_norm": {n: 2.5 for n in dirs},
        "recommended": {"layers": LAYERS, "window": [0.2, 0.9], "branch": "split", "mode": "token", "preserve_norm": True, "normalize": False, "scale": 0.75},
        "calibration": {"strength": 0.31},
    }
    return SteeringVector(dirs, meta)


def assert_same(a: SteeringVector, b: SteeringVector) -> None:
    assert a.layers == b.layers
    for n in a.layers:
        assert torch.equal(a.directions[n].float(), b.directions[n].float())
    assert a.metadata == b.metadata


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: both the environment and huggingface_hub's constants (read at import)."""
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


def lay_snapshot(cache: Path, repo_id: str, files: dict[str, Path | bytes], refs: tuple[str, ...] = ("main",)) -> str:
    """Put ``files`` into ``cache`` as huggingface_hub lays a downloaded repo out: blobs/<sha256>,
    snapshots/<commit>/<name> -> ../../blobs/<sha256> (relative symlinks), refs/<ref> holding the commit hash."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    contents = {name: data if isinstance(data, bytes) else Path(data).read_bytes() for name, data in files.items()}
    commit = hashlib.sha1(repr(sorted((n, hashlib.sha256(d).hexdigest()) for n, d in contents.items())).encode()).hexdigest()
    for name, data in contents.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return commit


# ----------------------------------------------------------------------------------------------------------------------
def test_specs():
    assert parse_hub_spec("user/repo") == ("user/repo", None, None)
    assert parse_hub_spec("user/repo@v2") == ("user/repo", "v2", None)
    assert parse_hub_spec("user/repo:sub/blue.safetensors") == ("user/repo", None, "sub/blue.safetensors")
    assert parse_hub_spec("org/name.v1@refs/pr/3:blue.safetensors") == ("org/name.v1", "refs/pr/3", "blue.safetensors")
    for local in ("blue.safetensors", "runs/blue.safetensors", "a/b/c", "/abs/path", "./user/repo", "user/re--po", "user/repo@../x", "user/"):
        assert parse_hub_spec(local) is None, local
    assert not hub.is_hub_spec(Path("user/repo"))


def test_local_folder_and_file(tmp_path, fingerprint):
    v = make_vector(fingerprint)
    saved = v.save_pretrained(tmp_path / "dir")
    assert saved == tmp_path / "dir" / DEFAULT_FILENAME
    assert_same(SteeringVector.from_pretrained(tmp_path / "dir"), v)
    assert_same(SteeringVector.from_pretrained(str(saved)), v)
    # a folder: filename=, else the default name, else its only .safetensors, else a one-line list of candidates
    other = tmp_path / "two"
    make_vector(fingerprint, 1, "red").save(other / "red.safetensors")
    assert SteeringVector.from_pretrained(other).name == "red"
    v.save(other / "blue.safetensors")
    with pytest.raises(SteeringFileError) as err:
        SteeringVector.from_pretrained(other)
    assert "blue.safetensors, red.safetensors" in one_line(err) and "filename=" in str(err.value)
    assert SteeringVector.from_pretrained(other, filename="blue.safetensors").name == "to blue"
    with pytest.raises(SteeringFileError, match="no file 'green.safetensors'"):
        SteeringVector.from_pretrained(other, filename="green.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SteeringFileError, match="holds no .safetensors"):
        SteeringVector.from_pretrained(tmp_path / "empty")
    with pytest.raises(SteeringFileError, match="is a file"):
        resolve_direction(str(saved), filename="x.safetensors")


def test_cached_repo_loads_through_hf_hub_download(tmp_path, cache, fingerprint, monkeypatch, tiny_pipe):
    v = make_vector(fingerprint)
    folder = tmp_path / "upload"
    v.save_pretrained(folder, repo_id="user/blue")
    commit = lay_snapshot(cache, "user/blue", {DEFAULT_FILENAME: folder / DEFAULT_FILENAME, "README.md": folder / "README.md"})
    calls = []
    real = huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(k) or real(*a, **k))
    path = resolve_direction("user/blue")
    assert calls and calls[-1]["repo_id"] == "user/blue" and calls[-1]["filename"] == DEFAULT_FILENAME
    assert path == cache / "models--user--blue" / "snapshots" / commit / DEFAULT_FILENAME
    loaded = SteeringVector.from_pretrained("user/blue")
    assert_same(loaded, v)
    loaded.check_compatible(tiny_pipe.unet)  # the fingerprint travelled intact
    # a local path of the same shape wins over the Hub
    monkeypatch.chdir(tmp_path)
    make_vector(fingerprint, 5, "local").save_pretrained(tmp_path / "user" / "blue")
    assert SteeringVector.from_pretrained("user/blue").name == "local"


def test_revisions_and_files(tmp_path, cache, fingerprint):
    a, b = make_vector(fingerprint, 1, "first"), make_vector(fingerprint, 2, "second")
    commit_a = lay_snapshot(cache, "user/dir", {DEFAULT_FILENAME: a.save(tmp_path / "a.safetensors")}, refs=("main",))
    commit_b = lay_snapshot(cache, "user/dir", {DEFAULT_FILENAME: b.save(tmp_path / "b.safetensors")}, refs=("v2",))
    assert commit_a != commit_b
    assert_same(SteeringVector.from_pretrained("user/dir"), a)
    assert_same(SteeringVector.from_pretrained("user/dir@v2"), b)
    assert_same(SteeringVector.from_pretrained("user/dir", revision="v2"), b)
    assert_same(SteeringVector.from_pretrained(f"user/dir@{commit_a}"), a)
    assert_same(SteeringVector.from_pretrained("user/dir", revision=commit_b), b)
    with pytest.raises(SteeringFileError) as err:
        SteeringVector.from_pretrained("user/dir@v2", revision="main")
    assert "names revision 'v2' but revision='main'" in one_line(err)
    with pytest.raises(SteeringFileError) as err:
        SteeringVector.from_pretrained("user/dir@v3")
    assert "revision 'v3' is not in the Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE=1)" in one_line(err)
    assert "cached revisions: main, v2" in str(err.value)

    # no default file: a named one, the only one, or a one-line list
    lay_snapshot(cache, "user/many", {"red.safetensors": a.save(tmp_path / "r.safetensors"), "blue.safetensors": b.save(tmp_path / "bl.safetensors")})
    assert SteeringVector.from_pretrained("user/many:blue.safetensors").name == "second"
    assert SteeringVector.from_pretrained("user/many", filename="red.safetensors").name == "first"
    with pytest.raises(SteeringFileError) as err:
        SteeringVector.from_pretrained("user/many")
    assert "several .safetensors files (blue.safetensors, red.safetensors)" in one_line(err) and "user/many:FILE" in str(err.value)
    with pytest.raises(SteeringFileError) as err:
        SteeringVector.from_pretrained("user/many:green.safetensors")
    assert "'green.safetensors' at revision 'main' is not in the Hugging Face cache" in one_line(err)
    lay_snapshot(cache, "user/one", {"only.safetensors": a.save(tmp_path / "o.safetensors")})
    assert SteeringVector.from_pretrained("user/one").name == "first"
    with pytest.raises(SteeringFileError, match="not a .safetensors file"):
        resolve_direction("user/one:weights.bin")


def test_missing_repo_is_one_line(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (lambda: resolve_direction("user/nothing"), lambda: SteeringVector.from_pretrained("user/nothing")):
        with pytest.raises(SteeringFileError) as err:
            call()
        assert one_line(err).startswith(OFFLINE_MISSING)
    with pytest.raises(SteeringFileError) as err:
        resolve_direction("user/nothing", local_files_only=True)
    assert "not in the Hugging Face cache and local_files_only=True" in one_line(err)
    with pytest.raises(SteeringFileError) as err:
        resolve_direction("runs/missing.safetensors")
    assert one_line(err).startswith("direction file not found: runs/missing.safetensors")


def test_hostile_files_in_the_cache_are_refused(tmp_path, cache, fingerprint, monkeypatch):
    good = make_vector(fingerprint).save(tmp_path / "good.safetensors")
    data = bytearray(good.read_bytes())
    data[-5] ^= 0xFF  # a tensor byte: the recorded digest no longer matches
    lay_snapshot(cache, "evil/edited", {DEFAULT_FILENAME: bytes(data)})
    with pytest.raises(SteeringFileError) as err:
        SteeringVector.from_pretrained("evil/edited")
    assert "do not match the recorded digest" in one_line(err)

    class Boom:
        def __reduce__(self):
            return (Path(tmp_path / "pwned").touch, ())

    lay_snapshot(cache, "evil/pickle", {DEFAULT_FILENAME: pickle.dumps({"w": Boom()})})
    with pytest.raises(SteeringFileError) as err:
        SteeringVector.from_pretrained("evil/pickle")
    assert "not a readable safetensors file" in one_line(err)
    assert not (tmp_path / "pwned").exists()

    lay_snapshot(cache, "evil/big", {DEFAULT_FILENAME: good.read_bytes()})
    monkeypatch.setattr(hub, "MAX_HUB_FILE_BYTES", 1000)
    with pytest.raises(SteeringFileError) as err:
        SteeringVector.from_pretrained("evil/big")
    assert "over the 1000 byte limit" in one_line(err)


def test_save_pretrained_writes_the_card(tmp_path, fingerprint):
    v = make_vector(fingerprint)
    v.save_pretrained(tmp_path / "out", repo_id="alice/to-blue")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", DEFAULT_FILENAME]
    text = (tmp_path / "out" / "README.md").read_text()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == "steer"
    assert {"steering-vector", "diffusers"} <= set(card.data.tags)
    assert card.data.base_model == "someone/tiny-sd"
    for needle in (fingerprint["config_hash"], fingerprint["weights_hash"], fingerprint["unet_class"], *LAYERS,
                   "`steering_scale=0.75`", "(0.2, 0.9)", "`mean_diff`", "`text`", "`split`", "a blue sneaker"):
        assert needle in text, needle
    assert 'SteeringVector.from_pretrained("alice/to-blue")' in text
    assert "steer generate --model \"someone/tiny-sd\" --direction alice/to-blue " in text and "--scale 0.75" in text
    # the card is regenerated on the next save; a non-default file name is part of the example spec
    v.save_pretrained(tmp_path / "out", filename="blue.safetensors", repo_id="alice/to-blue")
    assert "--direction alice/to-blue:blue.safetensors" in (tmp_path / "out" / "README.md").read_text()
    # hostile metadata cannot break out of the card's lines or code spans
    odd = SteeringVector(v.directions, {**v.metadata, "name": "x`\n# injected\n```"})
    odd.save_pretrained(tmp_path / "odd")
    assert "\n# injected" not in (tmp_path / "odd" / "README.md").read_text()
    with pytest.raises(ValueError, match="plain file name"):
        v.save_pretrained(tmp_path / "out", filename="../escape.safetensors")
    # a two-sided direction (a slider): the card says what a negative strength applies; the file keeps both sides
    opposite = SteeringVector(v.directions, {**v.metadata, "positive": {"prompts": ["a red sneaker"]}, "negative": {"prompts": ["a sneaker"]}})
    SteeringVector(v.directions, v.metadata, opposite).save_pretrained(tmp_path / "slider")
    assert ("two-sided (a slider)**: a negative strength applies its opposite at `|scale|`, learned from `a red sneaker` against "
            "`a sneaker`") in (tmp_path / "slider" / "README.md").read_text()
    assert SteeringVector.load(tmp_path / "slider" / DEFAULT_FILENAME).opposite is not None
    assert "turned to the other" not in (tmp_path / "slider" / "README.md").read_text()  # no flips recorded
    flip = {"words": ["red"], "strength": 1.2, "window": [0.0, 1.0]}
    SteeringVector(v.directions, {**v.metadata, "flip": {**flip, "words": ["blue"]}},
                   SteeringVector(opposite.directions, {**opposite.metadata, "flip": flip})).save_pretrained(tmp_path / "flips")
    assert "a prompt that states one end is turned to the other" in (tmp_path / "flips" / "README.md").read_text()
    assert "two-sided" not in text


def test_save_pretrained_never_writes_through_a_symlink(tmp_path, fingerprint):
    v = make_vector(fingerprint)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in (DEFAULT_FILENAME, "README.md"):
        out = tmp_path / f"out-{name}"
        out.mkdir()
        (out / name).symlink_to(victim)
        with pytest.raises(UnsafePathError) as err:
            v.save_pretrained(out)
        assert "is a symlink" in one_line(err)
        assert victim.read_text() == "keep me" and (out / name).is_symlink()
        assert sorted(p.name for p in out.iterdir()) == [name]  # nothing else left behind
    # a hand-written card is not overwritten
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    with pytest.raises(SteeringFileError, match="not generated by steer"):
        v.save_pretrained(mine)
    assert (mine / "README.md").read_text() == "my notes"


def test_save_pretrained_refuses_a_folder_at_the_file_and_names_that_would_break_the_card(tmp_path, fingerprint):
    """A folder where the direction file goes raised IsADirectoryError naming the hidden staging folder; a repo id
    like ``x; rm -rf ~`` was pasted unquoted into the card's bash example; a filename with a backtick broke it."""
    v = make_vector(fingerprint)
    (tmp_path / "out" / DEFAULT_FILENAME).mkdir(parents=True)
    with pytest.raises(UnsafePathError) as err:
        v.save_pretrained(tmp_path / "out")
    assert one_line(err).endswith(f"{DEFAULT_FILENAME} is a folder; save_pretrained does not write over it") and ".steer-save" not in one_line(err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [DEFAULT_FILENAME]  # no staging left behind
    with pytest.raises(SteeringFileError, match="a Hub repo id is owner/name"):
        v.save_pretrained(tmp_path / "card", repo_id="x; rm -rf ~")
    with pytest.raises(ValueError, match="filename must be a plain file name"):
        v.save_pretrained(tmp_path / "card", filename="a`id`.safetensors")
    assert not (tmp_path / "card").exists()
    v.save_pretrained(tmp_path / "card", repo_id="me/blue", filename="my blue.safetensors")
    assert "--direction 'me/blue:my blue.safetensors'" in (tmp_path / "card" / "README.md").read_text()  # quoted for bash


def test_push_to_hub_uploads_the_save_pretrained_folder(tmp_path, cache, fingerprint, monkeypatch):
    v = make_vector(fingerprint)
    seen: dict = {}

    def create_repo(self, repo_id, **kwargs):
        seen["create"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        seen["upload"] = (repo_id, kwargs, {p.name: p.read_bytes() for p in folder.iterdir()})
        seen["loaded"] = SteeringVector.from_pretrained(folder)
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    with pytest.raises(SteeringFileError) as err:  # offline: refused before anything is called
        v.push_to_hub("alice/to-blue")
    assert "the Hub is offline (HF_HUB_OFFLINE=1)" in one_line(err) and not seen
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert v.push_to_hub("alice/to-blue", private=True, create_pr=True) == "commit-info"
    assert seen["create"] == ("alice/to-blue", {"private": True, "exist_ok": True, "token": None})
    repo_id, kwargs, files = seen["upload"]
    assert repo_id == "alice/to-blue" and kwargs["create_pr"] is True and "to blue" in kwargs["commit_message"]
    assert sorted(files) == ["README.md", DEFAULT_FILENAME]
    assert_same(seen["loaded"], v)
    v.save_pretrained(tmp_path / "local", repo_id="alice/to-blue")  # byte-identical to what save_pretrained writes
    assert files["README.md"] == (tmp_path / "local" / "README.md").read_bytes()
    with pytest.raises(SteeringFileError, match="owner/name"):
        v.push_to_hub("alice/to-blue@v2")


def test_unreachable_hub_falls_back_to_the_cache(tmp_path, cache, fingerprint, monkeypatch):
    """Online, but the Hub's address refuses connections (a closed local port): the real HTTP attempt fails, the
    cached snapshot is used, and a direction that is not cached gets one line naming the unreachable Hub."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connections are refused
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    waits: list[float] = []  # huggingface_hub's retry backoff (~23 s a file) is recorded instead of slept
    monkeypatch.setattr(hf_http, "time", SimpleNamespace(sleep=waits.append))
    v = make_vector(fingerprint)
    lay_snapshot(cache, "user/blue", {DEFAULT_FILENAME: v.save(tmp_path / "v.safetensors")})
    lay_snapshot(cache, "user/other", {"other.safetensors": v.save(tmp_path / "o.safetensors")})
    assert_same(SteeringVector.from_pretrained("user/blue"), v)
    assert_same(SteeringVector.from_pretrained("user/other"), v)  # the cached snapshot's only .safetensors
    with pytest.raises(SteeringFileError) as err:
        resolve_direction("user/nothing")
    assert "is not in the Hugging Face cache and the Hub cannot be reached (" in one_line(err)
    assert waits  # the real client tried the Hub (and retried) before falling back


# ----------------------------------------------------------------------------------------------------------------------
# The command line and batch jobs take a repo id (through the same cache, offline)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub_model_dir(tmp_path_factory, tiny_pipe):
    path = tmp_path_factory.mktemp("tiny-model-hub")
    tiny_pipe.save_pretrained(path)
    return path


def test_generate_and_batch_take_a_hub_repo_id(cache, tmp_path, fingerprint, hub_model_dir, capsys, monkeypatch):
    from steer.cli.main import main
    from steer.recipe import read_recipe

    vector = make_vector(fingerprint, seed=3, name="hub blue")
    vector.save_pretrained(tmp_path / "upload")
    lay_snapshot(cache, "alice/to-blue", {"steering_vector.safetensors": tmp_path / "upload" / "steering_vector.safetensors"})

    out = tmp_path / "gen"
    code = main(["generate", "--model", str(hub_model_dir), "--prompt", "a sneaker", "--direction", "alice/to-blue",
                 "--scale", "2", "--steps", "2", "--seed", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    recipe = read_recipe(out / "seed1_scale+2.png")
    assert recipe["directions"][0]["hash"] == vector.digest()

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a bag", "seeds": [0], "num_inference_steps": 2,
                                "directions": [{"path": "alice/to-blue", "scale": 1.5}]}) + "\n"
                    + json.dumps({"prompt": "a bag", "seeds": [0], "num_inference_steps": 2,
                                  "directions": [{"path": "alice/not-cached", "scale": 1.0}]}) + "\n")
    code = main(["batch", str(jobs), "--out", str(tmp_path / "batch"), "--model", str(hub_model_dir), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1  # the second job fails alone, with the cache's one-line reason
    assert "alice/not-cached" in err and "offline" in err.lower()
    manifest = [json.loads(line) for line in (tmp_path / "batch" / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 1 and manifest[0]["line"] == 1 and manifest[0]["recipe"]["directions"][0]["hash"] == vector.digest()

    code = main(["generate", "--model", str(hub_model_dir), "--prompt", "a sneaker", "--direction", "alice/not-cached",
                 "--steps", "2", "--out", str(tmp_path / "gen2")])
    line = capsys.readouterr().err.strip()
    assert code == 2 and len(line.splitlines()) == 1 and "alice/not-cached" in line and "offline" in line.lower()
    # a direction saved as "alice/to-blue" (written to alice/to-blue.safetensors, where `load` finds it) is that local
    # file for every entry point, not the Hub repo of the same name (online it steered with someone else's)
    monkeypatch.chdir(tmp_path)
    local = make_vector(fingerprint, seed=4, name="local blue")
    local.save("alice/to-blue")
    assert SteeringVector.from_pretrained("alice/to-blue").digest() == local.digest() != vector.digest()
    code = main(["generate", "--model", str(hub_model_dir), "--prompt", "a sneaker", "--direction", "alice/to-blue",
                 "--scale", "2", "--steps", "2", "--seed", "1", "--out", str(tmp_path / "gen3")])
    assert code == 0, capsys.readouterr().err
    assert read_recipe(tmp_path / "gen3" / "seed1_scale+2.png")["directions"][0]["hash"] == local.digest()
    jobs.write_text(json.dumps({"prompt": "a bag", "seeds": [0], "num_inference_steps": 2,
                                "directions": [{"path": "alice/to-blue", "scale": 1.5}]}) + "\n")
    assert main(["batch", str(jobs), "--out", str(tmp_path / "batch3"), "--model", str(hub_model_dir), "--device", "cpu",
                 "--no-progress"]) == 0
    manifest = [json.loads(line) for line in (tmp_path / "batch3" / "manifest.jsonl").read_text().splitlines()]
    assert manifest[0]["recipe"]["directions"][0]["hash"] == local.digest()


def test_a_hub_model_when_the_hub_cannot_be_reached_says_so(monkeypatch):
    """Network down (not offline mode): diffusers said the repo "does not appear to have a file named
    model_index.json", blaming the repo; the chain holds huggingface_hub's LocalEntryNotFoundError and the reason."""
    import socket

    from huggingface_hub.errors import LocalEntryNotFoundError

    from steer.cli.loading import _unloadable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        try:
            try:
                raise socket.gaierror(-2, "Name or service not known")
            except OSError as dns:
                raise LocalEntryNotFoundError("cannot find the requested files in the local cache") from dns
        except LocalEntryNotFoundError as missing:
            raise OSError("org/model does not appear to have a file named model_index.json.") from missing
    except OSError as err:
        message = str(_unloadable("org/model", err))
    assert message == ("cannot load model 'org/model': it is not in the Hugging Face cache and the Hub cannot be reached "
                       "([Errno -2] Name or service not known)")
    assert "does not appear to have" in str(_unloadable("org/model", OSError("org/model does not appear to have a file")))
