"""Exact detector for toy-world images: which subjects (shape, colour, pattern) are present.

Pipeline (all deterministic, numpy/torch only):
1. Pixel classes. Every pixel is assigned to the nearest *palette segment*: the straight RGB line
   between two colours that may legitimately blend in a toy image (a subject colour and the white
   pattern colour, a subject colour and a background's mean colour, two subject colours, white and
   a background colour, two colours of one background). The pixel takes the class of the nearer
   end (subject colour i, ``pattern`` or ``background``). Anti-aliased and codec-blurred edges lie
   on such segments, so they split at the midpoint instead of turning into a third colour. A
   "subject" pixel with chroma (max - min channel) below 48/255 is a grey ringing artefact and
   counts as background (every subject colour and its blends up to the midpoint are far above).
2. Components. Subject-coloured and pattern pixels form the foreground; its 4-connected
   components smaller than ``min_area`` (default 0.35 % of panel^2) or with < 25 % subject colour are
   ignored.
   The foreground is closed first (radius 1 px per 64 px of panel) so hairline gaps cannot split a
   subject, and a component only counts if the opened foreground reaches into it, so codec specks
   add nothing while thin tips (kept in the mask) survive.
3. Per component: colour = the most frequent subject colour (``colour_fractions`` keeps every
   colour with >= 5 %); shape = the shape whose template fits the hole-filled mask best (IoU), each
   template fitted three ways: stretched onto the bounding box, and scaled / centred by area and
   centroid both sharp and Gaussian-blurred (so rounded tips of a decoded star still read as a
   star); pattern: < 2.5 % white pixels is plain, otherwise rows wider than 1.5 dot diameters
   decide: stripes fill such a row (>= 75 % white), dots never can (<= 60 %).

``score`` / ``aggregate`` (scoring.py) turn detections into prompt-fidelity metrics.
"""

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from .backgrounds import BACKGROUNDS
from .components import closing, dilate, fill_holes, label, open_close
from .errors import ToyWorldError
from .scoring import aggregate, score  # noqa: F401  (re-exported)
from .shapes import DOT_DIAMETER, SHAPES, moment_templates, template
from .world import COLOURS, PATTERN_COLOUR

logger = logging.getLogger(__name__)

COLOUR_NAMES = tuple(COLOURS)
PATTERN_CLASS = len(COLOUR_NAMES)        # 6
BACKGROUND_CLASS = PATTERN_CLASS + 1     # 7
MIN_SUBJECT_CHROMA = 48 / 255            # greyer "subject" pixels are codec ringing: background


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected subject. ``bbox`` = (x0, y0, x1, y1), x1/y1 exclusive; ``confidence`` = min of
    the shape IoU and the dominant-colour fraction."""

    shape: str
    colour: str
    pattern: str
    bbox: tuple
    area: int
    confidence: float
    shape_iou: float = 0.0
    colour_fractions: tuple = ()   # ((colour, fraction of the subject-coloured pixels), ...) >= 5 %
    mask: np.ndarray = field(default=None, repr=False)

    @property
    def key(self) -> tuple:
        return (self.shape, self.colour, self.pattern)


def _rgb(c) -> np.ndarray:
    return np.asarray(c, np.float32) / 255.0


def _segments():
    """Palette segments (a, b - a, class of a, class of b). Subject colours blend with each other,
    with white and with each background's mean colour; white and background colours blend with
    every colour of that background; a background's colours blend with each other."""
    subj = [_rgb(COLOURS[c]) for c in COLOUR_NAMES]
    white = _rgb(PATTERN_COLOUR)
    segs = []
    for i, s in enumerate(subj):
        segs.append((s, white, i, PATTERN_CLASS))
        segs += [(s, subj[j], i, j) for j in range(i + 1, len(subj))]
        segs += [(s, _rgb(b.colours).mean(0), i, BACKGROUND_CLASS) for b in BACKGROUNDS.values()]
    for b in BACKGROUNDS.values():
        cols = [_rgb(c) for c in b.colours]
        segs += [(white, c, PATTERN_CLASS, BACKGROUND_CLASS) for c in cols]
        segs += [(cols[i], cols[j], BACKGROUND_CLASS, BACKGROUND_CLASS)
                 for i in range(len(cols)) for j in range(i + 1, len(cols))]
    a = np.stack([s[0] for s in segs])
    b = np.stack([s[1] for s in segs])
    return a, b - a, np.array([s[2] for s in segs], np.uint8), np.array([s[3] for s in segs], np.uint8)


