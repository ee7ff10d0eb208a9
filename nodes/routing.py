"""MUSAR_ApplyRouting and MUSAR_RoutingPreview."""

from __future__ import annotations

import dataclasses
import logging

import torch
from comfy_api.latest import io, ui

from ..musar import images as imaging
from ..musar.errors import LayoutError, MusarError, RoutingError
from ..musar.layout import POSITION_MODES
from ..musar.routing import parse_blocks
from ..musar.session import Recorder, RoutingSettings
from ..musar.subjects import PALETTE
from . import patcher
from .types import ROUTING, SUBJECTS

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class RoutingHandle:
    """What the preview node reads: the recorder of the patched MODEL's sampling runs."""

    recorder: Recorder | None
    n_subjects: int


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
                io.Boolean.Input("dynamic_routing", default=True,
                                 tooltip="Route each image token to one subject from attention "
                                         "(argmax) between start and end percent."),
                io.Float.Input("start_percent", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="When dynamic routing starts (0 = first step). The first "
                                       "steps form the layout, so routing starts later [chosen 0.2]."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="When dynamic routing stops (1 = last step)."),
                io.String.Input("routing_blocks", default="double",
                                tooltip="Blocks whose attention decides the route: 'double', "
                                        "'single', 'all', or items like 'd5-18, s0-9'."),
                io.Float.Input("threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Image tokens whose strongest subject gets less attention "
                                       "mass than this become background (see no subject). 0 = off."),
                io.Int.Input("smoothing", default=3, min=1, max=15, step=2,
                             tooltip="Odd box-filter size on the token grid before the argmax "
                                     "(1 = none) [chosen 3]."),
                io.Boolean.Input("symmetric", default=False,
                                 tooltip="Conditions also see only the image tokens routed to them."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Blend of the image tokens' attention with vs. without the "
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
    def validate_inputs(cls, routing_blocks, start_percent, end_percent, smoothing, symmetric,
                        dynamic_routing, condition_cache):
        kw = dict(routing_blocks=routing_blocks, start_percent=start_percent, end_percent=end_percent,
                  smoothing=smoothing, symmetric=symmetric, dynamic_routing=dynamic_routing,
                  condition_cache=condition_cache)
        try:
            if "routing_blocks" in kw:
                parse_blocks(kw["routing_blocks"])
            if kw.get("start_percent", 0) > kw.get("end_percent", 1):
                raise RoutingError("start_percent must not be after end_percent")
            if kw.get("smoothing", 3) % 2 == 0:
                raise RoutingError("smoothing must be odd (1, 3, 5 ...)")
            if kw.get("symmetric") and kw.get("dynamic_routing") is False:
                raise RoutingError("symmetric routing needs dynamic routing on")
            if kw.get("symmetric") and kw.get("condition_cache"):
                raise RoutingError("symmetric routing and the condition cache conflict; turn one off")
        except MusarError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model, subjects, static_routing, dynamic_routing, start_percent, end_percent,
                routing_blocks, threshold, smoothing, symmetric, strength, condition_cache,
                positions) -> io.NodeOutput:
        dm = patcher.flux_model(model)
        if subjects is None or len(subjects) == 0:
            raise LayoutError("no subjects arrived: connect a MUSAR Subject node (chain one per "
                              "subject) to 'subjects'")
        if strength == 0:
            return io.NodeOutput(model, RoutingHandle(None, 0))
        subjects.check_model(dm.in_channels // dm.patch_size ** 2, dm.params.context_in_dim)
        blocks = parse_blocks(routing_blocks, len(dm.double_blocks), len(dm.single_blocks))
        sampling = model.get_model_object("model_sampling")
        settings = RoutingSettings(
            static_routing, dynamic_routing, float(sampling.percent_to_sigma(start_percent)),
            float(sampling.percent_to_sigma(end_percent)), blocks if dynamic_routing else frozenset(),
            threshold, smoothing, symmetric, strength, condition_cache, positions)
        recorder = Recorder(tuple(s.caption for s in subjects.subjects))
        patched = patcher.apply_routing(model, subjects, settings, recorder)
        return io.NodeOutput(patched, RoutingHandle(recorder, len(subjects)))


class MusarRoutingPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_RoutingPreview",
            display_name="MUSAR Routing Preview",
            category="MUSAR",
            description=("Shows which image region was routed to which subject (colours follow "
                         "the order of the Subject nodes) over the decoded image, and outputs one "
                         "mask per subject. Run it after the sampler (connect VAE Decode's image)."),
            is_output_node=True,
            inputs=[
                ROUTING.Input("routing", tooltip="The routing output of MUSAR Apply Routing."),
                io.Image.Input("images", tooltip="The decoded image(s) to draw the route over."),
                io.Int.Input("step", default=-1, min=-1, max=10000, step=1,
                             tooltip="Which sampling step's route to show (-1 = the last one)."),
                io.Float.Input("opacity", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Opacity of the subject colours."),
            ],
            outputs=[io.Image.Output(display_name="overlay"), io.Mask.Output(display_name="masks")],
        )

    @classmethod
    def execute(cls, routing, images, step, opacity) -> io.NodeOutput:
        _, height, width, _ = images.shape
        run = routing.recorder.latest if routing.recorder is not None else None
        if run is None or not run.routes:
            logger.warning("MUSAR preview: no route recorded (dynamic routing off, no subjects, "
                           "or the sampler has not run with this MODEL); showing the image as is")
            masks = torch.zeros(max(1, routing.n_subjects), height, width)
            return io.NodeOutput(images, masks, ui=_preview(images, routing, cls))
        if step >= len(run.routes):
            raise RoutingError(f"step {step} asked, but the run recorded {len(run.routes)} routed "
                               f"steps (use -1 for the last)")
        _, route = run.routes[step]
        masks = imaging.route_masks(route[0], run.grid, routing.n_subjects, height, width)
        out = imaging.overlay(images, masks, opacity)
        return io.NodeOutput(out, masks, ui=_preview(out, routing, cls))


def _preview(image, routing: RoutingHandle, cls) -> dict:
    """Preview images plus the captions and colours the web legend shows."""
    captions = list(routing.recorder.captions) if routing.recorder is not None else []
    return {**ui.PreviewImage(image, cls=cls).as_dict(), "captions": captions,
            "colors": [list(PALETTE[i % len(PALETTE)]) for i in range(len(captions))]}


NODES = [MusarApplyRouting, MusarRoutingPreview]
