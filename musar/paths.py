"""Path confinement: a user-given path is accepted only when, after resolving symlinks and
``..``, it lies inside one of the allowed folders (which are resolved the same way).

Pure ``os.path``; the ComfyUI side (nodes/paths.py) decides which folders are allowed. Nothing
here tells whether a refused path exists.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def real(path) -> str | None:
    """The absolute real path (symlinks and ``..`` resolved), or None for a malformed path."""
    try:
        text = os.fspath(path)
        if not isinstance(text, str) or "\x00" in text:
            return None
        return os.path.realpath(text)
    except (TypeError, ValueError, OSError):
        return None


def is_inside(path, root) -> bool:
    """``path`` (resolved) is ``root`` (resolved) or lies below it."""
    p, r = real(path), real(root)
    if p is None or r is None:
        return False
    try:
        return os.path.commonpath([p, r]) == r
    except ValueError:  # different drives on Windows
        return False


def resolve_inside(path, roots: Iterable) -> str | None:
    """The real path of ``path`` if it lies inside one of ``roots``, else None.

    A relative path is tried against each root in order: the first candidate that exists wins,
    else the first one that stays inside the allowed folders (its caller reports it missing).
    An absolute path must itself resolve inside one of the roots. ``~`` is not expanded."""
    roots = [r for r in (real(root) for root in roots) if r is not None]
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not roots or not isinstance(text, str) or not text.strip():
        return None
    candidates = [text] if os.path.isabs(text) else [os.path.join(r, text) for r in roots]
    inside = [c for c in (real(c) for c in candidates)
              if c is not None and any(is_inside(c, r) for r in roots)]
    existing = [c for c in inside if os.path.exists(c)]
    return (existing or inside or [None])[0]
