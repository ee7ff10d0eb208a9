"""MUSAR_RouteReferences (route the conditioning's ReferenceLatent references: FLUX.1 Kontext,
FLUX.2 [dev]), MUSAR_ReferenceLabel (caption / colour / region of one reference) and
MUSAR_LayoutRegion (a MASK as a hard or soft layout region for a subject or a reference)."""

from __future__ import annotations

from comfy_api.latest import io

from ..musar.checks import verdict
from ..musar.references import ReferenceLabel, ReferenceLabels
from ..musar.regions import REGION_MODES, Region, check_mask
from ..musar.settings import (
    LabelSettings,
    RegionSettings,
    RoutingSettings,
    check_label,
    check_region_settings,
    check_routing,
    parse_color,
)
from . import patcher
from .inputs import number
from .routing import RoutingHandle, dynamic_routing_inputs
from .types import REFERENCE_LABELS, REGION, ROUTING

ROUTING_INPUTS = ("static_routing", "block_prompt_references", "dynamic_routing", "start_percent",
                  "end_percent", "routing_blocks", "threshold", "smoothing", "symmetric", "strength")


class MusarRouteReferences(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_RouteReferences",
            display_name="MUSAR Route References",
            category="MUSAR",
            description=(
                "Routes attention between the reference images of FLUX.1 Kontext and FLUX.2 "
                "[dev] (every ReferenceLatent in the sampler's conditioning becomes its own "
                "routed condition): references stop attending to each other (static routing) "
                "and each image region attends to one reference (dynamic routing), so identities "
                "do not bleed into each other. No MUSAR weights needed. Connect the MODEL to the "
                "sampler, 'routing' to MUSAR Routing Preview."),
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1 Kontext or FLUX.2 [dev] model (UNETLoader, "
                                                "fp8 included), optionally already patched by "
                                                "MUSAR Apply Routing (FLUX.1): one routing for both."),
                io.Boolean.Input("static_routing", default=True,
                                 tooltip="References do not attend to each other (reference i "
                                         "never sees reference j), in every block."),
                io.Boolean.Input("block_prompt_references", default=False,
                                 tooltip="Also block prompt <-> reference attention. Off [chosen]: "
                                         "these models were trained with the prompt seeing the "
                                         "references."),
                *dynamic_routing_inputs("reference", "d2-7, s0-9"),
                number("strength", 1.0, "Blend of routed with unrouted attention (1 = routed, 0 = "
                       "the MODEL unchanged)."),
                REFERENCE_LABELS.Input("labels", optional=True,
                                       tooltip="Optional MUSAR Reference Label chain: captions, "
                                               "colours and regions of the references."),
            ],
            outputs=[io.Model.Output(), ROUTING.Output(display_name="routing")],
        )

    @classmethod
    def validate_inputs(cls, static_routing=None, block_prompt_references=None,
                        dynamic_routing=None, start_percent=None, end_percent=None,
                        routing_blocks=None, threshold=None, smoothing=None, symmetric=None,
                        strength=None):
        values = dict(zip(ROUTING_INPUTS, (static_routing, block_prompt_references,
                                           dynamic_routing, start_percent, end_percent,
                                           routing_blocks, threshold, smoothing, symmetric, strength)))
        return verdict(check_routing, values)

    @classmethod
    def execute(cls, model, static_routing, block_prompt_references, dynamic_routing,
                start_percent, end_percent, routing_blocks, threshold, smoothing, symmetric,
                strength, labels=None) -> io.NodeOutput:
        settings = RoutingSettings(
            static_routing=static_routing, block_prompt_references=block_prompt_references,
            dynamic_routing=dynamic_routing, start_percent=start_percent,
            end_percent=end_percent, routing_blocks=routing_blocks, threshold=threshold,
            smoothing=smoothing, symmetric=symmetric, strength=strength)
        patcher.flux_model(model, flux2=True)
        if settings.strength == 0:
            return io.NodeOutput(model, RoutingHandle(None, 0))
        patched, recorder = patcher.route_references(model, labels or ReferenceLabels(), settings)
        return io.NodeOutput(patched, RoutingHandle(recorder, len(recorder.captions)))


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
                number("reference", 1, "Which reference: 1 = the first ReferenceLatent of the chain."),
                io.String.Input("caption", default="", multiline=False,
                                tooltip="Its name in the routing legend (empty: 'reference n')."),
                io.String.Input("color", default="", multiline=False,
                                tooltip="Its colour in the routing overlay as '#RRGGBB' (empty: "
                                        "the palette colour of its place)."),
                REGION.Input("region", optional=True,
                             tooltip="Optional MUSAR Layout Region: where this reference goes."),
                REFERENCE_LABELS.Input("labels", optional=True,
                                       tooltip="Labels from an earlier MUSAR Reference Label to "
                                               "append to."),
            ],
            outputs=[REFERENCE_LABELS.Output(display_name="labels")],
        )

    @classmethod
    def validate_inputs(cls, reference=None, caption=None, color=None):
        return verdict(check_label, dict(reference=reference, caption=caption, color=color))

    @classmethod
    def execute(cls, reference, caption, color, region=None, labels=None) -> io.NodeOutput:
        settings = LabelSettings(reference=reference, caption=caption, color=color)
        label = ReferenceLabel(settings.reference, settings.caption.strip(),
                               parse_color(settings.color), region)
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
                io.Combo.Input("mode", options=list(REGION_MODES), default="hard",
                               tooltip="'hard': tokens inside see only this condition; 'soft': a "
                                       "bias on the dynamic route (needs dynamic routing)."),
                number("strength", 0.5, "Soft mode: how much the region raises its condition's "
                       "share of attention in the route (1 = always wins) "
                       "[chosen 0.5]. Ignored by hard regions.", limit="region_strength"),
            ],
            outputs=[REGION.Output(display_name="region")],
        )

    @classmethod
    def validate_inputs(cls, mode=None, strength=None):
        return verdict(check_region_settings, dict(mode=mode, strength=strength))

    @classmethod
    def execute(cls, mask, mode, strength) -> io.NodeOutput:
        settings = RegionSettings(mode=mode, strength=strength)
        return io.NodeOutput(Region(check_mask(mask, "the mask of this MUSAR Layout Region"), settings.mode,
                                    settings.strength))


NODES = [MusarRouteReferences, MusarReferenceLabel, MusarLayoutRegion]
