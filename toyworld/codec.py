"""Toy latent codec with FLUX's latent geometry: 8x downscale, 16 channels.

encode: pixels (B, H, W, 3) in 0..1 -> 8x8 space-to-depth (192 values per latent pixel, order
(dy, dx, rgb)) -> subtract the fitted mean -> project on the top-16 principal components ->
divide by the per-channel standard deviation (latents have roughly zero mean, unit variance).
decode: the exact transpose (multiply by the scale, back-project, add the mean), depth-to-space,
clamp to 0..1. decode(encode(x)) is the orthogonal projection of x onto the PCA subspace, the best
16-dimensional linear reconstruction of world patches in the least-squares sense.
"""

import logging

import numpy as np
import torch

from .errors import ToyWorldError

logger = logging.getLogger(__name__)


def space_to_depth(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, H/f, W/f, f*f*C) with the patch flattened in (dy, dx, c) order."""
    b, h, w, c = pixels.shape
    x = pixels.reshape(b, h // factor, factor, w // factor, factor, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h // factor, w // factor, factor * factor * c)


def depth_to_space(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse of ``space_to_depth``."""
    b, h, w, d = patches.shape
    c = d // (factor * factor)
    x = patches.reshape(b, h, w, factor, factor, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * factor, w * factor, c)


def _as_pixels(pixels, factor: int) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(pixels) if not isinstance(pixels, torch.Tensor) else pixels)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] % factor or x.shape[2] % factor:
        raise ToyWorldError(f"expected pixels (B, H, W, 3) with H and W multiples of {factor}, "
                         f"got shape {tuple(x.shape)}")
    return x.float()


class ToyCodec:
    """Fixed linear 16-channel codec. Build it with ``ToyCodec.fit`` or ``from_state_dict``."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor, factor: int = 8):
        d = factor * factor * 3
        if mean.shape != (d,) or components.ndim != 2 or components.shape[1] != d or \
                scale.shape != (components.shape[0],):
            raise ToyWorldError(f"codec tensors do not fit an {factor}x{factor} RGB patch ({d} values): mean "
                             f"{tuple(mean.shape)}, components {tuple(components.shape)}, scale {tuple(scale.shape)}")
        self.factor = factor
        self.mean = mean.float()
        self.components = components.float().contiguous()   # (C, 192), orthonormal rows
        self.scale = scale.float()             # (C,)

    @property
    def latent_channels(self) -> int:
        return self.components.shape[0]

    @classmethod
    def fit(cls, images, seed: int = 0, channels: int = 16, factor: int = 8, max_patches: int = 200_000):
        """PCA of the 8x8 patches of ``images`` (B, H, W, 3) in 0..1 (or uint8, or a list of PIL)."""
        if isinstance(images, (list, tuple)):
            images = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
        x = space_to_depth(_as_pixels(images, factor), factor).reshape(-1, factor * factor * 3).double()
        if x.shape[0] > max_patches:
            gen = torch.Generator().manual_seed(seed)
            x = x[torch.randperm(x.shape[0], generator=gen)[:max_patches]]
        if x.shape[0] < channels * 4:
            raise ToyWorldError(f"need at least {channels * 4} patches to fit a {channels}-channel codec, "
                             f"got {x.shape[0]}: pass more or larger images")
        mean = x.mean(0)
        cov = (x - mean).T @ (x - mean) / (x.shape[0] - 1)
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[:channels]
        comps = evecs[:, order].T
        sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
        comps = comps * sign  # deterministic sign: largest entry of each component positive
        scale = evals[order].clamp_min(1e-12).sqrt()
        explained = float(evals[order].sum() / evals.sum())
        logger.info("toy codec fitted on %d patches: %d channels explain %.4f of the variance",
                    x.shape[0], channels, explained)
        return cls(mean.float(), comps.float(), scale.float(), factor)

    @classmethod
    def fit_world(cls, world, n_images: int = 256, seed: int = 0, **kwargs):
        """Fit on ``n_images`` world scenes (1-4 subjects, all backgrounds, training subjects)."""
        images = [world.sample_scene(seed * 1_000_003 + i, 1 + i % 4, "train")[0] for i in range(n_images)]
        return cls.fit(images, seed=seed, **kwargs)

    def encode(self, pixels) -> torch.Tensor:
        """pixels (B, H, W, 3) in 0..1 -> latents (B, C, H/8, W/8)."""
        patches = space_to_depth(_as_pixels(pixels, self.factor), self.factor)
        z = (patches - self.mean) @ self.components.T / self.scale
        return z.permute(0, 3, 1, 2).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w) -> pixels (B, 8h, 8w, 3) clamped to 0..1."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ToyWorldError(f"expected latents (B, {self.latent_channels}, h, w), got {tuple(latents.shape)}")
        z = latents.float().permute(0, 2, 3, 1) * self.scale
        patches = z @ self.components + self.mean
        return depth_to_space(patches, self.factor).clamp(0.0, 1.0)

    def state_dict(self) -> dict:
        """Plain tensors (safetensors-ready): mean (192,), components (C, 192), scale (C,)."""
        return {k: v.clone().contiguous() for k, v in
                (("mean", self.mean), ("components", self.components), ("scale", self.scale))}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ToyCodec":
        missing = {"mean", "components", "scale"} - set(state)
        if missing:
            raise ToyWorldError(f"toy codec state needs tensors mean, components, scale; missing {sorted(missing)}")
        d = state["mean"].shape[0]
        factor = int(round((d / 3) ** 0.5))
        return cls(state["mean"], state["components"], state["scale"], factor)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two 0..1 images (any equal shapes)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)
