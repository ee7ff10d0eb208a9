"""MUSAR_ExampleImage: the bundled pictures load exactly as Load Image loads them, from the pack's
own folder only (the user's input folder is neither needed nor touched), and any other name is
refused at validation with the list of valid names."""

import importlib
import os
import shutil
from pathlib import Path

import folder_paths
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "workflows" / "assets"
NAMES = sorted(p.name for p in ASSETS.glob("*.png"))


@pytest.fixture(scope="module")
def examples(pack):
    return importlib.import_module(pack.__name__ + ".nodes.examples")


def _graph(image_node: dict) -> dict:
    return {"1": image_node, "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


def test_the_combo_lists_exactly_the_bundled_pictures(examples):
    assert NAMES and examples.example_names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_example_equals_load_image_of_the_same_file(name, run_prompt, tmp_path):
    input_dir = Path(folder_paths.get_input_directory())
    before = sorted(os.listdir(input_dir)) if input_dir.exists() else []
    ours = run_prompt(_graph({"class_type": "MUSAR_ExampleImage", "inputs": {"image": name}}))
    ours.raise_for_error()
    assert (sorted(os.listdir(input_dir)) if input_dir.exists() else []) == before, \
        "the example node wrote into the user's input folder"
    # The stock Load Image on a copy of the same file, in a separate input folder.
    shutil.copy2(ASSETS / name, tmp_path / name)
    folder_paths.set_input_directory(str(tmp_path))
    try:
        stock = run_prompt(_graph({"class_type": "LoadImage", "inputs": {"image": name}}))
        stock.raise_for_error()
    finally:
        folder_paths.set_input_directory(str(input_dir))
    image, mask = ours.output("1")
    ref_image, ref_mask = stock.output("1")
    assert image.shape == ref_image.shape == (1, *Image.open(ASSETS / name).size[::-1], 3)
    assert torch.equal(image, ref_image)
    assert mask.shape[0] == 1 and not mask.any() and not ref_mask.any()  # no alpha: nothing masked


def test_transparent_picture_gives_load_images_mask(examples, monkeypatch, tmp_path):
    rgba = Image.new("RGBA", (80, 64), (200, 10, 10, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 40, 64))  # left half transparent
    rgba.save(tmp_path / "cutout.png")
    monkeypatch.setattr(examples, "ASSETS", tmp_path)
    image, mask = examples.load_example("cutout.png")
    assert image.shape == (1, 64, 80, 3) and mask.shape == (1, 64, 80)
    assert torch.equal(mask[0, :, :40], torch.ones(64, 40)) and not mask[0, :, 40:].any()


@pytest.mark.parametrize("name", ["../../README.md", "/etc/passwd", "..", "assets/musar_red_mug.png",
                                  "musar_red_mug.PNG", "missing.png", ""])
def test_names_outside_the_bundled_list_fail_validation_and_execution(name, validate_prompt, examples):
    valid, _, _, node_errors = validate_prompt(
        _graph({"class_type": "MUSAR_ExampleImage", "inputs": {"image": name}}))
    assert not valid
    message = str(node_errors["1"])
    assert "not one of the pack's bundled pictures" in message and NAMES[0] in message
    with pytest.raises(examples.LayoutError, match="Load Image"):
        examples.load_example(name)
