"""Image decoding, diptych panel extraction and resizing (numpy + PIL only).

Panel detection (``padding=None``) works on one Subjects200K picture - two square panels of
the same size side by side on a uniform padding colour:

1. padding colour = per-channel median of the picture's outer 1-px frame;
2. a pixel is "content" when any channel differs from it by more than ``tolerance``;
3. the separator is the run of content-free columns, strictly between the first and the last
   content column, whose centre is nearest the middle of the picture; the content left of it
   belongs to the left panel, right of it to the right panel;
4. each content extent is tightened against JPEG ringing: while its outermost line's mean
   difference from the padding colour is under a quarter of the strongest of the 16 lines
   inside it, that line is dropped (at most 16 lines per side);
5. panel size s = the largest content extent (rows, left columns, right columns) - photos
   reach their panel's edges, so this is exact unless every edge of both panels is padding-
   coloured;
6. each panel window (s wide) is placed to contain its content; when the content does not
   pin it (a padding-coloured panel edge), the OminiControl convention decides: top margin
   = left margin = separator width.

With ``padding=p`` the OminiControl crop is used as is: s = H - 2p, left panel at (p, p),
right panel at (s + 2p, p).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..paths import resolve_inside

logger = logging.getLogger(__name__)

DIPTYCH_ASPECT = (1.5, 2.5)  # accepted width / height of a two-panel picture


class BadRow(Exception):
    """Internal signal: a row's image data cannot be used. ``reason`` is a records.REASONS key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(cell, base_dir: Path | None = None, min_side: int = 0,
                 limit: Path | None = None) -> Image.Image:
    """Decode a parquet image cell (HF struct{bytes, path}, raw bytes, a path string) or a file
    ``Path`` the reader listed itself, to RGB. A path written in the data is taken relative to
    ``base_dir`` and read only when it resolves inside ``limit`` (default ``base_dir``: the
    dataset's own folder); otherwise the row is skipped as ``outside_dataset``."""
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        cell = path if not data and path else data
    if cell is None or cell == b"" or cell == "":
        raise BadRow("missing_image", "empty cell")
    if isinstance(cell, str):
        cell = _data_path(cell, base_dir, limit or base_dir)
    if isinstance(cell, Path):
        if not cell.is_file():
            raise BadRow("missing_image", f"file not found: {cell.name}")
        source = cell
    else:
        source = io.BytesIO(cell)
    try:
        with Image.open(source) as image:
            image.load()
            rgb = image.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... on bad bytes
        raise BadRow("corrupt_image", f"{type(exc).__name__}: {exc}") from None
    if min(rgb.size) < max(1, min_side):
        raise BadRow("wrong_size", f"{rgb.width}x{rgb.height} is below min_side {min_side}")
    return rgb


def _data_path(text: str, base_dir: Path | None, limit: Path | None) -> Path:
    """A path read from the data, confined to ``limit`` (symlinks and '..' resolved)."""
    candidate = text if os.path.isabs(text) or base_dir is None else os.path.join(base_dir, text)
    found = resolve_inside(candidate, [limit]) if limit is not None and os.path.isabs(candidate) \
        else None
    if found is None:
        raise BadRow("outside_dataset", "an image path in the data leads outside the dataset's folder")
    return Path(found)


def split_diptych(image: Image.Image, padding: int | None = None, tolerance: int = 24,
                  min_side: int = 0) -> tuple[Image.Image, Image.Image]:
    """The two square panels of a Subjects200K picture (see the module doc for the method)."""
    w, h = image.size
    if not DIPTYCH_ASPECT[0] <= w / h <= DIPTYCH_ASPECT[1]:
        raise BadRow("wrong_size", f"{w}x{h} is not a two-panel picture (width/height "
                                   f"{w / h:.2f} outside {DIPTYCH_ASPECT})")
    if padding is None:
        top, x0, x1, size = detect_panels(np.asarray(image), tolerance)
    else:
        top, x0, size = padding, padding, h - 2 * padding
        x1 = size + 2 * padding
        if size <= 0 or x1 + size > w:
            raise BadRow("bad_layout", f"padding {padding} does not fit a {w}x{h} picture")
    if size < max(1, min_side):
        raise BadRow("wrong_size", f"panel size {size} is below min_side {min_side}")
    left = image.crop((x0, top, x0 + size, top + size))
    right = image.crop((x1, top, x1 + size, top + size))
    return left, right


