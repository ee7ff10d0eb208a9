"""Tier 1: pure torch, no ComfyUI on sys.path. ``musar`` is imported as a top-level package;
helper modules of this folder (``tiny``: the tiny FLUX stand-ins) import by name."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
