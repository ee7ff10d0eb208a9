"""The toy world: subjects (shape x colour x pattern), scenes on named backgrounds, captions.

Rendering is deterministic: the same (subjects, background, placements, rng_seed, panel) always
gives the same pixels. All randomness comes from ``numpy.random.default_rng([rng_seed, stream])``
with separate streams for the layout and the background texture, so a scene re-rendered with
explicit placements (e.g. the same layout with a swapped colour) keeps its background.
"""

import logging
import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .backgrounds import BACKGROUNDS, render_background
from .errors import ToyWorldError, choose
from .shapes import PATTERNS, SHAPES, pattern_mask_hi, shape_coverage

logger = logging.getLogger(__name__)

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 200, 30), "magenta": (200, 50, 200), "cyan": (30, 190, 210)}
PATTERN_COLOUR = (245, 245, 245)  # white stripes / dots
SIZE_RANGES = {1: (0.35, 0.60), 2: (0.30, 0.42), 3: (0.28, 0.36), 4: (0.27, 0.33)}
GAP = 0.07       # minimum free space between two subject boxes, fraction of the panel side
BORDER = 0.02    # minimum free space between a subject box and the panel edge
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
MULTI_TEMPLATE = ("An undivided, seamless, and harmonious picture with {count} objects. "
                  "in the {scene} scene, {subjects} are placed together.")
TEMPLATE_WORDS = ("a", "an", "undivided", "seamless", "and", "harmonious", "picture", "with", "objects",
                  "in", "the", "scene", "are", "placed", "together", "on", *COUNT_WORDS.values(), ",", ".")


@dataclass(frozen=True)
class Subject:
    """One subject identity, e.g. ``Subject("star", "red", "striped")``."""

    shape: str
    colour: str
    pattern: str

    def __post_init__(self):
        choose({s: s for s in SHAPES}, self.shape, "shape")
        choose(COLOURS, self.colour, "colour")
        choose({p: p for p in PATTERNS}, self.pattern, "pattern")

    @property
    def item(self) -> str:
        """Subjects200K ``description.item`` form: "red striped star"."""
        return f"{self.colour} {self.pattern} {self.shape}"

    @property
    def phrase(self) -> str:
        """Noun phrase used in captions: "a red striped star"."""
        return f"a {self.item}"

    @classmethod
    def parse(cls, text: str) -> "Subject":
        """Inverse of ``item`` / ``phrase``: "a red striped star" -> Subject("star", "red", "striped")."""
        words = text.lower().split()
        if words and words[0] in ("a", "an"):
            words = words[1:]
        if len(words) != 3:
            raise ToyWorldError(f"expected '<colour> <pattern> <shape>', got {text!r}")
        return cls(words[2], words[0], words[1])


ALL_SUBJECTS = tuple(Subject(s, c, p) for s in SHAPES for c in COLOURS for p in PATTERNS)


@dataclass(frozen=True)
class Placement:
    """Where a subject goes: box centre (x, y) and box side ``size``, all as fractions of the panel."""

    x: float
    y: float
    size: float

    def __post_init__(self):
        if not 0 < self.size <= 1:
            raise ToyWorldError(f"placement size is a fraction of the panel side in (0, 1], got {self.size}")

    def box(self, panel: int):
        """(x0, y0, side) in pixels."""
        side = self.size * panel
        return (self.x * panel - side / 2, self.y * panel - side / 2, side)


@dataclass(frozen=True, eq=False)
class SubjectTruth:
    """Ground truth of one rendered subject: ``mask`` are its visible pixels (coverage >= 0.5)."""

    subject: Subject
    placement: Placement
    bbox: tuple  # (x0, y0, x1, y1), x1/y1 exclusive; (0, 0, 0, 0) if fully hidden
    mask: np.ndarray = field(repr=False)
    area: int = 0


@dataclass(frozen=True, eq=False)
class SceneTruth:
    """Ground truth of one scene: its background, caption (single-subject caption or MUSAR-Gen
    prompt), one SubjectTruth per subject in drawing order, and the image size."""

    background: str
    caption: str
    subjects: tuple
    size: tuple  # (height, width)


def caption(subject: Subject, background: str) -> str:
    """Single-subject scene caption: "a red striped star on a wooden floor"."""
    return f"{subject.phrase} {choose(BACKGROUNDS, background, 'background').phrase}"


