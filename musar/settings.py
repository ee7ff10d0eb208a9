"""What the user chose on a MUSAR node: one frozen, keyword-only dataclass per node, built from
the node's inputs by name, and one check function per settings object - the single home of
every rule and its wording.

A check function takes the node's inputs as a mapping; ``None`` means "not known yet" (ComfyUI
passes None for an input linked from another node at validation time) and skips every rule that
needs that value. The node calls it from ``validate_inputs`` (literal values, before anything
runs) and the dataclass calls it again on construction (every value, linked ones included, at
execute time). ComfyUI skips its own min / max / combo checks for every input that
``validate_inputs`` names, and never checks V3 combos or NaN, so the ranges and option lists live
here and the node schemas read their min / max / step from ``LIMITS``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from numbers import Real

from .errors import LayoutError, MusarError, RoutingError
from .images import CROP_MODES
from .layout import MAX_REFERENCES, POSITION_MODES
from .regions import REGION_MODES
from .routing import parse_blocks


@dataclasses.dataclass(frozen=True)
class Limit:
    """Range of a numeric input; ``schema()`` gives the node's min / max / step."""

    low: float
    high: float
    step: float
    integer: bool = False

    def schema(self) -> dict:
        return {"min": self.low, "max": self.high, "step": self.step}


LIMITS = {
    "start_percent": Limit(0.0, 1.0, 0.01),
    "end_percent": Limit(0.0, 1.0, 0.01),
    "threshold": Limit(0.0, 1.0, 0.01),
    "smoothing": Limit(1, 15, 2, integer=True),
    "strength": Limit(0.0, 2.0, 0.05),
    "step": Limit(-1, 10000, 1, integer=True),
    "opacity": Limit(0.0, 1.0, 0.05),
    "reference_size": Limit(64, 2048, 16, integer=True),
    "region_strength": Limit(0.0, 1.0, 0.05),
    "reference": Limit(1, MAX_REFERENCES, 1, integer=True),
}


def _number(error: type[MusarError], name: str, value, key: str | None = None) -> None:
    limit = LIMITS[key or name]
    kind = "a whole number" if limit.integer else "a number"
    if isinstance(value, bool) or not isinstance(value, Real) or (
            limit.integer and not float(value).is_integer()):
        raise error(f"{name}: expected {kind} from {limit.low} to {limit.high}, got {value!r}")
    if not math.isfinite(value):
        raise error(f"{name}: expected a finite number from {limit.low} to {limit.high}, got "
                    f"{value}; check the node that feeds it")
    if not limit.low <= value <= limit.high:
        raise error(f"{name}: expected {kind} from {limit.low} to {limit.high}, got {value}")


def _flag(error: type[MusarError], name: str, value) -> None:
    if not isinstance(value, bool):
        raise error(f"{name}: expected true or false, got {value!r}")


def _text(error: type[MusarError], name: str, value) -> None:
    if not isinstance(value, str):
        raise error(f"{name}: expected text, got {value!r}")


def _choice(error: type[MusarError], name: str, value, options: tuple[str, ...]) -> None:
    if value not in options:
        valid = ", ".join(repr(o) for o in options)
        raise error(f"{name}: unknown option {value!r}, expected one of {valid}")


def _known(values: Mapping, kinds: dict[str, str]) -> dict:
    unknown = set(values) - set(kinds)
    if unknown:
        raise MusarError(f"unknown setting(s) {sorted(unknown)}: expected {sorted(kinds)}")
    return {k: v for k, v in values.items() if v is not None}


def _check_kinds(error: type[MusarError], values: dict, kinds: dict[str, str]) -> None:
    for name, value in values.items():
        kind = kinds[name]
        if kind == "flag":
            _flag(error, name, value)
        elif kind == "number":
            _number(error, name, value)
        else:
            _text(error, name, value)


# ---- MUSAR Apply Routing ----------------------------------------------------------------------
ROUTING_KINDS = {"static_routing": "flag", "dynamic_routing": "flag", "start_percent": "number",
                 "end_percent": "number", "routing_blocks": "text", "threshold": "number",
                 "smoothing": "number", "symmetric": "flag", "strength": "number",
                 "condition_cache": "flag", "positions": "text", "block_prompt_references": "flag"}


