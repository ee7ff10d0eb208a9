"""The settings of the MUSAR nodes: one check per settings object, the same rules whether a
value is checked at validation (literal, None = linked) or at execute time (every value)."""

import math

import pytest

from musar.checks import verdict
from musar.errors import LayoutError, MusarError, RoutingError
from musar.settings import (
    LIMITS,
    PreviewSettings,
    RoutingSettings,
    SubjectSettings,
    check_preview,
    check_routing,
    check_subject,
)

ROUTING_FLOATS = ["start_percent", "end_percent", "threshold", "strength"]


def test_defaults_are_valid_and_named_like_the_node_inputs():
    assert RoutingSettings().routing_blocks == "double" and RoutingSettings().smoothing == 3
    assert PreviewSettings().step == -1 and SubjectSettings().crop == "center crop"
    with pytest.raises(TypeError):
        RoutingSettings(True)  # keyword-only: positional settings cannot be swapped silently


@pytest.mark.parametrize("name", ROUTING_FLOATS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_routing_numbers_are_refused_naming_the_input(name, bad):
    with pytest.raises(RoutingError, match=f"^{name}: expected a finite number"):
        RoutingSettings(**{name: bad})
    assert verdict(check_routing, {name: bad}).startswith(f"{name}: expected a finite number")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_preview_opacity_is_refused(bad):
    with pytest.raises(RoutingError, match="^opacity: expected a finite number"):
        PreviewSettings(opacity=bad)


@pytest.mark.parametrize("values,match", [
    ({"smoothing": 10001}, "smoothing: expected a whole number from 1 to 15"),
    ({"smoothing": 4}, "odd window"),
    ({"smoothing": 2.5}, "whole number"),
    ({"strength": 2.5}, "strength: expected a number from 0.0 to 2.0"),
    ({"threshold": -0.1}, "threshold"),
    ({"static_routing": "yes"}, "static_routing: expected true or false"),
    ({"routing_blocks": 3}, "routing_blocks: expected text"),
    ({"routing_blocks": "middle"}, "not understood"),
    ({"positions": "sideways"}, "positions: unknown option 'sideways', expected one of 'shared'"),
    ({"start_percent": 0.8, "end_percent": 0.5}, "start_percent"),
    ({"symmetric": True, "dynamic_routing": False}, "needs dynamic"),
    ({"symmetric": True, "condition_cache": True}, "conflict"),
])
def test_bad_routing_settings_are_explained(values, match):
    with pytest.raises(RoutingError, match=match):
        RoutingSettings(**values)
    assert match in verdict(check_routing, values)  # the node's validate_inputs says the same


def test_unknown_values_skip_only_the_rules_that_need_them():
    """validate_inputs passes None for inputs linked from another node."""
    assert check_routing(dict.fromkeys(RoutingSettings.__dataclass_fields__)) is None
    assert check_routing({"start_percent": None, "end_percent": 0.1}) is None
    assert check_routing({"symmetric": True, "dynamic_routing": None}) is None
    with pytest.raises(RoutingError, match="needs dynamic"):
        check_routing({"symmetric": True, "dynamic_routing": False, "smoothing": None})
    assert check_preview({"step": None, "opacity": None}) is None
    assert check_subject({"caption": None, "crop": None, "reference_size": None}) is None


def test_unknown_setting_names_are_refused():
    with pytest.raises(MusarError, match="unknown setting"):
        check_routing({"smothing": 3})


@pytest.mark.parametrize("values,match", [
    ({"caption": "   "}, "caption is empty"),
    ({"crop": "zoom"}, "crop: unknown option 'zoom'"),
    ({"reference_size": 72}, "multiple of 16"),
    ({"reference_size": 4096}, "reference_size: expected a whole number from 64 to 2048"),
    ({"reference_size": math.nan}, "reference_size"),
])
def test_bad_subject_settings_are_layout_errors(values, match):
    with pytest.raises(LayoutError, match=match):
        SubjectSettings(**values)


@pytest.mark.parametrize("values,match", [({"step": 10001}, "step"), ({"step": 1.5}, "whole number"),
                                          ({"opacity": 1.5}, "opacity")])
def test_bad_preview_settings_are_routing_errors(values, match):
    with pytest.raises(RoutingError, match=match):
        PreviewSettings(**values)


def test_limits_give_the_node_schema_its_bounds():
    assert LIMITS["smoothing"].schema() == {"min": 1, "max": 15, "step": 2}
    assert set(LIMITS) >= {*ROUTING_FLOATS, "smoothing", "step", "opacity", "reference_size"}
