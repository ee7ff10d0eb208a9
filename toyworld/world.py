"""The toy world "slot blocks": scenes of coloured blocks in four named slots on flat backgrounds.

Geometry (docs/TOY_WORLD.md): a panel is 128 x 128 px = 16 x 16 cells of 8 px = 8 x 8 FLUX image
tokens (a token is 2 x 2 latent pixels, a latent pixel is one cell). Every cell is one flat palette
colour, so the linear cell codec (``codec.py``) is exact. A subject is a block of 6 x 6 cells =
3 x 3 tokens in one of four slots, token-aligned in the panel's corners; the two-token cross
between the slots is always background.

Identity = two different colours + a cell-scale pattern (``Identity``): 10 colours give 45 pairs,
x 4 patterns = 180 identities; the held-out split (``heldout_split``) takes 36 of them (one pattern
of 36 pairs, 9 per pattern), so every colour pair and every pattern still occurs in training.

Words: captions name the slot and the pattern; colours only when asked ("a red and blue striped
block in the top left"). Subject captions (``Identity.item``, "striped block") never name colours.
Pure numpy / PIL; deterministic.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import ToyWorldError, choose

CELL = 8  # px per cell = the codec's downscale factor
PANEL = 128  # px per panel side
GRID = PANEL // CELL  # 16 cells per panel side
BLOCK = 6  # cells per block side (3 tokens)
COLOURS = {  # subject colours, in their canonical order
    "red": (230, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40), "green": (40, 180, 60),
    "cyan": (40, 210, 220), "blue": (40, 70, 230), "purple": (130, 50, 200), "pink": (245, 130, 200),
    "white": (245, 245, 245), "black": (20, 20, 20)}
BACKGROUNDS = {"grey": (128, 128, 128), "slate": (80, 100, 120), "sand": (190, 175, 140)}
PATTERNS = ("plain", "striped", "columned", "checkered")
NAMES = (*COLOURS, *BACKGROUNDS)  # cell classes: index into this tuple
SLOTS = {"top left": (0, 0), "top right": (0, GRID - BLOCK), "bottom left": (GRID - BLOCK, 0),
         "bottom right": (GRID - BLOCK, GRID - BLOCK)}  # slot -> (row, col) of its first cell
DIPTYCH_TEMPLATE = ("An undivided, seamless, and harmonious picture with two objects. "
                    "{desc_left} {desc_right}")  # the pack's default words, panels in spatial order
TEMPLATE_WORDS = ("an", "undivided", ",", "seamless", "and", "harmonious", "picture", "with", "two",
                  "objects", ".", "a", "block", "in", "the", "on", "top", "bottom", "left", "right")


def pattern_mask(pattern: str) -> np.ndarray:
    """(BLOCK, BLOCK) bool: True where the block shows its first colour.
    plain: first colour inside a one-cell frame of the second; striped: rows alternate (first row
    first colour); columned: columns alternate; checkered: cells alternate."""
    r, c = np.mgrid[0:BLOCK, 0:BLOCK]
    masks = {"plain": (r > 0) & (r < BLOCK - 1) & (c > 0) & (c < BLOCK - 1), "striped": r % 2 == 0,
             "columned": c % 2 == 0, "checkered": (r + c) % 2 == 0}
    return choose(masks, pattern, "pattern")


@dataclass(frozen=True, order=True)
class Identity:
    """A subject: two different colours in canonical (COLOURS) order and a pattern."""

    first: str
    second: str
    pattern: str

    def __post_init__(self):
        order = list(COLOURS)
        for colour in (self.first, self.second):
            choose(COLOURS, colour, "colour")
        choose({p: p for p in PATTERNS}, self.pattern, "pattern")
        if order.index(self.first) >= order.index(self.second):
            raise ToyWorldError(f"expected two different colours in the order {', '.join(order)}, "
                                f"got {self.first!r} then {self.second!r}: use Identity.of()")

    @classmethod
    def of(cls, colour_a: str, colour_b: str, pattern: str) -> Identity:
        """Any two different colours, put into canonical order."""
        for colour in (colour_a, colour_b):
            choose(COLOURS, colour, "colour")
        order = list(COLOURS)
        a, b = sorted((colour_a, colour_b), key=order.index)
        return cls(a, b, pattern)

    @classmethod
    def parse(cls, text: str) -> Identity:
        """``"red and blue striped block"`` (the ``name``) back to an Identity."""
        words = str(text).split()
        if len(words) != 5 or words[1] != "and" or words[4] != "block":
            raise ToyWorldError(f"expected '<colour> and <colour> <pattern> block', got {text!r}")
        return cls.of(words[0], words[2], words[3])

    @property
    def colours(self) -> tuple[str, str]:
        return self.first, self.second

    @property
    def item(self) -> str:
        """The subject caption: the pattern only, never the colours ("striped block")."""
        return f"{self.pattern} block"

    @property
    def name(self) -> str:
        return f"{self.first} and {self.second} {self.pattern} block"

    def cells(self) -> np.ndarray:
        """(BLOCK, BLOCK) array of colour names."""
        return np.where(pattern_mask(self.pattern), self.first, self.second)


ALL_IDENTITIES = tuple(Identity(a, b, p) for a, b in itertools.combinations(COLOURS, 2) for p in PATTERNS)


def distinct(identities, avoid_colours=()) -> bool:
    """Pairwise different patterns and no colour in common (nor with ``avoid_colours``): a leaked
    colour or pattern is then visible (the gate's and the evaluation's subject sets)."""
    colours = [c for i in identities for c in i.colours] + list(avoid_colours)
    return len({i.pattern for i in identities}) == len(identities) and len(set(colours)) == len(colours)


@dataclass(frozen=True)
class Placed:
    identity: Identity
    slot: str

    def __post_init__(self):
        choose(SLOTS, self.slot, "slot")


def heldout_split(seed: int, n_pairs: int = 36) -> tuple[Identity, ...]:
    """``n_pairs`` colour pairs (seeded) hold out one pattern each, patterns in equal turns, so
    every pair and every pattern keeps identities in training."""
    pairs = list(itertools.combinations(COLOURS, 2))
    rnd = random.Random(f"toyworld-heldout/{seed}")
    rnd.shuffle(pairs)
    patterns = [PATTERNS[i % len(PATTERNS)] for i in range(n_pairs)]
    rnd.shuffle(patterns)
    return tuple(sorted(Identity(a, b, p) for (a, b), p in zip(pairs[:n_pairs], patterns)))


def phrase(placed: Placed, colours: bool) -> str:
    """ "a striped block in the top left" or, with colours, "a red and blue striped block in ..." """
    ident = placed.identity
    what = f"{ident.first} and {ident.second} {ident.pattern}" if colours else ident.pattern
    return f"a {what} block in the {placed.slot}"


def scene_caption(placed, background: str, colours: bool) -> str:
    """Caption of a scene, blocks in slot order: "a striped block in the top left and a plain
    block in the bottom right on grey." (empty scene: "grey.")."""
    choose(BACKGROUNDS, background, "background")
    order = list(SLOTS)
    parts = [phrase(p, colours) for p in sorted(placed, key=lambda p: order.index(p.slot))]
    body = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "".join(parts)
    return f"{body} on {background}." if body else f"{background}."


