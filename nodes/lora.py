"""MUSAR_LoadDualLoRA: a dual-branch LoRA file (MUSAR format or an OminiControl subject LoRA)."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..musar.errors import LoRAFormatError
from ..musar.lora import target_modules
from ..musar.omini import check_fits, load_lora_file
from ..musar.settings import LoRASettings, check_lora_settings
from . import families, patcher
from .inputs import settings_of, validation, widgets

_CACHE: dict = {}


def lora_path(name) -> str:
    """The file of a LoRA name, found only inside ComfyUI's ``loras`` folders (ComfyUI's own
    lookup: ``..`` and absolute names stay inside them); the error names no other place."""
    path = folder_paths.get_full_path("loras", name) if isinstance(name, str) and name else None
    if path is None:
        raise LoRAFormatError(f"LoRA {name!r} is not in models/loras; put the file there and "
                              "refresh (R) the node, or pick another file")
    return path


def read_lora(name: str):
    path = lora_path(name)
    key = (path, os.path.getmtime(path))
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_lora_file(path)
    return _CACHE[key]


def apply_dual_lora(model, lora, strength_noisy: float, strength_subject: float):
    dm = families.subject_model(model)
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
                *widgets(LoRASettings, overrides={"lora_name": io.Combo.Input(
                    "lora_name", options=folder_paths.get_filename_list("loras"),
                    tooltip="A .safetensors file in models/loras.")}),
            ],
            outputs=[io.Model.Output()],
        )

    validate_inputs = validation(LoRASettings, check_lora_settings, lora_name=lora_path)

    @classmethod
    def execute(cls, model, **inputs) -> io.NodeOutput:
        families.subject_model(model)
        settings = settings_of(LoRASettings, inputs)
        lora_path(settings.lora_name)  # a missing file is an error even at strength 0
        if settings.strength_noisy == 0 and settings.strength_subject == 0:
            return io.NodeOutput(model)
        return io.NodeOutput(apply_dual_lora(model, read_lora(settings.lora_name), settings.strength_noisy,
                                             settings.strength_subject))


NODES = [MusarLoadDualLoRA]
