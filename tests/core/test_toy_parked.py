"""Checkpoints parked in the repository (toyworld.parked): a training continues from the parked copy
only when its work folder has none and the copy was written with the same settings."""

import json

import torch
from safetensors.torch import save_file

from toyworld import parked

SETTINGS = {"steps": 12000, "seed": 0}


def _checkpoint(path, settings, value=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"model.w": torch.full((3,), value)}, str(path), metadata={"settings": json.dumps(settings)})
    return path


def test_a_parked_checkpoint_and_its_gates_continue_a_run_with_the_same_settings(tmp_path):
    work = tmp_path / "run" / "refbase_ckpt.safetensors"
    _checkpoint(work, SETTINGS, 2.0)
    (work.parent / "gates.jsonl").write_text('{"step": 2000}\n')
    shelf = tmp_path / "checkpoints"
    parked.park(work, shelf)

    fresh = tmp_path / "elsewhere" / "run" / "refbase_ckpt.safetensors"
    assert parked.unpark(fresh, SETTINGS, shelf)
    assert fresh.read_bytes() == work.read_bytes()
    assert (fresh.parent / "gates.jsonl").read_text() == '{"step": 2000}\n'


def test_other_settings_or_an_existing_checkpoint_leave_the_work_folder_alone(tmp_path):
    shelf = tmp_path / "checkpoints"
    _checkpoint(shelf / "refbase_ckpt.safetensors", SETTINGS)
    smoke = tmp_path / "smoke" / "refbase_ckpt.safetensors"
    assert not parked.unpark(smoke, {**SETTINGS, "steps": 20}, shelf)
    assert not smoke.exists()

    own = _checkpoint(tmp_path / "own" / "refbase_ckpt.safetensors", SETTINGS, 5.0)
    before = own.read_bytes()
    assert not parked.unpark(own, SETTINGS, shelf)
    assert own.read_bytes() == before
    assert not parked.unpark(tmp_path / "x" / "base_ckpt.safetensors", SETTINGS, shelf)  # none parked


def test_drop_removes_the_checkpoint_and_its_gates(tmp_path):
    work = _checkpoint(tmp_path / "run" / "refbase_ckpt.safetensors", SETTINGS)
    (work.parent / "gates.jsonl").write_text("{}\n")
    shelf = tmp_path / "checkpoints"
    parked.park(work, shelf)
    assert len(list(shelf.iterdir())) == 2
    parked.drop("refbase_ckpt.safetensors", shelf)
    assert list(shelf.iterdir()) == []
