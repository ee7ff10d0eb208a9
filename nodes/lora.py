"""MUSAR_LoadDualLoRA: a dual-branch LoRA file (MUSAR format or an OminiControl subject LoRA)."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..musar.errors import LoRAFormatError
from ..musar.lora import target_modules
from ..musar.omini import check_fits, load_lora_file
from . import inputs, patcher

_CACHE: dict = {}
STRENGTH = (-2.0, 2.0)


def lora_path(name) -> str:
    """The file of a LoRA name, found only inside ComfyUI's ``loras`` folders (ComfyUI's own
    lookup: ``..`` and absolute names stay inside them); the error names no other place."""
    path = folder_paths.get_full_path("loras", name) if isinstance(name, str) and name else None
    if path is None:
        raise LoRAFormatError(f"LoRA {name!r} is not in models/loras; put the file there and "
                              "refresh (R) the node, or pick another file")
    return path


def _check(lora_name, strength_noisy, strength_subject) -> None:
    """Raises a MusarError for a bad value; None (a linked input) is checked at execute time."""
    if lora_name is not None:
        lora_path(lora_name)
    inputs.number("strength_noisy", strength_noisy, *STRENGTH)
    inputs.number("strength_subject", strength_subject, *STRENGTH)


def read_lora(name: str):
    path = lora_path(name)
    key = (path, os.path.getmtime(path))
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_lora_file(path)
    return _CACHE[key]


def apply_dual_lora(model, lora, strength_noisy: float, strength_subject: float):
    dm = patcher.flux_model(model)
    names = target_modules(len(dm.double_blocks), len(dm.single_blocks))
    check_fits(lora, patcher.model_shapes(model, names + list(lora.modules)), dm.hidden_size)
    return patcher.apply_lora(model, lora, strength_noisy, strength_subject)


class MusarLoadDualLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_LoadDualLoRA",
            display_name="MUSAR Load Dual LoRA",
            category="MUSAR",
            description=(
                "Loads a MUSAR dual-branch LoRA: a low-rank 'noisy' branch applied only to the "
                "generated image tokens and a high-rank 'subject' branch applied only to the "
                "reference image tokens (prompt side untouched). Also reads OminiControl subject "
                "LoRAs (PEFT/diffusers keys) as the subject branch."),
            inputs=[
                io.Model.Input("model", tooltip="The FLUX.1 model to adapt."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A .safetensors file in models/loras."),
                io.Float.Input("strength_noisy", default=1.0, min=STRENGTH[0], max=STRENGTH[1],
                               step=0.05,
                               tooltip="Strength of the noisy-image branch (generated image tokens)."),
                io.Float.Input("strength_subject", default=1.0, min=STRENGTH[0], max=STRENGTH[1],
                               step=0.05,
                               tooltip="Strength of the subject branch (reference image tokens)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, lora_name, strength_noisy, strength_subject):
        return inputs.validation(_check, lora_name, strength_noisy, strength_subject)

    @classmethod
    def execute(cls, model, lora_name, strength_noisy, strength_subject) -> io.NodeOutput:
        patcher.flux_model(model)
        inputs.linked_values(lora_name=lora_name, strength_noisy=strength_noisy,
                             strength_subject=strength_subject)
        _check(lora_name, strength_noisy, strength_subject)
        if strength_noisy == 0 and strength_subject == 0:
            return io.NodeOutput(model)
        return io.NodeOutput(apply_dual_lora(model, read_lora(lora_name), strength_noisy,
                                             strength_subject))


NODES = [MusarLoadDualLoRA]
