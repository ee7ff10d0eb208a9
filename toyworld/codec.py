"""The toy world's latent codec: exact and linear, in FLUX's latent geometry (8x down, 16 channels).

``encode``: pixels (B, H, W, 3) in 0..1 -> the mean colour of every 8 x 8 cell -> minus ``mean``,
divided by ``std`` (per RGB channel) -> times ``matrix`` (16 x 3, orthonormal columns) ->
latents (B, 16, H/8, W/8). ``decode``: ``matrix.T``, times ``std``, plus ``mean``, each latent pixel
painted as a flat 8 x 8 cell, clamped to 0..1.

Because the world is made of flat 8 px cells of palette colours, ``decode(encode(x)) == x`` for
every world image (up to float rounding; exact after 8-bit quantisation), and
``encode(decode(z))`` is the projection of z onto the codec's 3-dimensional colour subspace (the
other 13 directions carry no image: a model's output there never reaches a pixel). ``mean`` and
``std`` are the statistics of the world's cell colours, so each colour direction of the latent has
about unit variance like FLUX's own latents; ``matrix`` is a seeded random rotation.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from .errors import ToyWorldError

FACTOR, CHANNELS = 8, 16


def random_matrix(seed: int, channels: int = CHANNELS) -> torch.Tensor:
    """(channels, 3) with orthonormal columns, from a seeded Gaussian (QR, signs fixed)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(channels, 3, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class CellCodec:
    """Exact linear codec of flat-cell images (see the module doc)."""

    factor, latent_channels = FACTOR, CHANNELS

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, matrix: torch.Tensor):
        mean, std, matrix = (torch.as_tensor(t, dtype=torch.float32).contiguous() for t in (mean, std, matrix))
        if mean.shape != (3,) or std.shape != (3,) or matrix.shape != (CHANNELS, 3) or bool((std <= 0).any()):
            raise ToyWorldError(f"expected mean (3,), positive std (3,) and matrix ({CHANNELS}, 3), got "
                                f"{tuple(mean.shape)}, {tuple(std.shape)}, {tuple(matrix.shape)}")
        self.mean, self.std, self.matrix = mean, std, matrix

    @classmethod
    def for_world(cls, seed: int = 0, gain: float = 1.0) -> CellCodec:
        """Statistics of the world's cells: scenes with 1-4 blocks on each background (the
        codec's own fixed sample, independent of any training data). ``gain`` multiplies the
        latents (folded into ``std``, so the codec stays exact)."""
        from .world import World, paint, render_cells

        world, rnd, cells = World(0), random.Random(f"codec/{seed}"), []
        for i in range(240):
            placed, background = world.sample_scene(rnd, 1 + i % 4, "all")
            cells.append(paint(render_cells(placed, background))[::FACTOR, ::FACTOR].reshape(-1, 3))
        rgb = torch.from_numpy(np.concatenate(cells)).double() / 255.0
        return cls(rgb.mean(0), rgb.std(0) / gain, random_matrix(seed))

    def _check(self, t: torch.Tensor, what: str, channels: int, axis: int) -> None:
        h, w = (t.shape[1], t.shape[2]) if axis == -1 else (t.shape[-2], t.shape[-1])
        if t.dim() != 4 or t.shape[axis] != channels or (what == "pixels" and (h % FACTOR or w % FACTOR)):
            layout = "(B, H, W, 3) with H and W multiples of 8" if what == "pixels" else f"(B, {channels}, h, w)"
            raise ToyWorldError(f"expected {what} {layout}, got {tuple(t.shape)}")

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) in 0..1 -> (B, 16, H/8, W/8)."""
        self._check(pixels, "pixels", 3, -1)
        b, h, w, _ = pixels.shape
        cells = pixels.float().reshape(b, h // FACTOR, FACTOR, w // FACTOR, FACTOR, 3).mean(dim=(2, 4))
        unit = (cells - self.mean.to(cells)) / self.std.to(cells)
        return torch.einsum("bhwc,kc->bkhw", unit, self.matrix.to(cells))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 16, h, w) -> (B, 8h, 8w, 3) in 0..1."""
        self._check(latents, "latents", CHANNELS, 1)
        z = latents.float()
        rgb = torch.einsum("bkhw,kc->bhwc", z, self.matrix.to(z)) * self.std.to(z) + self.mean.to(z)
        return rgb.repeat_interleave(FACTOR, 1).repeat_interleave(FACTOR, 2).clamp(0.0, 1.0)

    def state_dict(self) -> dict:
        return {k: v.clone().contiguous() for k, v in (("mean", self.mean), ("std", self.std), ("matrix", self.matrix))}

    @classmethod
    def from_state_dict(cls, state: dict) -> CellCodec:
        missing = {"mean", "std", "matrix"} - set(state)
        if missing:
            raise ToyWorldError(f"toy codec state needs tensors mean, std, matrix; missing {sorted(missing)}")
        return cls(state["mean"], state["std"], state["matrix"])
