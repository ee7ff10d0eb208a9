"""Named, low-saturation background textures of the toy world.

Each background owns a small palette (2-3 colours) and its texture only ever mixes those colours,
so every background pixel lies close to a segment between two of its own palette colours. The
palettes sit far from every subject colour and from the white pattern colour (a test checks the
margin), which is what lets the detector separate subjects from backgrounds exactly.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Background:
    """A named background: ``scene`` goes into "in the <scene> scene", ``phrase`` after a subject."""

    name: str
    phrase: str
    colours: tuple  # ((r, g, b), ...) 0..255: base, dark, light/gap


def _smooth_noise(rng, height, width, grid_h, grid_w):
    """Bilinearly upsampled uniform noise in -1..1 of shape (height, width)."""
    coarse = rng.uniform(-1.0, 1.0, size=(grid_h, grid_w)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _mix(colours, t_dark, t_light):
    """Blend base -> dark by ``t_dark`` and base -> light by ``t_light`` (both 0..1, H x W)."""
    base, dark, light = (np.asarray(c, np.float32) / 255.0 for c in colours)
    t_dark, t_light = np.clip(t_dark, 0, 1)[..., None], np.clip(t_light, 0, 1)[..., None]
    return base + t_dark * (dark - base) + t_light * (light - base)


def _bands(coord, period, width, offset):
    """Anti-aliased 0..1 indicator of lines ``width`` px wide every ``period`` px along ``coord``."""
    d = np.abs(((coord - offset) % period) - period / 2)
    return np.clip(d - (period / 2 - width / 2) + 0.5, 0.0, 1.0)


def _lerp(a, b, t):
    a, b = (np.asarray(c, np.float32) / 255.0 if isinstance(c, tuple) else c for c in (a, b))
    return a + np.clip(t, 0, 1)[..., None] * (b - a)


def _wood(rng, h, w, panel):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    plank = panel / 5.0
    offset = rng.uniform(0, plank)
    idx = np.floor((ys - offset) / plank).astype(int) + 1
    n = idx.max() + 1
    tone, phase, joint = rng.uniform(0, 1, n), rng.uniform(0, 2 * np.pi, n), rng.uniform(0, w, n)
    grain = 0.25 * np.sin(2 * np.pi * xs / (panel * 0.6) + phase[idx] + ys * 0.15)
    gap = np.maximum(_bands(ys, plank, 2.0, offset), _bands(xs - joint[idx], 2 * w, 2.0, 0.0))
    colours = BACKGROUNDS["wooden floor"].colours
    return _lerp(_lerp(colours[0], colours[1], tone[idx] + grain), colours[2], gap)


def _grass(rng, h, w, panel):
    blades = _smooth_noise(rng, h, w, 3, max(4, w // 6))
    clumps = _smooth_noise(rng, h, w, 5, 5)
    t = 0.7 * blades + 0.5 * clumps
    return _mix(BACKGROUNDS["grass"].colours, -t, t)


def _sand(rng, h, w, panel):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    p1, p2, ph = panel / 4.5, panel / 1.7, rng.uniform(0, 2 * np.pi, 2)
    ripple = np.sin(2 * np.pi * (ys + 5 * np.sin(2 * np.pi * xs / p2 + ph[0])) / p1 + ph[1])
    t = 0.6 * ripple + 0.3 * _smooth_noise(rng, h, w, 4, 4)
    return _mix(BACKGROUNDS["sand"].colours, -t, t)


def _tiles(rng, h, w, panel):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    size, off = panel / 4.0, rng.uniform(0, panel / 4.0, 2)
    iy = np.floor((ys - off[1]) / size).astype(int) + 1
    ix = np.floor((xs - off[0]) / size).astype(int) + 1
    tone = rng.uniform(0, 1, (iy.max() + 1, ix.max() + 1))
    grout = np.maximum(_bands(ys, size, 4.0, off[1]), _bands(xs, size, 4.0, off[0]))
    colours = BACKGROUNDS["stone tiles"].colours
    return _lerp(_lerp(colours[0], colours[1], tone[iy, ix]), colours[2], grout)


def _carpet(rng, h, w, panel):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    p, ph = panel / 6.0, rng.uniform(0, 2 * np.pi, 2)
    diamonds = np.sin(2 * np.pi * (xs + ys) / p + ph[0]) * np.sin(2 * np.pi * (xs - ys) / p + ph[1])
    t = 0.8 * diamonds + 0.2 * _smooth_noise(rng, h, w, 3, 3)
    return _mix(BACKGROUNDS["carpet"].colours, -t, t)


def _asphalt(rng, h, w, panel):
    t = 0.6 * _smooth_noise(rng, h, w, max(2, h // 10), max(2, w // 10)) + 0.4 * _smooth_noise(rng, h, w, 3, 3)
    return _mix(BACKGROUNDS["asphalt"].colours, -t, t)


BACKGROUNDS = {b.name: b for b in (
    Background("wooden floor", "on a wooden floor", ((152, 116, 84), (126, 95, 68), (104, 78, 56))),
    Background("grass", "on grass", ((104, 124, 88), (84, 102, 72), (122, 140, 104))),
    Background("sand", "on sand", ((182, 166, 136), (164, 148, 118), (198, 184, 156))),
    Background("stone tiles", "on stone tiles", ((138, 138, 142), (120, 121, 125), (100, 100, 104))),
    Background("carpet", "on a carpet", ((122, 92, 104), (102, 76, 88), (140, 110, 122))),
    Background("asphalt", "on asphalt", ((76, 78, 84), (62, 64, 68), (92, 94, 100))),
)}
_TEXTURES = {"wooden floor": _wood, "grass": _grass, "sand": _sand, "stone tiles": _tiles,
             "carpet": _carpet, "asphalt": _asphalt}


def render_background(name: str, rng: np.random.Generator, height: int, width: int, panel: int) -> np.ndarray:
    """Texture (height, width, 3) float32 in 0..1 of background ``name``; all randomness from ``rng``."""
    return np.clip(_TEXTURES[name](rng, height, width, panel), 0.0, 1.0).astype(np.float32)


def background_palette() -> np.ndarray:
    """(k, 3) float32 0..1: every colour any background texture mixes."""
    cols = [c for b in BACKGROUNDS.values() for c in b.colours]
    return np.asarray(cols, np.float32) / 255.0
