"""MUSAR_ApplyRouting and MUSAR_RoutingPreview."""

from __future__ import annotations

import dataclasses
import logging

import torch
from comfy_api.latest import io, ui
from comfy_execution.utils import get_executing_context

from ..musar import images as imaging
from ..musar.checks import verdict
from ..musar.errors import LayoutError, RoutingError
from ..musar.layout import POSITION_MODES
from ..musar.session import Recorder, fingerprint
from ..musar.settings import PreviewSettings, RoutingSettings, check_preview, check_routing
from ..musar.subjects import PALETTE
from . import patcher
from .inputs import number
from .types import ROUTING, SUBJECTS

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class RoutingHandle:
    """What the preview node reads: the recorder of the patched MODEL's sampling runs."""

    recorder: Recorder | None
    n_subjects: int


def dynamic_routing_inputs(what: str, blocks_example: str) -> list:
    """The dynamic-routing inputs MUSAR Apply Routing and MUSAR Route References share: names,
    defaults and ranges (``what`` names the routed conditions in the tooltips)."""
    return [
        io.Boolean.Input("dynamic_routing", default=True,
                         tooltip=f"Route each image token to one {what} from attention (argmax) "
                                 "between start and end percent."),
        number("start_percent", 0.2, "When dynamic routing starts (0 = first step). The first steps "
               "form the layout, so routing starts later [chosen 0.2]."),
        number("end_percent", 1.0, "When dynamic routing stops (1 = last step)."),
        io.String.Input("routing_blocks", default="double",
                        tooltip="Blocks whose attention decides the route: 'double', 'single', "
                                f"'all', or items like '{blocks_example}'."),
        number("threshold", 0.0, f"Image tokens whose strongest {what} gets less attention mass "
               f"than this become background (see no {what}). 0 = off."),
        number("smoothing", 3, "Odd box-filter size on the token grid before the argmax (1 = "
               "none) [chosen 3]."),
        io.Boolean.Input("symmetric", default=False,
                         tooltip=f"Each {what} also sees only the image tokens routed to it."),
    ]


