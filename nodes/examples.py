"""MUSAR_ExampleImage: the pack's bundled example pictures, so shipped workflows run on first open.

The pictures live in the pack's own ``workflows/assets`` folder; nothing is copied into the
user's ``input/`` folder. The choice is confined to that folder on the server: ComfyUI 0.3.75
does not check V3 combo values, so any string can arrive, and only a plain file name listed
there is read (musar.paths.folder_file: a plain name of that folder, symlinks resolved).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image, ImageOps

from ..musar.checks import verdict
from ..musar.errors import LayoutError
from ..musar.paths import folder_file, folder_files

ASSETS = Path(__file__).resolve().parent.parent / "workflows" / "assets"
PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.webp")


def example_names() -> list[str]:
    """The bundled pictures (file names in workflows/assets), sorted."""
    return folder_files(ASSETS, PATTERNS)


def example_path(name) -> Path:
    """The file of a bundled picture; anything that is not one of them is a LayoutError."""
    path = folder_file(ASSETS, name, PATTERNS)
    if path is None:
        raise LayoutError(f"example image {name!r} is not one of the pack's bundled pictures "
                          f"({', '.join(example_names()) or 'none found'}); pick one of them, or "
                          "use Load Image for your own pictures")
    return Path(path)


def load_example(name) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE (1, H, W, 3) and MASK (1, H, W) as Load Image gives them (mask = 1 - alpha)."""
    with Image.open(example_path(name)) as raw:
        picture = ImageOps.exif_transpose(raw)
        rgb = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
        alpha = picture.convert("RGBA").getchannel("A") if _has_alpha(picture) else None
    image = torch.from_numpy(rgb)[None]
    if alpha is None:
        mask = torch.zeros(image.shape[1:3], dtype=torch.float32)
    else:
        mask = 1.0 - torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0)
    return image, mask[None]


def _has_alpha(picture: Image.Image) -> bool:
    return "A" in picture.getbands() or (picture.mode == "P" and "transparency" in picture.info)


class MusarExampleImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = example_names()
        return io.Schema(
            node_id="MUSAR_ExampleImage",
            display_name="MUSAR Example Image",
            category="MUSAR/examples",
            description=(
                "Loads one of the example pictures that ship with ComfyUI-MUSAR (its "
                "workflows/assets folder), so the shipped workflows run without copying files "
                "into ComfyUI's input folder. Outputs IMAGE and MASK like Load Image; replace it "
                "with Load Image for your own pictures."),
            inputs=[
                io.Combo.Input("image", options=names, default=names[0] if names else None,
                               tooltip="A bundled example picture (flat drawings of one subject "
                                       "each). For your own pictures use Load Image instead."),
            ],
            outputs=[io.Image.Output(display_name="IMAGE"), io.Mask.Output(display_name="MASK")],
        )

    @classmethod
    def validate_inputs(cls, image):
        return verdict(None, dict(image=image), image=example_path)

    @classmethod
    def execute(cls, image) -> io.NodeOutput:
        picture, mask = load_example(image)
        return io.NodeOutput(picture, mask, ui=ui.PreviewImage(picture, cls=cls))


NODES = [MusarExampleImage]