def multi_caption(subjects, background: str) -> str:
    """MUSAR-Gen style prompt for 2-4 subjects (one subject gets the plain caption, none "the <scene> scene")."""
    subjects = list(subjects)
    if len(subjects) <= 1:
        return caption(subjects[0], background) if subjects else f"the {background} scene"
    count = choose(COUNT_WORDS, len(subjects), "number of subjects")
    choose(BACKGROUNDS, background, "background")
    phrases = [s.phrase for s in subjects]
    joined = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return MULTI_TEMPLATE.format(count=count, scene=background, subjects=joined)


def vocabulary() -> tuple:
    """Every word (and punctuation token) the world's captions and prompts use, in a fixed order."""
    words = [*TEMPLATE_WORDS, *COLOURS, *PATTERNS, *SHAPES]
    for b in BACKGROUNDS.values():
        words += b.name.split() + b.phrase.split()
    return tuple(dict.fromkeys(words))


def _pair_counts(subjects):
    counts = {}
    for s in subjects:
        for key in (("sc", s.shape, s.colour), ("sp", s.shape, s.pattern), ("cp", s.colour, s.pattern)):
            counts[key] = counts.get(key, 0) + 1
    return counts


def heldout_split(seed: int, fraction: float = 0.2) -> tuple:
    """Deterministic held-out subjects: ~``fraction`` of all combinations, greedily chosen so every
    (shape, colour), (shape, pattern) and (colour, pattern) pair still occurs in training and each
    shape / colour / pattern is held out about equally often."""
    target = round(fraction * len(ALL_SUBJECTS))
    order = list(ALL_SUBJECTS)
    random.Random(seed).shuffle(order)
    counts = _pair_counts(ALL_SUBJECTS)
    cap = {k: math.ceil(target / n) for k, n in (("shape", len(SHAPES)), ("colour", len(COLOURS)),
                                                  ("pattern", len(PATTERNS)))}
    used = {}
    held = []
    for s in order:
        if len(held) >= target:
            break
        keys = (("sc", s.shape, s.colour), ("sp", s.shape, s.pattern), ("cp", s.colour, s.pattern))
        attrs = (("shape", s.shape), ("colour", s.colour), ("pattern", s.pattern))
        if any(counts[k] <= 1 for k in keys) or any(used.get(a, 0) >= cap[a[0]] for a in attrs):
            continue
        held.append(s)
        for k in keys:
            counts[k] -= 1
        for a in attrs:
            used[a] = used.get(a, 0) + 1
    return tuple(sorted(held, key=ALL_SUBJECTS.index))


def _separated(a: Placement, b: Placement) -> bool:
    half = (a.size + b.size) / 2 + GAP
    return abs(a.x - b.x) >= half or abs(a.y - b.y) >= half


def sample_placements(n: int, rng: np.random.Generator, restarts: int = 50, tries: int = 60) -> list:
    """``n`` non-overlapping placements (boxes at least GAP apart, BORDER from the edge), placed one
    by one with up to ``tries`` positions each; after ``restarts`` failed attempts a fixed 2x2 grid."""
    if n == 0:
        return []
    lo, hi = choose(SIZE_RANGES, n, "number of subjects")
    for _ in range(restarts):
        out = []
        for _ in range(n):
            size = float(rng.uniform(lo, hi))
            half = size / 2 + BORDER
            for _ in range(tries):
                p = Placement(float(rng.uniform(half, 1 - half)), float(rng.uniform(half, 1 - half)), size)
                if all(_separated(p, q) for q in out):
                    out.append(p)
                    break
            else:
                break
        if len(out) == n:
            return out
    cells = [(0.25, 0.25), (0.75, 0.75), (0.75, 0.25), (0.25, 0.75)]
    return [Placement(cx, cy, lo) for cx, cy in cells[:n]]


