"""MUSAR_RoutingPreview: the route of a sampling run over its decoded images."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui
from comfy_execution.utils import get_executing_context

from ..musar import images as imaging
from ..musar.errors import RoutingError
from ..musar.session import Recorder, fingerprint
from ..musar.settings import PreviewSettings, check_preview
from ..musar.subjects import PALETTE
from .inputs import settings_of, validation, widgets
from .types import ROUTING

logger = logging.getLogger(__name__)


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
                ROUTING.Input("routing", tooltip="The routing output of MUSAR Apply Routing or MUSAR "
                                                 "Route References."),
                io.Image.Input("images", tooltip="The decoded image(s) to draw the route over."),
                *widgets(PreviewSettings),
                io.Latent.Input("samples", optional=True,
                                tooltip="Optional: the sampler's LATENT that was decoded into "
                                        "'images'. The preview then shows exactly that run's "
                                        "route; needed when one Apply Routing feeds several "
                                        "samplers."),
            ],
            outputs=[io.Image.Output(display_name="overlay"), io.Mask.Output(display_name="masks")],
        )

    validate_inputs = validation(PreviewSettings, check_preview)

    @classmethod
    def execute(cls, routing: Recorder, images, samples=None, **inputs) -> io.NodeOutput:
        settings = settings_of(PreviewSettings, inputs)
        run = None
        if routing.patched:
            context = get_executing_context()
            run = routing.find(None if samples is None else fingerprint(samples["samples"]),
                               None if context is None else context.prompt_id)
        conditions = getattr(run, "conditions", None)
        n = len(conditions.captions) if conditions is not None else len(routing.captions)
        regions = None if conditions is None else conditions.regions
        outlines = None if regions is None else regions.outlines
        if run is None or (not run.routes and outlines is None):
            if routing.patched and not routing.routes:  # as its settings ask: nothing to warn about
                logger.info("MUSAR preview: dynamic routing is off on the routing node, so there is "
                            "no route to draw; showing the image as is (turn dynamic_routing on to "
                            "see one)")
            else:
                logger.warning("MUSAR preview: no route recorded (no subjects, or the sampler has "
                               "not run with this MODEL); showing the image as is")
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


def _preview(image, routing: Recorder, cls, conditions=None) -> dict:
    """Preview images plus the captions and colours the web legend shows."""
    if conditions is not None:
        captions, colors = list(conditions.captions), [list(c) for c in conditions.colors]
    else:
        captions = list(routing.captions)
        colors = [list(PALETTE[i % len(PALETTE)]) for i in range(len(captions))]
    return {**ui.PreviewImage(image, cls=cls).as_dict(), "captions": captions, "colors": colors}


NODES = [MusarRoutingPreview]