def check_routing(values: Mapping) -> None:
    """Every rule of MUSAR Apply Routing's settings; RoutingError naming the input."""
    v = _known(values, ROUTING_KINDS)
    _check_kinds(RoutingError, v, ROUTING_KINDS)
    if "smoothing" in v and v["smoothing"] % 2 == 0:
        raise RoutingError(f"smoothing: expected an odd window size (1, 3, 5 ...), got {v['smoothing']}")
    if "routing_blocks" in v:
        parse_blocks(v["routing_blocks"])  # syntax only; indices are checked against the model
    if "positions" in v:
        _choice(RoutingError, "positions", v["positions"], POSITION_MODES)
    if v.get("start_percent", 0.0) > v.get("end_percent", 1.0):
        raise RoutingError(f"start_percent ({v['start_percent']}) is after end_percent "
                           f"({v['end_percent']}): dynamic routing would never run; lower "
                           "start_percent or raise end_percent")
    if v.get("symmetric") and v.get("dynamic_routing") is False:
        raise RoutingError("symmetric routing restricts conditions to their routed region: it "
                           "needs dynamic routing on (turn dynamic_routing on or symmetric off)")
    if v.get("symmetric") and v.get("condition_cache"):
        raise RoutingError("symmetric routing and the condition cache conflict (cached conditions "
                           "are not recomputed, so their routed view cannot change): turn one off")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoutingSettings:
    """MUSAR Apply Routing's inputs (same names, same defaults)."""

    static_routing: bool = True
    dynamic_routing: bool = True
    start_percent: float = 0.2
    end_percent: float = 1.0
    routing_blocks: str = "double"
    threshold: float = 0.0
    smoothing: int = 3
    symmetric: bool = False
    strength: float = 1.0
    condition_cache: bool = False
    positions: str = "shared"
    block_prompt_references: bool = False  # MUSAR Route References only [chosen: off]

    def __post_init__(self):
        check_routing(_fields(self))


# ---- MUSAR Routing Preview --------------------------------------------------------------------
PREVIEW_KINDS = {"step": "number", "opacity": "number"}


def check_preview(values: Mapping) -> None:
    """Every rule of MUSAR Routing Preview's settings; RoutingError naming the input."""
    _check_kinds(RoutingError, _known(values, PREVIEW_KINDS), PREVIEW_KINDS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreviewSettings:
    step: int = -1
    opacity: float = 0.5

    def __post_init__(self):
        check_preview(_fields(self))


# ---- MUSAR Subject ----------------------------------------------------------------------------
SUBJECT_KINDS = {"caption": "text", "crop": "text", "reference_size": "number"}


def check_subject(values: Mapping) -> None:
    """Every rule of MUSAR Subject's settings; LayoutError naming the input."""
    v = _known(values, SUBJECT_KINDS)
    _check_kinds(LayoutError, v, SUBJECT_KINDS)
    if "caption" in v and not v["caption"].strip():
        raise LayoutError("the subject caption is empty: describe the subject in a few words "
                          "(e.g. 'a red ceramic mug')")
    if "crop" in v:
        _choice(LayoutError, "crop", v["crop"], CROP_MODES)
    if v.get("reference_size", 16) % 16:
        raise LayoutError(f"reference_size: expected a multiple of 16, got {v['reference_size']}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubjectSettings:
    caption: str = "a subject"
    crop: str = "center crop"
    reference_size: int = 512

    def __post_init__(self):
        check_subject(_fields(self))


# ---- MUSAR Layout Region ----------------------------------------------------------------------
REGION_KINDS = {"mode": "text", "strength": "number"}


def check_region_settings(values: Mapping) -> None:
    """Every rule of MUSAR Layout Region's settings; RoutingError naming the input."""
    v = _known(values, REGION_KINDS)
    if "strength" in v:
        _number(RoutingError, "strength", v["strength"], "region_strength")
    if "mode" in v:
        _text(RoutingError, "mode", v["mode"])
        _choice(RoutingError, "mode", v["mode"], REGION_MODES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegionSettings:
    mode: str = "hard"
    strength: float = 0.5  # soft mode [chosen]: bias on the attention share, see musar.regions

    def __post_init__(self):
        check_region_settings(_fields(self))


# ---- MUSAR Reference Label --------------------------------------------------------------------
LABEL_KINDS = {"reference": "number", "caption": "text", "color": "text"}


def check_label(values: Mapping) -> None:
    """Every rule of MUSAR Reference Label's settings; LayoutError naming the input."""
    v = _known(values, LABEL_KINDS)
    _check_kinds(LayoutError, v, LABEL_KINDS)
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelSettings:
    reference: int = 1
    caption: str = ""
    color: str = ""

    def __post_init__(self):
        check_label(_fields(self))


def verdict(check, values: Mapping) -> bool | str:
    """What a node's ``validate_inputs`` returns: True, or the message of the first broken rule."""
    try:
        check(values)
    except MusarError as e:
        return str(e)
    return True


def _fields(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
