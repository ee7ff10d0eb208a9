"""Layout regions: where in the image a routed condition (a MUSAR subject or a routed
reference) should go. A region is a MASK in image space with a mode and a strength, optional
per condition (MUSAR Layout Region).

A region reaches the route as its *coverage* of each canvas token: the share of the token's
area (16 x 16 px for FLUX.1 and FLUX.2) inside the mask, the mask scaled to the image first.

``hard``  a token is inside a region when the region covers at least half of it (``INSIDE``).
          A token inside one or more hard regions is routed only to those conditions: the
          argmax of their (soft-biased) route scores, or, before any scores exist (the first
          routed step, or dynamic routing off), the condition whose region covers it most (ties:
          the lower index). The background threshold does not apply inside a hard region.
``soft``  ``strength * coverage`` is added to the condition's *attention share* (its route
          score divided by the sum over conditions, so strength reads the same at every
          model size) before the argmax: a region pulls its condition there without forcing
          it, and strength 0.5 [chosen] lets it win against a condition with up to half of the
          share more. The background threshold still asks the winner for real attention mass.
          Soft regions need scores (dynamic routing on); without them they do nothing.

Outside every hard region the ordinary dynamic route applies (argmax, background threshold).
With dynamic routing off, or before any scores exist, tokens outside the hard regions are
``UNROUTED``: they see every condition, as under static routing alone.

Rules: a region is one mask with the image's aspect ratio (any resolution: it is scaled to the
image; one token of slack), not empty; a hard region must hold at least one token. Regions may
overlap (see above).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .errors import LayoutError, RoutingError
from .routes import UNROUTED, argmax_route, smooth_scores

REGION_MODES = ("hard", "soft")
INSIDE = 0.5  # hard mode: a token is inside a region covering at least this share of it


def check_mask(mask: torch.Tensor, what: str) -> torch.Tensor:
    """A region MASK as one (H, W) float32 map on the CPU, or a LayoutError saying why not."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise LayoutError(f"{what} must be a MASK (height, width), got {shape}")
    if mask.ndim == 3:
        if mask.shape[0] != 1:
            raise LayoutError(f"{what} is a batch of {mask.shape[0]} masks; give one mask (a "
                              "region applies to every image of the batch)")
        mask = mask[0]
    mask = mask.detach().float().cpu()
    if min(mask.shape) == 0 or not torch.isfinite(mask).all():
        raise LayoutError(f"{what} is empty or contains NaN / infinite values; check the node "
                          "that made it")
    if float(mask.max()) <= 0:
        raise LayoutError(f"{what} is empty (all black): paint where the subject or reference "
                          "should go in white")
    return mask.clamp(0, 1)


@dataclasses.dataclass(frozen=True, eq=False)
class Region:
    mask: torch.Tensor  # (H, W) float 0..1, any resolution with the image's aspect ratio
    mode: str = "hard"
    strength: float = 0.5  # soft mode only

    def __post_init__(self):
        if self.mode not in REGION_MODES:
            raise RoutingError(f"region mode: unknown option {self.mode!r}, expected one of "
                               f"{', '.join(repr(m) for m in REGION_MODES)}")

    def check_fits(self, grid: tuple[int, int], what: str) -> None:
        """The mask must have the image's aspect ratio (scaled, to within one token)."""
        h, w = self.mask.shape
        rows, cols = grid
        if abs(h * cols / w - rows) > 1.0 or abs(w * rows / h - cols) > 1.0:
            raise LayoutError(f"the region of {what} is {w}x{h} px but the image is {cols * 16}x"
                              f"{rows * 16} px ({cols}x{rows} tokens): a region needs the image's "
                              "shape (any resolution of it); make the mask from the image's "
                              "width and height")

    def coverage(self, grid: tuple[int, int]) -> torch.Tensor:
        """(rows * cols,) share of each canvas token's area inside the mask."""
        return F.adaptive_avg_pool2d(self.mask[None, None], grid)[0, 0].reshape(-1)

    def __deepcopy__(self, memo):
        return self


@dataclasses.dataclass(frozen=True, eq=False)
class RegionMap:
    """The regions of one layout's conditions on one canvas grid."""

    coverage: torch.Tensor  # (N, x_len) float32; zero rows for conditions without a region
    hard: torch.Tensor  # (N,) bool: the condition has a hard region
    soft: torch.Tensor  # (N,) float32: soft-region strength (0 without one)

    @property
    def inside(self) -> torch.Tensor:
        """(x_len, N) bool: token inside condition's hard region."""
        return ((self.coverage >= INSIDE) & self.hard[:, None]).T

    @property
    def outlines(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the preview draws: (N, x_len) bool tokens mostly inside each region (hard or
        soft), and (N,) bool which are soft (drawn dashed)."""
        shown = self.hard | (self.soft > 0)
        return (self.coverage >= INSIDE) & shown[:, None], self.soft > 0

    @property
    def any_hard(self) -> bool:
        return bool(self.hard.any())


def region_map(regions: list[Region | None], names: list[str], grid: tuple[int, int]
               ) -> RegionMap | None:
    """Every condition's region (or None) on ``grid``; None when no condition has one. Checks
    each region's shape against the image, and that a hard region holds a token."""
    if all(r is None for r in regions):
        return None
    rows = []
    for region, name in zip(regions, names):
        if region is None:
            rows.append(torch.zeros(grid[0] * grid[1]))
            continue
        region.check_fits(grid, name)
        rows.append(region.coverage(grid))
        if region.mode == "hard" and not bool((rows[-1] >= INSIDE).any()):
            raise LayoutError(f"the hard region of {name} covers no token of the {grid[1]}x"
                              f"{grid[0]} token grid by half or more (a token is 16x16 px): "
                              "draw it larger, or make it soft")
    hard = torch.tensor([r is not None and r.mode == "hard" for r in regions])
    soft = torch.tensor([r.strength if r is not None and r.mode == "soft" else 0.0 for r in regions])
    return RegionMap(torch.stack(rows), hard, soft)


def step_route(scores: torch.Tensor | None, grid: tuple[int, int], threshold: float = 0.0,
               smoothing: int = 1, regions: RegionMap | None = None, batch: int = 1
               ) -> torch.Tensor | None:
    """The route of one step, (B, x_len), from the previous step's route scores (B, x_len, N)
    (None when there are none) and the regions; None when there is nothing to route by."""
    if regions is not None and scores is not None and regions.coverage.shape[0] != scores.shape[-1]:
        regions = None  # scores of other conditions than the regions' (checked by the planner)
    if scores is None and (regions is None or not regions.any_hard):
        return None
    if scores is None:
        route = torch.full((batch, regions.inside.shape[0]), UNROUTED, dtype=torch.long)
        pick = regions.coverage.T[None].expand(batch, -1, -1)
    else:
        mass = smooth_scores(scores, grid, smoothing)
        pick = mass
        if regions is not None and bool(regions.soft.any()):
            share = mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)
            pick = share + (regions.soft[:, None] * regions.coverage).T[None].to(mass)
        route = argmax_route(pick, threshold, mass)
    if regions is None or not regions.any_hard:
        return route
    inside = regions.inside[None].to(pick.device)
    chosen = pick.masked_fill(~inside, float("-inf")).argmax(-1)
    return torch.where(inside.any(-1), chosen, route)
