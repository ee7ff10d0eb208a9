"""Tier 1: pure torch, no ComfyUI on sys.path. ``musar`` is imported as a top-level package."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
