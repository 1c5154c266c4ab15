"""`steer.files.atomic_write`, under every file steer writes (directions, detectors, recipe PNGs, lab checkpoints):
whole or nothing, never through a symlink, no temp file left behind."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from PIL import Image

from steer.errors import UnsafePathError
from steer.files import atomic_write, read_checked, write_checked
from steer.recipe import read_recipe, save_png


def test_a_symlinked_target_is_refused_and_its_file_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "out.safetensors").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        write_checked(tmp_path / "out.safetensors", {"x": torch.ones(2)}, "k", {"format": "f"})
    (tmp_path / "out.png").symlink_to(victim)
    with pytest.raises(UnsafePathError):
        save_png(Image.new("RGB", (4, 4)), tmp_path / "out.png", {"seed": 1})
    assert victim.read_text() == "keep"


def test_a_link_planted_at_the_old_predictable_temp_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    for name in ("d.safetensors", "img.png"):  # the names steer used before: .NAME.tmpPID
        (tmp_path / f".{name}.tmp{os.getpid()}").symlink_to(victim)
    path = write_checked(tmp_path / "d.safetensors", {"x": torch.arange(3.0)}, "k", {"format": "f", "version": 1})
    save_png(Image.new("RGB", (4, 4), "red"), tmp_path / "img.png", {"seed": 2})
    assert victim.read_text() == "keep"
    header, tensors = read_checked(path, "k", "f", 1, ValueError, "test")
    assert torch.equal(tensors["x"], torch.arange(3.0)) and read_recipe(tmp_path / "img.png") == {"seed": 2}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, boom)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_a_name_another_run_takes_meanwhile_is_never_replaced(tmp_path, monkeypatch):
    """Two ``steer generate`` runs into one ``--out`` chose their names, then replaced whatever was there by the time
    they wrote (14 of 300 images lost in a two-process race). Now a free name is taken only while still free: a clash
    moves the run's files to the next suffix, and the ones it wrote under the clashing name are removed again."""
    import steer.recipe as R

    real = R.save_png
    other = {"prompt": "someone else's"}

    def racing(image, path, recipe, replace=True):  # another run writes the sweep's name after the names were chosen
        if path.name == "seed0_sweep.png" and not path.exists():
            real(image, path, other)
        return real(image, path, recipe, replace=replace)

    monkeypatch.setattr(R, "save_png", racing)
    image = Image.new("RGB", (8, 8), "red")
    files = [(image, tmp_path / "seed0.png", {"row": 0}), (image, tmp_path / "seed0_sweep.png", {"sweep": 1})]
    paths = R.save_new_pngs(files)
    assert [p.name for p in paths] == ["seed0-2.png", "seed0_sweep-2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0-2.png", "seed0_sweep-2.png", "seed0_sweep.png"]
    assert R.recipe_in(tmp_path / "seed0_sweep.png") == other and R.recipe_in(paths[1]) == {"sweep": 1}
    # the same call made at the same time writes the same file: taken as written, no suffix
    monkeypatch.setattr(R, "save_png", lambda image, path, recipe, replace=True: (
        real(image, path, recipe) if not path.exists() else None, real(image, path, recipe, replace=replace))[1])
    twin = [(image, tmp_path / "twin.png", {"row": 5})]
    assert R.save_new_pngs(twin) == [tmp_path / "twin.png"]
    # a rerun replaces its own images under their names
    monkeypatch.setattr(R, "save_png", real)
    for _ in range(2):
        assert R.save_new_pngs(files[:1]) == [tmp_path / "seed0.png"]


def test_a_name_taken_between_choosing_and_writing_is_kept_and_links_are_not_needed(tmp_path, monkeypatch):
    """Another run's image written under a name after it was chosen (the name looked free, or held this run's own
    earlier image) was replaced; on a file system without hard links the no-clobber write fell back to a replace."""
    import errno

    import steer.files as F
    import steer.recipe as R

    image = Image.new("RGB", (8, 8), "blue")
    real_first = R.first_unused

    def then_another_run_writes(paths, recipes, start=1):
        n = real_first(paths, recipes, start)
        if n == 1:
            R.save_png(image, paths[0], {"run": "other"})
        return n

    monkeypatch.setattr(R, "first_unused", then_another_run_writes)
    paths = R.save_new_pngs([(image, tmp_path / "seed0.png", {"run": "mine"})])
    assert paths == [tmp_path / "seed0-2.png"] and R.recipe_in(tmp_path / "seed0.png") == {"run": "other"}
    monkeypatch.undo()

    def no_hard_links(*args, **kwargs):  # vfat, exFAT, some network mounts
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(F.os, "link", no_hard_links)
    (tmp_path / "taken.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        atomic_write(tmp_path / "taken.txt", lambda tmp: tmp.write_text("new"), replace=False)
    assert (tmp_path / "taken.txt").read_text() == "keep"
    atomic_write(tmp_path / "free.txt", lambda tmp: tmp.write_text("new"), replace=False)
    assert (tmp_path / "free.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
