"""The primitive checks every MUSAR setting goes through, and the two helpers every node uses.

A settings object (musar/settings.py, musar/train/config.py) names a *rule* per value:

* a :class:`Limit` - a number in a range (finite; a whole number where ``integer``);
* :data:`FLAG` - true or false;
* :data:`TEXT` - a string;
* a tuple of options - one of them (ComfyUI does not check V3 combo values: any string can
  arrive).

:func:`check_values` applies the rules to a mapping of values in which ``None`` means "not
known yet" (ComfyUI passes None to ``validate_inputs`` for an input linked from another node)
and skips it. Every message names the input and says what was expected and what arrived.

A settings dataclass declares each field once with :func:`setting`: its default, its rule and
the tooltip of the node input it is (for the nodes that show it). :func:`rules_of` and
:func:`input_names` read those declarations; the node side (nodes/inputs.py) builds the node's
widgets, its ``validate_inputs`` and the settings object from them, so a setting is written
in one place.

The node side: ``validate_inputs`` returns :func:`verdict` of the settings' check on the literal
values; ``execute`` builds the settings object, whose ``__post_init__`` refuses a value that
arrived empty (:func:`complete`) and runs the same check on every value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from numbers import Real

from .errors import MusarError

FLAG = "true or false"
TEXT = "text"


@dataclasses.dataclass(frozen=True)
class Limit:
    """Range of a numeric setting: ``low`` .. ``high`` (``high`` may be ``math.inf``; ``above``
    leaves ``low`` itself out); whole numbers may also have to be ``odd`` or a ``multiple`` of a
    number (``why`` says why, in the error). ``schema()`` gives a node widget its min / max / step."""

    low: float
    high: float
    step: float = 1
    integer: bool = False
    above: bool = False
    odd: bool = False
    multiple: int = 1
    why: str = ""

    def comfy_checks_it(self) -> bool:
        """A plain whole-number range: ComfyUI's own check (int conversion, min, max) is the
        whole rule, so a node leaves the input to it (its error marks just that input)."""
        return self.integer and not self.above and not self.odd and self.multiple == 1

    def schema(self) -> dict:
        return {"min": self.low, "max": self.high, "step": self.step}

    def span(self) -> str:
        """The range in words: 'from 0 to 10', '>= 1', '> 0.0 and <= 10.0'."""
        if self.above:
            return f"> {self.low}" + ("" if math.isinf(self.high) else f" and <= {self.high}")
        return f">= {self.low}" if math.isinf(self.high) else f"from {self.low} to {self.high}"


Rule = Limit | tuple | str  # a Limit, a tuple of options, FLAG or TEXT


def setting(default, rule: Rule, tooltip: str | Mapping[str, str] = "", *,
            nodes: tuple[str, ...] | None = None, **widget):
    """A field of a settings dataclass that is also a node input. ``tooltip``: one text, or one
    per node; ``nodes``: the nodes that show it (None: every node of the class); ``widget``:
    extra widget options (``multiline``, ``control_after_generate``, ``round`` ...)."""
    return dataclasses.field(default=default, metadata={
        "rule": rule, "tooltip": tooltip, "nodes": nodes, "widget": widget})


def default_of(field: dataclasses.Field, node: str | None = None):
    """A declared field's default on ``node``: its own per-node default when it has one
    (``setting(..., defaults={node: value})``; the settings' docs say why), else the field's."""
    return field.metadata["widget"].get("defaults", {}).get(node, field.default)


def _declared(cls, node: str | None):
    for f in dataclasses.fields(cls):
        if "rule" in f.metadata and (node is None or f.metadata["nodes"] is None
                                     or node in f.metadata["nodes"]):
            yield f


def rules_of(cls, node: str | None = None) -> dict[str, Rule]:
    """{field: rule} of a settings class (only the fields ``node`` shows, when given)."""
    return {f.name: f.metadata["rule"] for f in _declared(cls, node)}


def input_names(cls, node: str | None = None) -> list[str]:
    """The node inputs a settings class declares, in order (the order of the node's widgets)."""
    return [f.name for f in _declared(cls, node)]


def declared(cls, node: str | None = None) -> list[dataclasses.Field]:
    """The declared fields themselves (name, default, rule, tooltip, widget options)."""
    return list(_declared(cls, node))


def number(error: type[MusarError], name: str, value, limit: Limit):
    """``value`` inside ``limit``, as int (whole-number limits) or float; ``error`` otherwise."""
    kind = "a whole number" if limit.integer else "a number"
    if isinstance(value, bool) or not isinstance(value, Real) or (
            limit.integer and math.isfinite(value) and not float(value).is_integer()):
        raise error(f"{name}: expected {kind} {limit.span()}, got {value!r}")
    if not math.isfinite(value):
        raise error(f"{name}: expected a finite number {limit.span()}, got {value}; check the "
                    "node or setting that feeds it")
    if value < limit.low or value > limit.high or (limit.above and value == limit.low):
        raise error(f"{name}: expected {kind} {limit.span()}, got {value}")
    if limit.odd and value % 2 == 0:
        raise error(f"{name}: expected an odd whole number (1, 3, 5 ...) {limit.span()}, got {value}")
    if limit.multiple > 1 and value % limit.multiple:
        raise error(f"{name}: expected a multiple of {limit.multiple}{limit.why} {limit.span()}, got {value}")
    return int(value) if limit.integer else float(value)


def flag(error: type[MusarError], name: str, value) -> bool:
    if not isinstance(value, bool):
        raise error(f"{name}: expected true or false, got {value!r}")
    return value


def text(error: type[MusarError], name: str, value) -> str:
    if not isinstance(value, str):
        raise error(f"{name}: expected text, got {value!r}")
    return value


def choice(error: type[MusarError], name: str, value, options: tuple):
    if value not in options:
        valid = ", ".join(repr(o) for o in options)
        raise error(f"{name}: unknown option {value!r}, expected one of {valid}")
    return value


def check_names(error: type[MusarError], values: Mapping, names, what: str = "setting") -> None:
    """Every key of ``values`` is one of ``names`` (a misspelt setting is never ignored)."""
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise error(f"unknown {what}(s) {unknown}: expected some of {list(names)}")


def check_values(error: type[MusarError], values: Mapping, rules: Mapping) -> dict:
    """The known values (None skipped), each checked by its rule and normalised (whole numbers
    int, other numbers float); ``error`` naming the first input that breaks its rule."""
    check_names(error, values, rules)
    known = {}
    for name, value in values.items():
        if value is None:
            continue
        rule = rules[name]
        if isinstance(rule, Limit):
            known[name] = number(error, name, value, rule)
        elif isinstance(rule, tuple):
            known[name] = choice(error, name, value, rule)
        else:
            known[name] = (flag if rule == FLAG else text)(error, name, value)
    return known


def complete(settings, error: type[MusarError]) -> dict:
    """The fields of a settings dataclass; ``error`` if one arrived empty (None): at execute time
    every value is known, so None means the node that feeds the input produced nothing."""
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    empty = [name for name, value in values.items() if value is None]
    if empty:
        raise error(f"{', '.join(empty)} arrived empty (None); expected a value - check the node "
                    "or setting that feeds it")
    return values


def verdict(check: Callable[[Mapping], object] | None, values: Mapping,
            **lookups: Callable) -> bool | str:
    """What a node's ``validate_inputs`` returns: True, or the message of the first broken rule.
    ``check(values)`` is the settings' check; each ``lookups[name](value)`` then runs on a known
    value (the node's own lookups, e.g. a file name confined to a ComfyUI folder)."""
    try:
        if check is not None:
            check(values)
        for name, lookup in lookups.items():
            if values.get(name) is not None:
                lookup(values[name])
    except MusarError as e:
        return str(e)
    return True
