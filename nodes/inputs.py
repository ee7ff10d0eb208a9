"""Node inputs from the settings classes: each setting is declared once (musar.checks.setting:
default, rule, tooltip) and a node builds from that declaration

* its widgets (``widgets``): Boolean, Int / Float with the rule's min / max / step, Combo with
  the rule's options, String - so a widget never offers a value its own check refuses;
* its ``validate_inputs`` (``validation``): a classmethod whose signature names the settings'
  inputs that ComfyUI cannot check itself - numbers (NaN passes its min / max), combos (not
  checked for V3 nodes), text, flags, whole numbers with a rule beyond their range (odd, a
  multiple of 16) and the node's lookups (a file or folder confined to ComfyUI's folders) - and
  runs the settings' check on their literal values. A plain whole-number range is left to
  ComfyUI (naming an input switches ComfyUI's checks off for it, and ComfyUI reports a failed
  ``validate_inputs`` on every input it names, so naming fewer marks only the bad input). Never
  ``**kwargs``: that would switch ComfyUI's checks off for every input of the node;
* its settings object (``settings_of``): the dataclass built from the node's inputs by name,
  which checks every value again, linked ones included::

      inputs=[io.Model.Input("model", ...), *widgets(RoutingSettings, APPLY, what="subject")]
      validate_inputs = validation(RoutingSettings, check_routing, APPLY)
      def execute(cls, model, **inputs):
          settings = settings_of(RoutingSettings, inputs, APPLY)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from comfy_api.latest import io

from ..musar.checks import FLAG, TEXT, Limit, declared, default_of, verdict


def widget(field, node: str | None = None, **fmt):
    """The ComfyUI input of one declared settings field."""
    meta = field.metadata
    rule, tooltip, extra = meta["rule"], meta["tooltip"], dict(meta["widget"])
    if isinstance(tooltip, Mapping):
        tooltip = tooltip[node]
    if isinstance(extra.get("optional"), tuple):  # optional on the nodes it names only
        extra["optional"] = node in extra["optional"]
    tooltip = tooltip.format(**fmt) if fmt else tooltip
    value = default_of(field, node)
    default = {} if value is None else {"default": value}
    extra.pop("defaults", None)
    if isinstance(rule, Limit):
        kind = io.Int if rule.integer else io.Float
        return kind.Input(field.name, **default, **rule.schema(), tooltip=tooltip, **extra)
    if isinstance(rule, tuple):
        return io.Combo.Input(field.name, options=list(rule), **default, tooltip=tooltip, **extra)
    if rule == FLAG:
        return io.Boolean.Input(field.name, **default, tooltip=tooltip, **extra)
    if rule == TEXT:
        return io.String.Input(field.name, **default, tooltip=tooltip, **extra)
    raise TypeError(f"no widget for the rule {rule!r} of {field.name}")


def widgets(cls, node: str | None = None, overrides: Mapping | None = None, **fmt) -> list:
    """The widgets of a settings class's inputs for ``node``, in declaration order;
    ``overrides`` replaces the widget of a named input (e.g. a combo of files)."""
    overrides = overrides or {}
    return [overrides.get(f.name) or widget(f, node, **fmt) for f in declared(cls, node)]


def validation(cls, check: Callable[[Mapping], object], node: str | None = None,
               **lookups: Callable) -> classmethod:
    """A ``validate_inputs`` classmethod naming the inputs of ``cls`` shown on ``node`` that
    ComfyUI does not check itself, and every lookup's input."""
    names = [f.name for f in declared(cls, node) if f.name in lookups or not (
        isinstance(f.metadata["rule"], Limit) and f.metadata["rule"].comfy_checks_it())]

    def validate_inputs(_cls, **values):
        return verdict(check, {name: values.get(name) for name in names}, **lookups)

    params = [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
               for name in names]
    validate_inputs.__signature__ = inspect.Signature(params)  # what ComfyUI reads (getfullargspec)
    return classmethod(validate_inputs)


def settings_of(cls, inputs: Mapping, node: str | None = None):
    """The settings object of a node's inputs (its other inputs - model, images - left out); an
    input the prompt does not hold takes the node's own default."""
    return cls(**{f.name: inputs[f.name] if f.name in inputs else default_of(f, node)
                  for f in declared(cls, node) if f.name in inputs or default_of(f, node) is not None})
