"""Image helpers in ComfyUI's IMAGE convention ((B, H, W, 3) float 0..1) and MASK ((B, H, W)).

Reference preparation for subjects and the routing overlay for the preview node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import LayoutError, RoutingError
from .subjects import PALETTE

CROP_MODES = ("center crop", "pad", "stretch", "keep aspect")
MIN_REFERENCE_SIDE = 64


def check_image(image: torch.Tensor, what: str = "reference image") -> torch.Tensor:
    if image.ndim != 4 or image.shape[-1] < 3:
        raise LayoutError(f"{what}: expected an IMAGE (batch, height, width, 3), got shape "
                          f"{tuple(image.shape)}")
    if image.shape[0] != 1:
        raise LayoutError(f"{what}: expected one image, got a batch of {image.shape[0]}; use one "
                          "MUSAR Subject node per subject (chain them)")
    if not torch.isfinite(image).all():
        raise LayoutError(f"{what} contains NaN or infinite pixels; check the node that made it")
    if min(image.shape[1:3]) < MIN_REFERENCE_SIDE:
        raise LayoutError(f"{what} is {image.shape[2]}x{image.shape[1]} px; MUSAR needs at least "
                          f"{MIN_REFERENCE_SIDE} px on each side")
    return image[..., :3]


def _resize(x: torch.Tensor, h: int, w: int, mode: str = "bilinear") -> torch.Tensor:
    """(B, C, H, W) resize; antialiased when shrinking."""
    if x.shape[-2:] == (h, w):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(h, w), mode="nearest")
    return F.interpolate(x, size=(h, w), mode=mode, align_corners=False, antialias=True)


def _geometry(height: int, width: int, size: int, mode: str) -> tuple[int, int, tuple[int, int, int, int]]:
    """Target (h, w) and the crop box (top, left, crop_h, crop_w) in source pixels."""
    if mode == "center crop":
        side = min(height, width)
        return size, size, ((height - side) // 2, (width - side) // 2, side, side)
    if mode == "keep aspect":
        scale = size / max(height, width)
        h = max(16, round(height * scale / 16) * 16)
        w = max(16, round(width * scale / 16) * 16)
        return h, w, (0, 0, height, width)
    if mode in ("pad", "stretch"):
        return size, size, (0, 0, height, width)
    raise LayoutError(f"unknown crop mode {mode!r}: expected one of {', '.join(CROP_MODES)}")


def prepare_reference(image: torch.Tensor, size: int, mode: str, mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bring a reference (and its optional mask) to the reference size: returns IMAGE (1,h,w,3)
    with h, w multiples of 16, and the mask (h, w) transformed identically. ``size`` and ``mode``
    are checked by ``settings.check_subject``."""
    image = check_image(image)
    _, height, width, _ = image.shape
    if mask is not None:
        mask = mask.reshape(-1, *mask.shape[-2:])[0] if mask.ndim == 3 else mask
        if mask.shape != (height, width):
            raise LayoutError(f"the subject mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                              f"{width}x{height}; the mask must match the image size")
    h, w, (top, left, ch, cw) = _geometry(height, width, size, mode)
    x = image.permute(0, 3, 1, 2)[:, :, top:top + ch, left:left + cw]
    m = None if mask is None else mask[None, None, top:top + ch, left:left + cw].float()
    if mode == "pad":
        side = max(ch, cw)
        pad = ((side - cw) // 2, side - cw - (side - cw) // 2, (side - ch) // 2, side - ch - (side - ch) // 2)
        x = F.pad(x, pad, value=0.5)
        m = None if m is None else F.pad(m, pad, value=0.0)
    x = _resize(x, h, w).clamp(0, 1)
    m = None if m is None else _resize(m, h, w, "bilinear").clamp(0, 1)[0, 0]
    return x.permute(0, 2, 3, 1).contiguous(), m


def route_masks(route: torch.Tensor, grid: tuple[int, int], n_subjects: int, height: int,
                width: int) -> torch.Tensor:
    """(x_len,) route -> (N, H, W) binary masks at image resolution (nearest upsampling)."""
    r = route.reshape(1, 1, *grid).float()
    up = F.interpolate(r, size=(height, width), mode="nearest")[0, 0]
    return torch.stack([(up == i).float() for i in range(n_subjects)] or [up[:0]])


def overlay(image: torch.Tensor, masks: torch.Tensor, opacity: float = 0.5, colors=None
            ) -> torch.Tensor:
    """Colour each condition's region (``colors``, default PALETTE order) over the image: IMAGE
    in, IMAGE out."""
    out = image[..., :3].clone()
    for i, m in enumerate(masks):
        colour = torch.tensor(_color(colors, i), dtype=out.dtype, device=out.device)
        a = (m.to(out) * opacity)[None, ..., None]
        out = out * (1 - a) + colour * a
    return out


def _color(colors, i: int):
    return colors[i] if colors is not None and i < len(colors) else PALETTE[i % len(PALETTE)]


def region_outlines(inside: torch.Tensor, grid: tuple[int, int], height: int, width: int,
                    dashed: torch.Tensor | None = None, thickness: int = 2) -> torch.Tensor:
    """(N, x_len) bool token regions -> (N, H, W) bool outlines at image resolution, ``thickness``
    px inside each region's border; rows where ``dashed`` (N,) is true get a dashed outline."""
    up = F.interpolate(inside.float().reshape(-1, 1, *grid), size=(height, width), mode="nearest")
    k = 2 * thickness + 1
    eroded = -F.max_pool2d(-up, k, stride=1, padding=thickness)
    lines = (up - eroded)[:, 0] > 0.5
    if dashed is not None and bool(dashed.any()):
        yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        gaps = ((yy + xx) // (4 * thickness)) % 2 == 1
        lines = lines & ~(dashed[:, None, None] & gaps)
    return lines


def route_overlay(images: torch.Tensor, routes: torch.Tensor | None, grid: tuple[int, int],
                  n_subjects: int, opacity: float = 0.5, colors=None, outlines=None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image with its own route drawn over it (``routes`` (B, x_len), one route per image,
    or (1, x_len) for every image, or None: no route) and the layout regions' ``outlines``
    ((N, x_len) bool, dashed (N,) bool) on top, in each condition's colour. Returns the overlay
    IMAGE (B, H, W, 3) and the masks (B * N, H, W): image 0's N condition masks, then image 1's
    ..."""
    batch, height, width, _ = images.shape
    if routes is not None and routes.shape[0] not in (1, batch):
        raise RoutingError(f"{batch} images arrived but the sampling run routed {routes.shape[0]}: "
                           "connect the images decoded from that sampler's LATENT")
    thickness = max(2, min(height, width) // 256)
    lines = None if outlines is None else region_outlines(outlines[0], grid, height, width,
                                                          outlines[1], thickness)
    overlays, masks = [], []
    for i in range(batch):
        if routes is None:
            m = torch.zeros(n_subjects, height, width)
        else:
            m = route_masks(routes[i if routes.shape[0] == batch else 0], grid, n_subjects, height, width)
        out = overlay(images[i:i + 1], m, opacity, colors)
        for j in range(0 if lines is None else lines.shape[0]):
            colour = torch.tensor(_color(colors, j), dtype=out.dtype)
            out[0][lines[j]] = colour
        overlays.append(out)
        masks.append(m)
    return torch.cat(overlays), torch.cat(masks)
