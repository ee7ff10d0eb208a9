"""MUSAR_ApplyRouting: MUSAR subjects into a FLUX.1 MODEL with static / dynamic routing."""

from __future__ import annotations

from comfy_api.latest import io

from ..musar.errors import LayoutError
from ..musar.session import Recorder
from ..musar.settings import APPLY, RoutingSettings, check_routing
from . import families, patcher
from .inputs import settings_of, validation, widgets
from .types import ROUTING, SUBJECTS


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
                *widgets(RoutingSettings, APPLY, what="subject", blocks="d5-18, s0-9"),
            ],
            outputs=[io.Model.Output(), ROUTING.Output(display_name="routing")],
        )

    validate_inputs = validation(RoutingSettings, check_routing, APPLY)

    @classmethod
    def execute(cls, model, subjects, **inputs) -> io.NodeOutput:
        settings = settings_of(RoutingSettings, inputs, APPLY)
        dm = families.subject_model(model)
        if subjects is None or len(subjects) == 0:
            raise LayoutError("no subjects arrived: connect a MUSAR Subject node (chain one per "
                              "subject) to 'subjects'")
        if settings.strength == 0:
            return io.NodeOutput(model, Recorder((), patched=False))
        subjects.check_model(dm.in_channels // dm.patch_size ** 2, dm.params.context_in_dim)
        return io.NodeOutput(*patcher.apply_routing(model, subjects, settings))


NODES = [MusarApplyRouting]
