"""MUSAR_Subject: one reference subject (image + caption [+ mask]), chainable."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..musar.errors import LayoutError
from ..musar.images import prepare_reference
from ..musar.layout import MAX_SUBJECTS, check_subject_count
from ..musar.settings import SubjectSettings, check_subject
from ..musar.subjects import Subject, SubjectSet
from .inputs import settings_of, validation, widgets
from .types import REGION, SUBJECTS

MAX_CAPTION_TOKENS = 77


def encode_caption(clip, caption: str) -> torch.Tensor:
    """Caption features from the main text encoder with the padding removed: (1, n, dim)."""
    check_subject({"caption": caption})
    text = caption.strip()
    tokens = clip.tokenize(text)
    main = tokens.get("t5xxl") or next(iter(tokens.values()))
    ids = [t[0] for chunk in main for t in chunk]
    n = ids.index(1) + 1 if 1 in ids else len(ids)  # T5: everything up to and with </s>
    if n > MAX_CAPTION_TOKENS:
        raise LayoutError(f"the subject caption is {n} tokens long; keep it under "
                          f"{MAX_CAPTION_TOKENS} (a short name like 'a red ceramic mug' works best)")
    cond = clip.encode_from_tokens(tokens)
    return cond[:, :n].float().cpu()


class MusarSubject(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_Subject",
            display_name="MUSAR Subject",
            category="MUSAR",
            description=(
                "One reference subject for MUSAR: its image (encoded by the VAE into condition "
                "image tokens) and a short caption (encoded by the text encoder into condition "
                f"caption tokens). Chain up to {MAX_SUBJECTS} Subject nodes through 'subjects'; the order "
                "sets each subject's colour in the routing preview."),
            inputs=[
                io.Image.Input("image", tooltip="The reference picture of this subject (one image)."),
                io.Vae.Input("vae", tooltip="The VAE of the FLUX model (ae.safetensors)."),
                io.Clip.Input("clip", tooltip="FLUX's text encoder (DualCLIPLoader, type flux)."),
                *widgets(SubjectSettings),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: only reference tokens mostly inside the mask "
                                      "(white) are used; the mask must match the image size."),
                SUBJECTS.Input("subjects", optional=True,
                               tooltip="Subjects from an earlier MUSAR Subject node to append to."),
                REGION.Input("region", optional=True,
                             tooltip="Optional MUSAR Layout Region: where in the generated image "
                                     "this subject should go."),
            ],
            outputs=[SUBJECTS.Output(display_name="subjects")],
        )

    validate_inputs = validation(SubjectSettings, check_subject)

    @classmethod
    def execute(cls, image, vae, clip, mask=None, subjects=None, region=None,
                **inputs) -> io.NodeOutput:
        settings = settings_of(SubjectSettings, inputs)
        chain = subjects if subjects is not None else SubjectSet()
        check_subject_count(len(chain) + 1)  # before the (slow) encoding
        pixels, small_mask = prepare_reference(image, settings.reference_size, settings.crop, mask)
        latent = vae.encode(pixels).float().cpu()
        keep = None if small_mask is None else Subject.keep_from_mask(small_mask, latent)
        subject = Subject(latent, settings.caption.strip(), encode_caption(clip, settings.caption),
                          keep, preview=pixels.cpu(), region=region)
        return io.NodeOutput(chain.add(subject))


NODES = [MusarSubject]
