"""Widget checks shared by the MUSAR nodes' ``validate_inputs`` and ``execute``.

ComfyUI 0.3.75 facts these helpers are built around:

* ``validate_inputs`` receives None for an input linked from another node (its value is only
  known when the graph runs), so a check made there skips None and the same check runs again
  in ``execute`` on every value;
* ComfyUI skips its own min / max / combo checks for every input *named* in ``validate_inputs``
  (for all inputs when the signature has ``**kwargs``), so a node names only the inputs it
  checks itself and checks their bounds here, with the schema's own constants;
* NaN passes ComfyUI's min / max comparisons; V3 combo values are not checked at all.

Usage in a node::

    def _check(lora_name, strength):           # raises a MusarError; skips None (linked)
        inputs.number("strength", strength, -2.0, 2.0, LoRAFormatError)

    validate_inputs(cls, lora_name, strength) -> inputs.validation(_check, lora_name, strength)
    execute(...): inputs.linked_values(lora_name=lora_name, strength=strength); _check(...)
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..musar.errors import MusarError


def validation(check: Callable, *args, **kwargs) -> bool | str:
    """``check(...)`` as a validate_inputs answer: True, or the MusarError's message."""
    try:
        check(*args, **kwargs)
    except MusarError as e:
        return str(e)
    return True


def linked_values(error: type[MusarError] = MusarError, **values) -> None:
    """At execute time every widget value is known: None means a linked node produced nothing."""
    empty = [name for name, value in values.items() if value is None]
    if empty:
        raise error(f"{', '.join(empty)} arrived empty (None) from the linked node; expected a "
                    "value - check the node that feeds it")


def number(name: str, value, low: float, high: float, error: type[MusarError] = MusarError,
           integer: bool = False):
    """A finite number in [low, high] (None: linked, checked at execute time)."""
    if value is None:
        return None
    kind = "an integer" if integer else "a finite number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok or not math.isfinite(value) or not low <= value <= high:
        raise error(f"{name} must be {kind} in {low:g}..{high:g}, got {value!r}")
    return value


def choice(name: str, value, options, error: type[MusarError] = MusarError):
    """One of ``options`` (ComfyUI does not check V3 combo values; any string can arrive)."""
    if value is None or value in options:
        return value
    raise error(f"unknown {name} {value!r}: expected one of {', '.join(map(repr, options))}")