_SEGMENTS = _segments()


def to_array(image) -> np.ndarray:
    """PIL image, uint8 array or float array (H, W, 3) in 0..1 -> float32 (H, W, 3) in 0..1."""
    if hasattr(image, "convert"):
        return np.asarray(image.convert("RGB"), np.float32) / 255.0
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ToyWorldError(f"expected an RGB image (H, W, 3), got shape {arr.shape}: pass one image, not a batch")
    return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)


def _classify_colours(rgb: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Class of each colour in ``rgb`` (k, 3) float32 0..1 by nearest palette segment."""
    a, u, ca, cb = _SEGMENTS
    uu, au, aa = np.maximum((u * u).sum(1), 1e-12), (a * u).sum(1), (a * a).sum(1)
    out = np.empty(len(rgb), np.uint8)
    for i in range(0, len(rgb), chunk):  # chunks keep the (k, segments) temporaries in cache
        x = rgb[i:i + chunk]
        xu = np.einsum("kc,mc->km", x, u) - au
        t = np.clip(xu / uu, 0.0, 1.0)
        d2 = aa - 2 * np.einsum("kc,mc->km", x, a) - t * (2 * xu - t * uu)
        best = d2.argmin(1)
        tb = np.take_along_axis(t, best[:, None], 1)[:, 0]
        cls = np.where(tb < 0.5, ca[best], cb[best])
        dull = (cls < PATTERN_CLASS) & (x.max(1) - x.min(1) < MIN_SUBJECT_CHROMA)
        out[i:i + chunk] = np.where(dull, BACKGROUND_CLASS, cls)
    return out


LUT_BITS = 6  # colours are quantised to 6 bits per channel (error <= 2/255) before classification
_LUT = None   # lazily filled class of every quantised colour, 255 = not computed yet


def classify_pixels(image) -> np.ndarray:
    """(H, W) uint8 class map: 0..5 subject colour (COLOUR_NAMES order), 6 pattern, 7 background.

    Colours are quantised to LUT_BITS per channel and the class of each quantised colour (its bin
    centre) is cached in a lookup table filled on demand, so only colours never seen before cost."""
    global _LUT
    if _LUT is None:
        _LUT = np.full(1 << (3 * LUT_BITS), 255, np.uint8)
    step = 1 << (8 - LUT_BITS)
    q = np.clip(np.round(to_array(image) * 255.0), 0, 255).astype(np.int64) // step
    packed = (q[..., 0] << (2 * LUT_BITS)) | (q[..., 1] << LUT_BITS) | q[..., 2]
    cls = _LUT[packed]
    todo = np.unique(packed[cls == 255])
    if len(todo):
        mask = (1 << LUT_BITS) - 1
        qs = np.stack([todo >> (2 * LUT_BITS), (todo >> LUT_BITS) & mask, todo & mask], 1)
        _LUT[todo] = _classify_colours(((qs * step + (step - 1) / 2) / 255.0).astype(np.float32))
        cls = _LUT[packed]
    return cls


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def shape_scores(filled: np.ndarray, blur: float) -> dict:
    """IoU of the hole-filled component mask (with a margin) with each shape; each template is
    fitted three ways (stretched onto the bounding box; scaled / centred by area and centroid, sharp
    and blurred by ``blur`` px) and the best fit counts."""
    ys, xs = np.nonzero(filled)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    tight = filled[y0:y1, x0:x1]
    area, cx, cy = float(filled.sum()), xs.mean() + 0.5, ys.mean() + 0.5
    scores = {}
    for shape in SHAPES:
        sharp, blurred = moment_templates(shape, area, cx, cy, *filled.shape, blur)
        scores[shape] = max(_iou(template(shape, x1 - x0, y1 - y0), tight), _iou(sharp, filled), _iou(blurred, filled))
    return scores


def _shape_of(filled: np.ndarray, blur: float):
    scores = shape_scores(filled, blur)
    best = max(scores, key=scores.get)
    return best, scores[best]


def pattern_evidence(classes: np.ndarray, mask: np.ndarray, dot_px: float):
    """(white fraction, stripe evidence, dot evidence) of one component (crops of equal shape).

    Only rows where the mask is wider than 1.5 dot diameters count: there a white stripe fills the
    row (>= 75 % white) while dots can fill at most about half of it (<= 60 % white). Each
    evidence is the number of white pixels in rows of that kind."""
    white = (classes == PATTERN_CLASS) & mask
    n_white = int(white.sum())
    frac = n_white / max(1, int(mask.sum()))
    width, w_row = mask.sum(1), white.sum(1)
    fill = w_row / np.maximum(width, 1)
    wide = width >= 1.5 * dot_px
    return frac, int((w_row * (wide & (fill >= 0.75))).sum()), int((w_row * (wide & (fill <= 0.6))).sum())


def _pattern_of(classes, mask, dot_px, plain_below=0.025):
    frac, stripe, dot = pattern_evidence(classes, mask, dot_px)
    if frac < plain_below:
        return "plain"
    if stripe == dot:  # no wide rows at all: a stripe covers about half the subject, dots much less
        return "striped" if frac >= 0.3 else "dotted"
    return "striped" if stripe > dot else "dotted"


def _colours_of(classes_in_mask: np.ndarray):
    counts = np.bincount(classes_in_mask[classes_in_mask < PATTERN_CLASS], minlength=PATTERN_CLASS)
    total = max(1, int(counts.sum()))
    order = np.argsort(-counts, kind="stable")
    fracs = tuple((COLOUR_NAMES[i], round(float(counts[i]) / total, 4)) for i in order if counts[i] / total >= 0.05)
    return COLOUR_NAMES[int(order[0])], fracs, int(counts.sum())


class Detector:
    """Find toy-world subjects in an RGB image (any size, e.g. a whole diptych). ``panel`` is the
    world's panel side in px: it sets the pattern scale, the clean-up radius and the minimum
    component area; by default the image's shorter side (pass it for non-square images)."""

    def __init__(self, panel=None, min_area_frac: float = 0.0035, min_colour_frac: float = 0.25,
                 blur_frac: float = 0.02):
        self.panel, self.min_area_frac, self.min_colour_frac = panel, min_area_frac, min_colour_frac
        self.blur_frac = blur_frac

    @staticmethod
    def cleanup_radius(panel: int) -> int:
        """Radius of the foreground clean-up (see ``components``): 1 px per 64 px of panel."""
        return max(1, panel // 64)

    def components(self, classes: np.ndarray, panel: int):
        """(labels, ids to keep, closed raw foreground). Labels come from the foreground (subject
        colour or pattern) after an opening and a closing, so codec specks add nothing and hairline
        gaps split nothing; components below ``min_area_frac * panel^2`` are dropped."""
        raw = classes < BACKGROUND_CLASS
        r = self.cleanup_radius(panel)
        labels, n = label(open_close(raw, r), connectivity=4)
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        keep = [int(k) for k in np.nonzero(areas >= self.min_area_frac * panel * panel)[0] if k != 0]
        return labels, keep, closing(raw, r)

    def __call__(self, image) -> list:
        return self.detect(image)

    def detect(self, image) -> list:
        classes = classify_pixels(image)
        panel = self.panel or min(classes.shape)
        labels, keep, raw = self.components(classes, panel)
        out = []
        for lab in keep:
            det = self._describe(classes, labels == lab, raw, panel)
            if det is not None:
                out.append(det)
        out.sort(key=lambda d: (d.bbox[1], d.bbox[0]))
        return out

    def _describe(self, classes, comp, raw, panel):
        """Classify one cleaned component; its reported mask / bbox / area also take back the thin
        tips the opening removed (raw foreground within 2r px of the cleaned component)."""
        r = self.cleanup_radius(panel)
        ys, xs = np.nonzero(comp)
        m = 2 * r + 2
        y0, x0 = max(0, int(ys.min()) - m), max(0, int(xs.min()) - m)
        y1, x1 = min(comp.shape[0], int(ys.max()) + 1 + m), min(comp.shape[1], int(xs.max()) + 1 + m)
        crop, cls = comp[y0:y1, x0:x1], classes[y0:y1, x0:x1]
        colour, fracs, n_colour = _colours_of(cls[crop])
        if n_colour < self.min_colour_frac * crop.sum():
            return None
        filled = fill_holes(crop)
        shape, iou = _shape_of(filled, self.blur_frac * panel)
        pattern = _pattern_of(cls, filled, DOT_DIAMETER * panel)
        mask = np.zeros_like(comp)
        mask[y0:y1, x0:x1] = fill_holes(filled | (raw[y0:y1, x0:x1] & dilate(crop, 2 * r)))
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        return Detection(shape, colour, pattern, bbox, int(mask.sum()),
                         round(min(iou, fracs[0][1]), 4), round(iou, 4), fracs, mask)