def detect_panels(rgb: np.ndarray, tolerance: int) -> tuple[int, int, int, int]:
    """(top, left_x, right_x, size) of the two panels of an (H, W, 3) uint8 diptych."""
    h, w = rgb.shape[:2]
    frame = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    pad = np.median(frame, axis=0)
    diff = np.abs(rgb.astype(np.int16) - pad.astype(np.int16)).max(axis=2)
    content = diff > tolerance
    rows = np.flatnonzero(content.any(axis=1))
    if rows.size == 0:
        raise BadRow("bad_layout", "the picture is a single colour")
    column_has_content = content.any(axis=0)
    cols = np.flatnonzero(column_has_content)
    first, last = int(cols[0]), int(cols[-1])
    gaps = _false_runs(column_has_content[first:last + 1], offset=first)
    if not gaps:
        raise BadRow("bad_layout", "no padding-coloured separator between the two panels")
    gap = min(gaps, key=lambda g: abs((g[0] + g[1]) / 2 - (w - 1) / 2))
    column_strength = diff[rows[0]:rows[-1] + 1].mean(axis=0)
    row_strength = diff[:, first:last + 1].mean(axis=1)
    left_ext = _tighten(column_strength, first, gap[0] - 1)
    right_ext = _tighten(column_strength, gap[1] + 1, last)
    row_ext = _tighten(row_strength, int(rows[0]), int(rows[-1]))
    size = max(e[1] - e[0] + 1 for e in (row_ext, left_ext, right_ext))
    top = _place(row_ext, size, ideal=(h - size) // 2, limit=h)
    x0 = _place(left_ext, size, ideal=top, limit=w)
    x1 = _place(right_ext, size, ideal=x0 + size + top, limit=w)
    if x1 < x0 + size:
        raise BadRow("bad_layout", f"panels of size {size} at x={x0} and x={x1} would overlap")
    return top, x0, x1, size


def _false_runs(mask: np.ndarray, offset: int) -> list[tuple[int, int]]:
    """Inclusive (start, end) index runs where ``mask`` is False, shifted by ``offset``."""
    padded = np.concatenate([[True], mask, [True]]).astype(np.int8)
    edges = np.diff(padded)
    starts, ends = np.flatnonzero(edges == -1), np.flatnonzero(edges == 1) - 1
    return [(int(s) + offset, int(e) + offset) for s, e in zip(starts, ends, strict=True)]


def _tighten(strength: np.ndarray, start: int, end: int, reach: int = 16,
             ratio: float = 0.25) -> tuple[int, int]:
    """Drop weak outer lines (JPEG ringing) from the inclusive extent [start, end]: a line is
    weak when its strength is under ``ratio`` x the strongest of the ``reach`` lines inside."""
    for _ in range(reach):
        if end - start < 2 * reach or strength[start] >= ratio * strength[start + 1:start + 1 + reach].max():
            break
        start += 1
    for _ in range(reach):
        if end - start < 2 * reach or strength[end] >= ratio * strength[end - reach:end].max():
            break
        end -= 1
    return start, end


def _place(extent: tuple[int, int], size: int, ideal: int, limit: int) -> int:
    """Start of a ``size`` window inside [0, limit) containing ``extent``, nearest ``ideal``."""
    lo, hi = max(extent[1] - size + 1, 0), min(extent[0], limit - size)
    if lo > hi:
        raise BadRow("bad_layout", f"no {size}-px window holds content {extent} in {limit} px")
    return min(max(ideal, lo), hi)


def fit(image: Image.Image, height: int, width: int) -> Image.Image:
    """Centre-crop ``image`` to the aspect of (height, width), then resize (Lanczos)."""
    if image.size == (width, height):
        return image.copy()
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS,
                        centering=(0.5, 0.5))
