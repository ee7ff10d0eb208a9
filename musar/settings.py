"""What the user chose on a MUSAR inference node: one frozen, keyword-only dataclass per node,
each field declared once with ``checks.setting`` (default, rule, tooltip), and one check
function per settings object - the single home of every rule and its wording (the primitive
checks are in musar/checks.py). The training nodes' settings live with the trainer
(musar/train/settings.py).

A check function takes the node's inputs as a mapping; ``None`` means "not known yet" (ComfyUI
passes None for an input linked from another node at validation time) and skips every rule that
needs that value. The node calls it from ``validate_inputs`` (literal values, before anything
runs) and the dataclass calls it again on construction (every value, linked ones included, at
execute time; an empty one is refused). ComfyUI skips its own min / max / combo checks for every
input that ``validate_inputs`` names, and never checks V3 combos or NaN, so the ranges and
option lists live here; the node widgets take their min / max / step from the same rules
(nodes/inputs.py).

Adding a setting: one ``setting(...)`` field in the class (same name as the node input, its
rule and tooltip), a cross-field rule in the check function if it has one, then read it where it
acts; the node's widget, ``validate_inputs`` and settings object follow from the field
(docs/ARCHITECTURE.md, "A new setting").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .checks import FLAG, TEXT, Limit, check_values, complete, rules_of, setting
from .errors import LayoutError, MusarError, RoutingError
from .images import CROP_MODES
from .layout import MAX_REFERENCES, POSITION_MODES
from .regions import REGION_MODES
from .routes import parse_blocks

# ---- MUSAR Apply Routing (APPLY), MUSAR Route References (REFERENCES) ------------------------
APPLY, REFERENCES = "apply_routing", "route_references"  # the nodes RoutingSettings serves
PERCENT = Limit(0.0, 1.0, 0.01)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoutingSettings:
    """The inputs of MUSAR Apply Routing and MUSAR Route References (same names, defaults and
    order as the widgets; each node shows the fields it lists). Tooltips may name ``{what}``
    (subject / reference) and ``{blocks}`` (an example block list for the node's model)."""

    static_routing: bool = setting(True, FLAG, {
        APPLY: "Block prompt<->condition and condition<->condition attention (the paper's mask). "
               "Turn off only to compare.",
        REFERENCES: "References do not attend to each other (reference i never sees reference "
                    "j), in every block."})
    block_prompt_references: bool = setting(False, FLAG, "Also block prompt <-> reference "
                                            "attention. Off [chosen]: these models were trained "
                                            "with the prompt seeing the references.",
                                            nodes=(REFERENCES,))
    dynamic_routing: bool = setting(True, FLAG, {
        APPLY: "Route each image token to one subject from attention (argmax) between start and "
               "end percent.",
        REFERENCES: "Route each image token to one reference from attention (argmax) between start "
                    "and end percent. Off by default [measured]: on a model trained with its "
                    "references (toy), it cost half of the references; layout regions do not."},
        defaults={REFERENCES: False})
    start_percent: float = setting(0.2, PERCENT, "When dynamic routing starts (0 = first step). "
                                   "The first steps form the layout, so routing starts later "
                                   "[chosen 0.2].")
    end_percent: float = setting(1.0, PERCENT, "When dynamic routing stops (1 = last step).")
    routing_blocks: str = setting("double", TEXT, "Blocks whose attention decides the route: "
                                  "'double', 'single', 'all', or items like '{blocks}'.")
    threshold: float = setting(0.0, PERCENT, "Image tokens whose strongest {what} gets less "
                               "attention mass than this become background (see no {what}). 0 = off.")
    smoothing: int = setting(3, Limit(1, 15, 2, integer=True, odd=True), "Odd box-filter size on the token "
                             "grid before the argmax (1 = none) [chosen 3].")
    symmetric: bool = setting(False, FLAG, "Each {what} also sees only the image tokens routed to it.")
    strength: float = setting(1.0, Limit(0.0, 2.0, 0.05), {
        APPLY: "Blend of the image tokens' attention with vs. without the subjects (1 = full "
               "MUSAR, 0 = subjects ignored).",
        REFERENCES: "Blend of routed with unrouted attention (1 = routed, 0 = the MODEL unchanged)."})
    condition_cache: bool = setting(False, FLAG, {
        APPLY: "Compute the subjects' keys/values once per run and reuse them at every step. "
               "Exact with isolate on; without it an approximation (subjects then see the "
               "canvas, which changes). Off by default.",
        REFERENCES: "Compute the references' keys/values once per run (and CFG branch) and run "
                    "every later step on the canvas and prompt only: exact, needs isolate on and "
                    "references modulated at a fixed timestep (see the help page). Off by "
                    "default."}, optional=(REFERENCES,))
    positions: str = setting("shared", POSITION_MODES, "Position ids of the references: 'shared' "
                             "(left of the canvas, OminiControl), 'distinct' (tiled left), "
                             "'kontext' (for FLUX Kontext models).", nodes=(APPLY,))
    isolate: bool = setting(False, FLAG, "Each {what} attends only to its own tokens (not the "
                            "prompt, the canvas or other {what}s), so it stays the same at every "
                            "step and condition_cache becomes exact. Our extension, not the "
                            "paper's; off by default [chosen].", optional=True)

    def __post_init__(self):
        check_routing(complete(self, RoutingError))


def check_routing(values: Mapping) -> None:
    """Every rule of the routing nodes' settings; RoutingError naming the input."""
    v = check_values(RoutingError, values, rules_of(RoutingSettings))
    if "routing_blocks" in v:
        parse_blocks(v["routing_blocks"])  # syntax only; indices are checked against the model
    if v.get("start_percent", 0.0) > v.get("end_percent", 1.0):
        raise RoutingError(f"start_percent ({v['start_percent']}) is after end_percent "
                           f"({v['end_percent']}): dynamic routing would never run; lower "
                           "start_percent or raise end_percent")
    if v.get("symmetric") and v.get("dynamic_routing") is False:
        raise RoutingError("symmetric routing restricts conditions to their routed region: it "
                           "needs dynamic routing on (turn dynamic_routing on or symmetric off)")
    if v.get("symmetric") and v.get("isolate"):
        raise RoutingError("symmetric routing lets each condition see the image tokens routed to "
                           "it, which isolate forbids: turn symmetric or isolate off")
    if v.get("symmetric") and v.get("condition_cache"):
        raise RoutingError("symmetric routing and the condition cache conflict (cached conditions "
                           "are not recomputed, so their routed view cannot change): turn one off")


# ---- MUSAR Routing Preview --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class PreviewSettings:
    step: int = setting(-1, Limit(-1, 10000, 1, integer=True),
                        "Which sampling step's route to show (-1 = the last one).")
    opacity: float = setting(0.5, Limit(0.0, 1.0, 0.05), "Opacity of the subject colours.")

    def __post_init__(self):
        check_preview(complete(self, RoutingError))


def check_preview(values: Mapping) -> None:
    """Every rule of MUSAR Routing Preview's settings; RoutingError naming the input."""
    check_values(RoutingError, values, rules_of(PreviewSettings))


# ---- MUSAR Subject ----------------------------------------------------------------------------
LATENT_CELLS = " (FLUX packs 2 x 2 latent cells of 8 x 8 pixels into a token)"
REFERENCE_SIZE = Limit(64, 2048, 16, integer=True, multiple=16, why=LATENT_CELLS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubjectSettings:
    caption: str = setting("a subject", TEXT, "A short name of the subject, e.g. 'a red ceramic "
                           "mug'.", multiline=False)
    crop: str = setting("center crop", CROP_MODES, "How the image becomes a reference: center "
                        "crop to a square, pad to a square, stretch, or keep its aspect ratio.")
    reference_size: int = setting(512, REFERENCE_SIZE, "Reference side in pixels (longest side "
                                  "for 'keep aspect'). 512 adds 1024 tokens per subject to FLUX "
                                  "attention.")

    def __post_init__(self):
        check_subject(complete(self, LayoutError))


def check_subject(values: Mapping) -> None:
    """Every rule of MUSAR Subject's settings; LayoutError naming the input."""
    v = check_values(LayoutError, values, rules_of(SubjectSettings))
    if "caption" in v and not v["caption"].strip():
        raise LayoutError("the subject caption is empty: describe the subject in a few words "
                          "(e.g. 'a red ceramic mug')")


# ---- MUSAR Layout Region ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class RegionSettings:
    mode: str = setting("hard", REGION_MODES, "'hard': tokens inside see only this condition; "
                        "'soft': a bias on the dynamic route (needs dynamic routing).")
    strength: float = setting(0.5, Limit(0.0, 1.0, 0.05), "Soft mode: how much the region raises "
                              "its condition's share of attention in the route (1 = always wins) "
                              "[chosen 0.5]. Ignored by hard regions.")

    def __post_init__(self):
        check_region_settings(complete(self, RoutingError))


def check_region_settings(values: Mapping) -> None:
    """Every rule of MUSAR Layout Region's settings; RoutingError naming the input."""
    check_values(RoutingError, values, rules_of(RegionSettings))


# ---- MUSAR Reference Label --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelSettings:
    reference: int = setting(1, Limit(1, MAX_REFERENCES, 1, integer=True),
                             "Which reference: 1 = the first ReferenceLatent of the chain.")
    caption: str = setting("", TEXT, "Its name in the routing legend (empty: 'reference n').",
                           multiline=False)
    color: str = setting("", TEXT, "Its colour in the routing overlay as '#RRGGBB' (empty: the "
                         "palette colour of its place).", multiline=False)
    strength: float = setting(1.0, Limit(0.0, 1.0, 0.05), "How much the image may attend to "
                              "this reference: its share of attention is scaled by this (1 = as "
                              "the model does; 0 = the image does not see it). Lower it for a "
                              "reference that dominates the others.", optional=True)

    def __post_init__(self):
        check_label(complete(self, LayoutError))


def check_label(values: Mapping) -> None:
    """Every rule of MUSAR Reference Label's settings; LayoutError naming the input."""
    v = check_values(LayoutError, values, rules_of(LabelSettings))
    if "color" in v:
        parse_color(v["color"])


def parse_color(text: str) -> tuple[float, float, float] | None:
    """'#RRGGBB' (or 'RRGGBB') -> RGB 0..1; '' -> None (the palette colour)."""
    raw = text.strip().lstrip("#")
    if not raw:
        return None
    try:
        if len(raw) != 6:
            raise ValueError
        return tuple(int(raw[i:i + 2], 16) / 255 for i in (0, 2, 4))
    except ValueError:
        raise LayoutError(f"color: expected '#RRGGBB' (e.g. '#e53935') or empty for the palette "
                          f"colour, got {text!r}") from None


# ---- MUSAR Load Dual LoRA ---------------------------------------------------------------------
LORA_STRENGTH = Limit(-2.0, 2.0, 0.05)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRASettings:
    lora_name: str = setting(None, TEXT, "A .safetensors file in models/loras.")
    strength_noisy: float = setting(1.0, LORA_STRENGTH, "Strength of the noisy-image branch "
                                    "(generated image tokens).")
    strength_subject: float = setting(1.0, LORA_STRENGTH, "Strength of the subject branch "
                                      "(reference image tokens).")

    def __post_init__(self):
        check_lora_settings(complete(self, MusarError))


def check_lora_settings(values: Mapping) -> None:
    """Every rule of MUSAR Load Dual LoRA's settings (the file itself is looked up by the node,
    inside ComfyUI's loras folders); MusarError naming the input."""
    check_values(MusarError, values, rules_of(LoRASettings))
