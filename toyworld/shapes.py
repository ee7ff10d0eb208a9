"""Shape and surface-pattern geometry of the toy world, shared by the renderer and the detector.

Every shape is defined in a unit box (x right, y down) and fits that box with its aspect ratio kept
and its tight bounding box centred. Rendering is 4x supersampled, so edges are anti-aliased blends
of exactly two palette colours, which the detector's segment classifier understands.
Patterns are in absolute panel units (a fraction of the panel side), anchored at the subject's
box centre: stripes are horizontal bands, dots a square grid of discs.
"""

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
PATTERNS = ("plain", "striped", "dotted")

SUPERSAMPLE = 4
STRIPE_PERIOD = 1 / 8       # of the panel side: 16 px at 128 (8 px white band, 8 px colour)
DOT_DIAMETER = 0.085        # ~11 px at 128
DOT_SPACING = 0.19          # ~24 px at 128
STAR_INNER = 0.5            # inner / outer radius: a chubby star that can carry a pattern
CROSS_ARM = 0.36            # arm thickness / box side


def _fit_unit(points):
    """Scale and centre ``points`` so their tight box fits [0, 1]^2 with the aspect ratio kept."""
    pts = np.asarray(points, dtype=np.float64)
    lo, hi = pts.min(0), pts.max(0)
    span = (hi - lo).max()
    return (pts - lo) / span + (1.0 - (hi - lo) / span) / 2.0


@functools.cache
def unit_polygon(shape: str):
    """Vertices (k, 2) of ``shape`` in the unit box, or None for the circle (drawn as an ellipse)."""
    if shape == "circle":
        return None
    if shape == "square":
        pts = [(0, 0), (1, 0), (1, 1), (0, 1)]
    elif shape == "triangle":
        pts = [(0.5, 0.0), (1.0, math.sqrt(3) / 2), (0.0, math.sqrt(3) / 2)]
    elif shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else STAR_INNER
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
    elif shape == "heart":
        t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = list(zip(x, y, strict=True))
    elif shape == "cross":
        a, b = (1 - CROSS_ARM) / 2, (1 + CROSS_ARM) / 2
        pts = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    else:
        raise KeyError(shape)
    return _fit_unit(pts)


def _downsample(hi: np.ndarray, ss: int) -> np.ndarray:
    h, w = hi.shape[0] // ss, hi.shape[1] // ss
    return hi.reshape(h, ss, w, ss).sum(axis=(1, 3)) * (1.0 / (ss * ss))


def _draw(shape: str, x0: float, y0: float, sx: float, sy: float, height: int, width: int) -> np.ndarray:
    """Supersampled 0/1 mask (height*ss, width*ss) of ``shape`` mapped onto box (x0, y0, sx, sy) px."""
    ss = SUPERSAMPLE
    img = Image.new("L", (width * ss, height * ss), 0)
    draw = ImageDraw.Draw(img)
    poly = unit_polygon(shape)
    if poly is None:
        draw.ellipse([x0 * ss, y0 * ss, (x0 + sx) * ss - 1, (y0 + sy) * ss - 1], fill=1)
    else:
        pts = [((x0 + px * sx) * ss, (y0 + py * sy) * ss) for px, py in poly]
        draw.polygon(pts, fill=1)
    return np.asarray(img, dtype=np.float32)


def shape_coverage(shape: str, box, height: int, width: int):
    """Anti-aliased coverage (H, W) in 0..1 and the supersampled 0/1 mask of a shape in ``box``.

    ``box`` = (x0, y0, side) in pixels: the square the shape is fitted into.
    """
    x0, y0, side = box
    hi = _draw(shape, x0, y0, side, side, height, width)
    return _downsample(hi, SUPERSAMPLE), hi


def pattern_mask_hi(pattern: str, centre, height: int, width: int, panel: int) -> np.ndarray:
    """Supersampled 0/1 mask of the secondary-colour pattern anchored at ``centre`` (px)."""
    ss = SUPERSAMPLE
    ys = (np.arange(height * ss, dtype=np.float64) + 0.5) / ss - centre[1]
    if pattern == "plain":
        return np.zeros((height * ss, width * ss), np.float32)
    if pattern == "striped":
        period = STRIPE_PERIOD * panel
        rows = ((ys / period + 0.25) % 1.0) < 0.5
        return np.broadcast_to(rows[:, None], (height * ss, width * ss)).astype(np.float32)
    if pattern == "dotted":
        xs = (np.arange(width * ss, dtype=np.float64) + 0.5) / ss - centre[0]
        sp, r = DOT_SPACING * panel, DOT_DIAMETER * panel / 2
        dy = (ys + sp / 2) % sp - sp / 2
        dx = (xs + sp / 2) % sp - sp / 2
        return ((dy[:, None] ** 2 + dx[None, :] ** 2) < r * r).astype(np.float32)
    raise KeyError(pattern)


@functools.lru_cache(maxsize=4096)
def template(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean mask (height, width) of ``shape`` with its tight box stretched onto the whole array."""
    poly = unit_polygon(shape)
    if poly is None:
        lo, hi = np.zeros(2), np.ones(2)
    else:
        lo, hi = poly.min(0), poly.max(0)
    span = hi - lo
    sx, sy = width / span[0], height / span[1]
    hi_mask = _draw(shape, -lo[0] * sx, -lo[1] * sy, sx, sy, height, width)
    out = _downsample(hi_mask, SUPERSAMPLE) >= 0.5
    out.setflags(write=False)
    return out


@functools.cache
def unit_moments(shape: str):
    """(area, centroid x, centroid y) of ``shape`` in its unit box (fractions of the box side)."""
    res = 128
    hi = _draw(shape, 0.0, 0.0, res, res, res, res)
    ys, xs = np.nonzero(hi)
    n = hi.shape[0]
    return float(hi.mean()), (xs.mean() + 0.5) / n, (ys.mean() + 0.5) / n


@functools.lru_cache(maxsize=512)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian blur operator along one axis, edge pixels repeated beyond the border."""
    r = max(1, int(round(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    m = np.zeros((n, n))
    for d, w in zip(range(-r, r + 1), k, strict=True):
        m[np.arange(n), np.clip(np.arange(n) + d, 0, n - 1)] += w
    return m


def _gauss_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    h, w = img.shape
    return _blur_matrix(h, sigma) @ img @ _blur_matrix(w, sigma).T


def moment_templates(shape: str, area: float, cx: float, cy: float, height: int, width: int, blur: float):
    """Boolean (height, width) masks of ``shape`` scaled (uniformly) to ``area`` px with its centroid
    at (cx, cy) px: (sharp, blurred by a Gaussian of ``blur`` px then thresholded at 0.5). The world
    never stretches shapes, so this fit ignores lost tips and stray pixels that would distort a
    bounding box; the blurred version models what a latent codec does to tips and corners."""
    a, ux, uy = unit_moments(shape)
    side = float(np.sqrt(area / a))
    cov = _downsample(_draw(shape, cx - ux * side, cy - uy * side, side, side, height, width), SUPERSAMPLE)
    return cov >= 0.5, _gauss_blur(cov, blur) >= 0.5