class World:
    """Subjects, the held-out split and the renderer. ``seed`` fixes the split (use one seed for a
    whole experiment); ``panel`` is the square scene side in pixels (multiple of 16)."""

    def __init__(self, seed: int = 0, panel: int = 128, heldout_fraction: float = 0.2):
        if panel % 16 or panel < 64:
            raise ToyWorldError(f"panel must be a multiple of 16 and >= 64 pixels, got {panel}")
        if not 0 <= heldout_fraction < 1:
            raise ToyWorldError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
        self.seed, self.panel = seed, panel
        self.subjects = ALL_SUBJECTS
        self.heldout_subjects = heldout_split(seed, heldout_fraction)
        held = set(self.heldout_subjects)
        self.train_subjects = tuple(s for s in ALL_SUBJECTS if s not in held)
        self.backgrounds = tuple(BACKGROUNDS)

    def split_subjects(self, split: str) -> tuple:
        return choose({"train": self.train_subjects, "heldout": self.heldout_subjects,
                       "all": self.subjects}, split, "split")

    def render_scene(self, subjects, background: str, placements=None, rng_seed: int = 0):
        """Render ``subjects`` (drawn in order, later on top) on ``background``.

        Returns (PIL RGB image panel x panel, SceneTruth). Explicit ``placements`` are used as given
        (they may overlap); ``None`` samples separated placements from ``rng_seed``.
        """
        subjects = [s if isinstance(s, Subject) else Subject.parse(s) for s in subjects]
        choose(BACKGROUNDS, background, "background")
        if placements is None:
            placements = sample_placements(len(subjects), np.random.default_rng([rng_seed, 0]))
        if len(placements) != len(subjects):
            raise ToyWorldError(f"expected one placement per subject ({len(subjects)}), got {len(placements)}")
        n = self.panel
        img = render_background(background, np.random.default_rng([rng_seed, 1]), n, n, n)
        alphas = []
        for subject, placement in zip(subjects, placements, strict=True):
            img, alpha = self._composite(img, subject, placement)
            alphas.append(alpha)
        truths = self._truths(subjects, placements, alphas)
        pixels = np.round(img * 255.0).astype(np.uint8)
        text = multi_caption(subjects, background)
        return Image.fromarray(pixels, "RGB"), SceneTruth(background, text, tuple(truths), (n, n))

    def _composite(self, img, subject: Subject, placement: Placement):
        """Paint one subject over ``img`` (only inside its box); returns (img, full-panel coverage)."""
        n = self.panel
        x0, y0, side = placement.box(n)
        r0, r1 = max(0, math.floor(y0)), min(n, math.ceil(y0 + side))
        c0, c1 = max(0, math.floor(x0)), min(n, math.ceil(x0 + side))
        alpha = np.zeros((n, n), np.float32)
        if r1 <= r0 or c1 <= c0:
            return img, alpha
        h, w = r1 - r0, c1 - c0
        cov, hi = shape_coverage(subject.shape, (x0 - c0, y0 - r0, side), h, w)
        centre = (x0 - c0 + side / 2, y0 - r0 + side / 2)
        pat_hi = pattern_mask_hi(subject.pattern, centre, h, w, n) * hi
        ss = hi.shape[0] // h
        pat = pat_hi.reshape(h, ss, w, ss).mean(axis=(1, 3))
        colour = np.asarray(COLOURS[subject.colour], np.float32) / 255.0
        white = np.asarray(PATTERN_COLOUR, np.float32) / 255.0
        region = img[r0:r1, c0:c1]
        img[r0:r1, c0:c1] = region * (1 - cov[..., None]) + colour * (cov - pat)[..., None] + white * pat[..., None]
        alpha[r0:r1, c0:c1] = cov
        return img, alpha

    def _truths(self, subjects, placements, alphas):
        covered = np.zeros((self.panel, self.panel), bool)
        truths = []
        for i in range(len(subjects) - 1, -1, -1):
            mask = (alphas[i] >= 0.5) & ~covered
            covered |= alphas[i] >= 0.5
            ys, xs = np.nonzero(mask)
            bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)
            truths.append(SubjectTruth(subjects[i], placements[i], bbox, mask, int(mask.sum())))
        return truths[::-1]

    def sample_scene(self, rng_seed: int, n_subjects: int = 1, split: str = "train", background=None):
        """A random scene: ``n_subjects`` distinct subjects of ``split`` on a random (or given) background."""
        rnd = random.Random(rng_seed)
        subjects = rnd.sample(list(self.split_subjects(split)), n_subjects)
        background = background or rnd.choice(self.backgrounds)
        return self.render_scene(subjects, background, None, rng_seed)