class MusarApplyRouting(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_ApplyRouting",
            display_name="MUSAR Apply Routing",
            category="MUSAR",
            description=(
                "Adds the subjects to a FLUX MODEL as condition tokens and routes attention "
                "between them: static routing blocks prompt<->condition and condition<->condition "
                "attention in every block; dynamic routing assigns each image region to one "
                "subject (argmax of attention) so subjects do not bleed into each other. Connect "
                "the output MODEL to a stock KSampler."),
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1 model (UNETLoader, fp8 and GGUF included), "
                                                "optionally with a MUSAR dual LoRA loaded."),
                SUBJECTS.Input("subjects", tooltip="The chain of MUSAR Subject nodes."),
                io.Boolean.Input("static_routing", default=True,
                                 tooltip="Block prompt<->condition and condition<->condition "
                                         "attention (the paper's mask). Turn off only to compare."),
                *dynamic_routing_inputs("subject", "d5-18, s0-9"),
                number("strength", 1.0, "Blend of the image tokens' attention with vs. without the "
                       "subjects (1 = full MUSAR, 0 = subjects ignored)."),
                io.Boolean.Input("condition_cache", default=False,
                                 tooltip="Reuse condition keys/values after the first step "
                                         "(faster; an approximation, see README). Off by default."),
                io.Combo.Input("positions", options=list(POSITION_MODES), default="shared",
                               tooltip="Position ids of the references: 'shared' (left of the "
                                       "canvas, OminiControl), 'distinct' (tiled left), 'kontext' "
                                       "(for FLUX Kontext models)."),
            ],
            outputs=[io.Model.Output(), ROUTING.Output(display_name="routing")],
        )

    @classmethod
    def validate_inputs(cls, static_routing=None, dynamic_routing=None, start_percent=None,
                        end_percent=None, routing_blocks=None, threshold=None, smoothing=None,
                        symmetric=None, strength=None, condition_cache=None, positions=None):
        return verdict(check_routing, dict(
            static_routing=static_routing, dynamic_routing=dynamic_routing,
            start_percent=start_percent, end_percent=end_percent, routing_blocks=routing_blocks,
            threshold=threshold, smoothing=smoothing, symmetric=symmetric, strength=strength,
            condition_cache=condition_cache, positions=positions))

    @classmethod
    def execute(cls, model, subjects, static_routing, dynamic_routing, start_percent, end_percent,
                routing_blocks, threshold, smoothing, symmetric, strength, condition_cache,
                positions) -> io.NodeOutput:
        settings = RoutingSettings(
            static_routing=static_routing, dynamic_routing=dynamic_routing,
            start_percent=start_percent, end_percent=end_percent, routing_blocks=routing_blocks,
            threshold=threshold, smoothing=smoothing, symmetric=symmetric, strength=strength,
            condition_cache=condition_cache, positions=positions)
        dm = patcher.flux_model(model)
        if subjects is None or len(subjects) == 0:
            raise LayoutError("no subjects arrived: connect a MUSAR Subject node (chain one per "
                              "subject) to 'subjects'")
        if settings.strength == 0:
            return io.NodeOutput(model, RoutingHandle(None, 0))
        subjects.check_model(dm.in_channels // dm.patch_size ** 2, dm.params.context_in_dim)
        patched, recorder = patcher.apply_routing(model, subjects, settings)
        return io.NodeOutput(patched, RoutingHandle(recorder, len(subjects)))


class MusarRoutingPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_RoutingPreview",
            display_name="MUSAR Routing Preview",
            category="MUSAR",
            description=("Shows which image region was routed to which subject (colours follow "
                         "the order of the Subject nodes) over the decoded images, one route per "
                         "image, and outputs one mask per subject and image. Run it after the "
                         "sampler (connect VAE Decode's image, and the sampler's LATENT to "
                         "'samples' when one Apply Routing feeds several samplers)."),
            is_output_node=True,
            inputs=[
                ROUTING.Input("routing", tooltip="The routing output of MUSAR Apply Routing."),
                io.Image.Input("images", tooltip="The decoded image(s) to draw the route over."),
                number("step", -1, "Which sampling step's route to show (-1 = the last one)."),
                number("opacity", 0.5, "Opacity of the subject colours."),
                io.Latent.Input("samples", optional=True,
                                tooltip="Optional: the sampler's LATENT that was decoded into "
                                        "'images'. The preview then shows exactly that run's "
                                        "route; needed when one Apply Routing feeds several "
                                        "samplers."),
            ],
            outputs=[io.Image.Output(display_name="overlay"), io.Mask.Output(display_name="masks")],
        )

    @classmethod
    def validate_inputs(cls, step=None, opacity=None):
        return verdict(check_preview, dict(step=step, opacity=opacity))

    @classmethod
    def execute(cls, routing, images, step, opacity, samples=None) -> io.NodeOutput:
        settings = PreviewSettings(step=step, opacity=opacity)
        run = None
        if routing.recorder is not None:
            context = get_executing_context()
            run = routing.recorder.find(None if samples is None else fingerprint(samples["samples"]),
                                        None if context is None else context.prompt_id)
        conditions = getattr(run, "conditions", None)
        n = len(conditions.captions) if conditions is not None else routing.n_subjects
        regions = None if conditions is None else conditions.regions
        outlines = None if regions is None else regions.outlines
        if run is None or (not run.routes and outlines is None):
            logger.warning("MUSAR preview: no route recorded (dynamic routing off, no subjects, "
                           "or the sampler has not run with this MODEL); showing the image as is")
            masks = torch.zeros(max(1, n * images.shape[0]), *images.shape[1:3])
            return io.NodeOutput(images, masks, ui=_preview(images, routing, cls, conditions))
        if run.routes and settings.step >= len(run.routes):
            raise RoutingError(f"step {settings.step} asked, but the run recorded {len(run.routes)} "
                               "routed steps (use -1 for the last)")
        route = run.routes[settings.step][1] if run.routes else None
        colors = None if conditions is None else conditions.colors
        out, masks = imaging.route_overlay(images, route, run.grid, n, settings.opacity, colors,
                                           outlines)
        return io.NodeOutput(out, masks, ui=_preview(out, routing, cls, conditions))


def _preview(image, routing: RoutingHandle, cls, conditions=None) -> dict:
    """Preview images plus the captions and colours the web legend shows."""
    if conditions is not None:
        captions, colors = list(conditions.captions), [list(c) for c in conditions.colors]
    else:
        captions = list(routing.recorder.captions) if routing.recorder is not None else []
        colors = [list(PALETTE[i % len(PALETTE)]) for i in range(len(captions))]
    return {**ui.PreviewImage(image, cls=cls).as_dict(), "captions": captions, "colors": colors}


NODES = [MusarApplyRouting, MusarRoutingPreview]
