"""Path confinement: a user-given path is accepted only when, after resolving symlinks and
``..``, it lies inside one of the allowed folders (which are resolved the same way).

Pure ``os.path``; the ComfyUI side (nodes/paths.py) decides which folders are allowed. Nothing
here tells whether a refused path exists.
"""

from __future__ import annotations

import fnmatch
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


def folder_files(folder, patterns: Iterable[str]) -> list[str]:
    """The plain names of the files directly inside ``folder`` that match one of ``patterns``
    (``fnmatch``, case-insensitive) and resolve (symlinks followed) to a file directly inside
    it, sorted: the options of a combo that picks one file of a fixed folder."""
    root = real(folder)
    if root is None or not os.path.isdir(root):
        return []
    wanted = [p.lower() for p in patterns]
    return sorted(name for name in os.listdir(root)
                  if any(fnmatch.fnmatchcase(name.lower(), p) for p in wanted)
                  and _direct_file(root, name))


def folder_file(folder, name, patterns: Iterable[str]) -> str | None:
    """The real path of ``name`` if it is one of ``folder_files(folder, patterns)``, else None
    (a combo value can be any string: only a listed plain name is accepted)."""
    if not isinstance(name, str) or name not in folder_files(folder, patterns):
        return None
    return real(os.path.join(real(folder), name))


def _direct_file(root: str, name: str) -> bool:
    path = real(os.path.join(root, name))
    return path is not None and os.path.dirname(path) == root and os.path.isfile(path)