def vocabulary() -> tuple[str, ...]:
    """Every word and punctuation token of the world's captions and prompts, in a fixed order."""
    return tuple(dict.fromkeys((*TEMPLATE_WORDS, *COLOURS, *PATTERNS, *BACKGROUNDS)))


def render_cells(placed, background: str) -> np.ndarray:
    """(GRID, GRID) array of colour names (subject colours and the background's name)."""
    choose(BACKGROUNDS, background, "background")
    cells = np.full((GRID, GRID), background, dtype=object)
    slots = [p.slot for p in placed]
    if len(set(slots)) != len(slots):
        raise ToyWorldError(f"expected at most one block per slot, got slots {slots}")
    for p in placed:
        r, c = SLOTS[p.slot]
        cells[r:r + BLOCK, c:c + BLOCK] = p.identity.cells()
    return cells


def cell_indices(placed, background: str) -> np.ndarray:
    """(GRID, GRID) uint8: index into NAMES of every cell."""
    index = {name: i for i, name in enumerate(NAMES)}
    return np.vectorize(index.__getitem__, otypes=[np.uint8])(render_cells(placed, background))


def paint(cells: np.ndarray) -> np.ndarray:
    """Colour names (h, w) -> uint8 pixels (h * CELL, w * CELL, 3)."""
    palette = {**COLOURS, **BACKGROUNDS}
    rgb = np.array([[palette[name] for name in row] for row in cells], dtype=np.uint8)
    return rgb.repeat(CELL, axis=0).repeat(CELL, axis=1)


def render(placed, background: str) -> Image.Image:
    """The panel (PANEL x PANEL RGB) of ``placed`` blocks on ``background``."""
    return Image.fromarray(paint(render_cells(placed, background)), "RGB")


class World:
    """Identities, the held-out split and seeded scene sampling. ``seed`` fixes the split."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.identities = ALL_IDENTITIES
        self.heldout = heldout_split(seed)
        held = set(self.heldout)
        self.train = tuple(i for i in ALL_IDENTITIES if i not in held)
        self.backgrounds = tuple(BACKGROUNDS)
        self.slots = tuple(SLOTS)

    def split(self, name: str) -> tuple[Identity, ...]:
        return choose({"train": self.train, "heldout": self.heldout, "all": self.identities}, name,
                      "split")

    def sample_scene(self, rnd: random.Random, n: int, split: str = "train") -> tuple[list[Placed], str]:
        """``n`` pairwise different identities of ``split`` in ``n`` random slots on a random
        background (all drawn from ``rnd``)."""
        idents = rnd.sample(list(self.split(split)), n)
        slots = rnd.sample(list(SLOTS), n)
        return [Placed(i, s) for i, s in zip(idents, slots)], rnd.choice(self.backgrounds)
