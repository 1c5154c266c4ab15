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
