"""MUSAR_RouteReferences (route the conditioning's reference latents: FLUX.1 Kontext,
FLUX.2 [dev] / [klein], Qwen-Image-Edit), MUSAR_ReferenceLabel (caption / colour / region of one reference) and
MUSAR_LayoutRegion (a MASK as a hard or soft layout region for a subject or a reference)."""

from __future__ import annotations

from comfy_api.latest import io

from ..musar.references import ReferenceLabel, ReferenceLabels
from ..musar.regions import Region, check_mask
from ..musar.session import Recorder
from ..musar.settings import (
    REFERENCES,
    LabelSettings,
    RegionSettings,
    RoutingSettings,
    check_label,
    check_region_settings,
    check_routing,
    parse_color,
)
from . import families, patcher
from .inputs import settings_of, validation, widgets
from .types import REFERENCE_LABELS, REGION, ROUTING


class MusarRouteReferences(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_RouteReferences",
            display_name="MUSAR Route References",
            category="MUSAR",
            description=(
                "Routes attention between the reference images of FLUX.1 Kontext, FLUX.2 [dev] "
                "/ [klein] and Qwen-Image-Edit (every reference latent in the sampler's "
                "conditioning becomes its own routed condition): references stop attending to "
                "each other (static routing) "
                "and each image region attends to one reference (dynamic routing), so identities "
                "do not bleed into each other. No MUSAR weights needed. Connect the MODEL to the "
                "sampler, 'routing' to MUSAR Routing Preview."),
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1 Kontext, FLUX.2 [dev] / [klein] or "
                                                "Qwen-Image-Edit model (UNETLoader, fp8 included), "
                                                "optionally already patched by MUSAR Apply "
                                                "Routing (FLUX.1): one routing for both."),
                *widgets(RoutingSettings, REFERENCES, what="reference", blocks="d2-7, s0-9"),
                REFERENCE_LABELS.Input("labels", optional=True,
                                       tooltip="Optional MUSAR Reference Label chain: captions, "
                                               "colours and regions of the references."),
            ],
            outputs=[io.Model.Output(), ROUTING.Output(display_name="routing")],
        )

    validate_inputs = validation(RoutingSettings, check_routing, REFERENCES)

    @classmethod
    def execute(cls, model, labels=None, **inputs) -> io.NodeOutput:
        settings = settings_of(RoutingSettings, inputs, REFERENCES)
        families.reference_model(model)
        if settings.strength == 0:
            return io.NodeOutput(model, Recorder((), patched=False))
        return io.NodeOutput(*patcher.route_references(model, labels or ReferenceLabels(), settings))


class MusarReferenceLabel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_ReferenceLabel",
            display_name="MUSAR Reference Label",
            category="MUSAR",
            description=(
                "Names one reference of MUSAR Route References (the n-th ReferenceLatent of the "
                "conditioning, in chain order) for the Routing Preview legend, with an optional "
                "colour and layout region. Chain one per reference you want to label."),
            inputs=[
                *widgets(LabelSettings),
                REGION.Input("region", optional=True,
                             tooltip="Optional MUSAR Layout Region: where this reference goes."),
                REFERENCE_LABELS.Input("labels", optional=True,
                                       tooltip="Labels from an earlier MUSAR Reference Label to "
                                               "append to."),
            ],
            outputs=[REFERENCE_LABELS.Output(display_name="labels")],
        )

    validate_inputs = validation(LabelSettings, check_label)

    @classmethod
    def execute(cls, region=None, labels=None, **inputs) -> io.NodeOutput:
        settings = settings_of(LabelSettings, inputs)
        label = ReferenceLabel(settings.reference, settings.caption.strip(),
                               parse_color(settings.color), region, settings.strength)
        return io.NodeOutput((labels or ReferenceLabels()).add(label))


class MusarLayoutRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_LayoutRegion",
            display_name="MUSAR Layout Region",
            category="MUSAR",
            description=(
                "Where a subject (MUSAR Subject) or a reference (MUSAR Reference Label) should go "
                "in the generated image: white = there. 'hard': image tokens inside are routed "
                "only to it; 'soft': its route score is raised there by 'strength'. The mask "
                "needs the image's shape (any resolution of it)."),
            inputs=[
                io.Mask.Input("mask", tooltip="The region in image space (white = inside), e.g. "
                                              "from a painted mask or ImageToMask."),
                *widgets(RegionSettings),
            ],
            outputs=[REGION.Output(display_name="region")],
        )

    validate_inputs = validation(RegionSettings, check_region_settings)

    @classmethod
    def execute(cls, mask, **inputs) -> io.NodeOutput:
        settings = settings_of(RegionSettings, inputs)
        return io.NodeOutput(Region(check_mask(mask, "the mask of this MUSAR Layout Region"),
                                    settings.mode, settings.strength))


NODES = [MusarRouteReferences, MusarReferenceLabel, MusarLayoutRegion]
