"""Exact reading and scoring of toy-world images (docs/TOY_WORLD.md, "Detector and scores").

``read_cells(image)``: every 8 px cell's mean colour -> the nearest palette colour (subject colours
and backgrounds; RGB distance). On rendered images and after a codec round trip this is exact.
``read_slot(cells, slot)``: the slot's 6 x 6 cells -> ``Block``: present (at least half the cells
are subject colours), the best-fitting (pattern, first colour, second colour) and the share of
cells that agree with it. ``score(image, placed)`` compares an image with the blocks it should
show; ``counterfactual(before, after, placed, b, b_new)`` measures transfer (T) and leakage (L)
between two images made with the same seed and one reference swapped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ToyWorldError
from .world import BACKGROUNDS, BLOCK, CELL, COLOURS, NAMES, PATTERNS, SLOTS, Identity, Placed, pattern_mask

SUBJECT = np.array([n in COLOURS for n in NAMES])
PALETTE = np.array([COLOURS.get(n) or BACKGROUNDS[n] for n in NAMES], dtype=np.float64) / 255.0
WELL_FORMED = 0.9  # share of a block's cells that must agree with its best fit (docs [chosen])
ENTANGLED = 0.15  # share of a block's cells in other subjects' colours that makes it entangled


def _pixels(image) -> np.ndarray:
    """PIL image, uint8 / float array or tensor (H, W, 3) -> float64 (H, W, 3) in 0..1."""
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] % CELL or arr.shape[1] % CELL:
        raise ToyWorldError(f"expected one RGB image (H, W, 3) with H and W multiples of {CELL}, "
                            f"got shape {arr.shape}")
    return arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)


def read_cells(image) -> np.ndarray:
    """(H/8, W/8) int: index into NAMES of each cell's nearest palette colour."""
    px = _pixels(image)
    h, w = px.shape[0] // CELL, px.shape[1] // CELL
    means = px.reshape(h, CELL, w, CELL, 3).mean(axis=(1, 3))
    return ((means[:, :, None, :] - PALETTE) ** 2).sum(-1).argmin(-1)


@dataclass(frozen=True)
class Block:
    """What one slot shows. ``fit`` is the agreement of its cells with (pattern, first, second);
    ``identity`` is set when the block is well formed in canonical colour order."""

    slot: str
    present: bool
    pattern: str | None
    first: str | None
    second: str | None
    fit: float
    cells: np.ndarray  # (BLOCK, BLOCK) int indices into NAMES

    @property
    def well_formed(self) -> bool:
        return self.present and self.fit >= WELL_FORMED

    @property
    def colours(self) -> frozenset:
        return frozenset(c for c in (self.first, self.second) if c)


_MASKS = {p: pattern_mask(p) for p in PATTERNS}


def _best_fit(block: np.ndarray) -> tuple[str, int, int, float]:
    best = (PATTERNS[0], -1, -1, -1.0)
    for pattern, mask in _MASKS.items():
        first = np.bincount(block[mask], minlength=len(NAMES))
        second = np.bincount(block[~mask], minlength=len(NAMES))
        first[~SUBJECT], second[~SUBJECT] = -1, -1  # a fit names subject colours only
        a, b = int(first.argmax()), int(second.argmax())
        if a == b:  # the same colour cannot be both: take the better runner-up
            a2, b2 = np.argsort(first)[-2], np.argsort(second)[-2]
            a, b = (a, int(b2)) if first[a] + second[b2] >= first[a2] + second[b] else (int(a2), b)
        fit = (int(first[a]) + int(second[b])) / block.size
        if fit > best[3]:
            best = (pattern, a, b, fit)
    return best


def read_slot(cells: np.ndarray, slot: str, col_offset: int = 0) -> Block:
    r, c = SLOTS[slot]
    block = cells[r:r + BLOCK, col_offset + c:col_offset + c + BLOCK]
    present = bool(SUBJECT[block].mean() >= 0.5)
    if not present:
        return Block(slot, False, None, None, None, 0.0, block)
    pattern, a, b, fit = _best_fit(block)
    return Block(slot, True, pattern, NAMES[a], NAMES[b], fit, block)


