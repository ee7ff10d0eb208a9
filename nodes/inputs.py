"""Number widgets of the MUSAR nodes, with min / max / step from the one ``LIMITS`` table.

The checks themselves live in musar/ (musar/checks.py primitives, one check function per
settings object in musar/settings.py); every node follows the same pattern::

    @classmethod
    def validate_inputs(cls, a, b):                  # literal values; None = linked
        return verdict(check_x, dict(a=a, b=b))      # + lookups=... for files and folders
    @classmethod
    def execute(cls, ..., a, b):
        settings = XSettings(a=a, b=b)               # every value: empty or bad -> MusarError
"""

from __future__ import annotations

from comfy_api.latest import io

from ..musar.settings import LIMITS


def number(name: str, default, tooltip: str, limit: str | None = None, **kw):
    """An Int (whole-number limit) or Float input ``name`` bounded by ``LIMITS[limit or name]``."""
    bounds = LIMITS[limit or name]
    kind = io.Int if bounds.integer else io.Float
    return kind.Input(name, default=default, **bounds.schema(), tooltip=tooltip, **kw)