def read_panel(image_or_cells, col_offset: int = 0) -> dict[str, Block]:
    cells = image_or_cells if _is_cells(image_or_cells) else read_cells(image_or_cells)
    return {slot: read_slot(cells, slot, col_offset) for slot in SLOTS}


def _is_cells(x) -> bool:
    return isinstance(x, np.ndarray) and x.ndim == 2 and np.issubdtype(x.dtype, np.integer)


def identity_of(block: Block) -> Identity | None:
    """The identity a well-formed block shows (None if the fit is not one, or the colours are in
    reverse order, which no identity renders)."""
    if not block.well_formed or list(COLOURS).index(block.first) > list(COLOURS).index(block.second):
        return None
    return Identity(block.first, block.second, block.pattern)


def _index(names) -> np.ndarray:
    return np.array([NAMES.index(n) for n in names])


def agreement(block: Block, identity: Identity) -> float:
    """Share of the slot's cells equal to ``identity``'s rendering."""
    return float((block.cells == _index(identity.cells().ravel()).reshape(BLOCK, BLOCK)).mean())


def score(image_or_cells, placed: list[Placed]) -> dict:
    """Per subject (in ``placed`` order) and per image, against the blocks the image should show.

    right[i]      subject i's slot agrees with its identity on >= 90 % of cells (slot, pattern,
                  both colours and their arrangement)
    entangled[i]  >= 15 % of subject i's slot cells show another subject's colours
    leaked        cells of subject slots in another subject's colours / all subject-slot cells
    missing       prompted slots without a block; extra: unprompted slots with a block
    duplicated    a subject's colour pair is the fitted pair of a block in another slot
    copies[i]     the slots where subject i's colour pair is fitted besides its own
    """
    blocks = read_panel(image_or_cells)
    idx = [set(_index(p.identity.colours)) for p in placed]
    right, entangled, leaked_cells = [], [], 0
    for i, p in enumerate(placed):
        block = blocks[p.slot]
        others = set().union(*(s for j, s in enumerate(idx) if j != i)) if len(idx) > 1 else set()
        share = float(np.isin(block.cells, list(others)).mean()) if others else 0.0
        leaked_cells += int(round(share * block.cells.size))
        right.append(agreement(block, p.identity) >= WELL_FORMED)
        entangled.append(share >= ENTANGLED)
    prompted = {p.slot for p in placed}
    pairs = {p.slot: frozenset(p.identity.colours) for p in placed}
    copies = [[s for s, b in blocks.items() if s != p.slot and b.present and b.colours == pairs[p.slot]]
              for p in placed]
    return {"right": right, "all_right": all(right), "entangled": entangled,
            "any_entangled": any(entangled), "leaked": leaked_cells / (BLOCK * BLOCK * max(1, len(placed))),
            "missing": sum(not blocks[s].present for s in prompted),
            "extra": sum(b.present for s, b in blocks.items() if s not in prompted),
            "duplicated": sum(map(bool, copies)), "copies": copies, "well_formed": [blocks[p.slot].well_formed for p in placed],
            "fits": [round(agreement(blocks[p.slot], p.identity), 3) for p in placed]}


def counterfactual(before, after, placed: list[Placed], b: int, new: Identity) -> dict:
    """Transfer and leakage of swapping subject ``b``'s reference for one of identity ``new``
    (same seed, same prompt; ``new`` has b's pattern and colours no other subject has).

    T = share of b's slot cells that show one of ``new``'s colours after the swap but did not before;
    L = the same share over the other subjects' slots."""
    cells0 = before if _is_cells(before) else read_cells(before)
    cells1 = after if _is_cells(after) else read_cells(after)
    target = list(_index(new.colours))
    switched = np.isin(cells1, target) & ~np.isin(cells0, target)
    shares = []
    for p in placed:
        r, c = SLOTS[p.slot]
        shares.append(float(switched[r:r + BLOCK, c:c + BLOCK].mean()))
    others = [s for i, s in enumerate(shares) if i != b]
    return {"T": shares[b], "L": float(np.mean(others)) if others else 0.0}
