"""Reference subjects: what the MUSAR_Subject node produces and the routing consumes.

A subject is its reference image latent (raw VAE latent, 16 channels), an optional keep-mask
over its tokens, and its caption encoded by the main text encoder (T5 part for FLUX).
"""

from __future__ import annotations

import dataclasses

import torch

from .errors import LayoutError
from .layout import check_subject_count, mask_to_tokens, pack_latent
from .regions import Region

# Overlay colours (RGB 0..1) per subject index; the web extension uses the same table.
PALETTE = (
    (0.93, 0.26, 0.21), (0.13, 0.59, 0.95), (0.30, 0.69, 0.31), (1.00, 0.76, 0.03),
    (0.61, 0.15, 0.69), (0.00, 0.74, 0.83), (1.00, 0.34, 0.13), (0.47, 0.33, 0.28),
    (0.91, 0.12, 0.39), (0.40, 0.23, 0.72), (0.55, 0.76, 0.29), (0.38, 0.49, 0.55),
    (0.80, 0.86, 0.22), (0.25, 0.32, 0.71), (0.96, 0.56, 0.69), (0.00, 0.59, 0.53),
)


@dataclasses.dataclass(frozen=True, eq=False)
class Subject:
    latent: torch.Tensor  # (1, C, h, w) raw VAE latent of the reference image
    caption: str
    caption_tokens: torch.Tensor  # (1, n, context_dim) text-encoder features, padding removed
    keep: torch.Tensor | None = None  # (tokens,) bool: which reference tokens are used
    preview: torch.Tensor | None = None  # (1, H, W, 3) the reference image, for the UI
    region: Region | None = None  # where in the generated image it should go (optional)

    def __post_init__(self):
        if self.latent.ndim != 4 or self.latent.shape[0] != 1:
            raise LayoutError(f"a subject latent must be (1, C, h, w), got {tuple(self.latent.shape)}")
        if self.caption_tokens.ndim != 3 or self.caption_tokens.shape[1] == 0:
            raise LayoutError(f"subject caption features must be (1, n>0, dim), got "
                              f"{tuple(self.caption_tokens.shape)}")
        if self.keep is not None:
            if self.keep.shape != (self.n_grid_tokens,):
                raise LayoutError(f"mask covers {tuple(self.keep.shape)} tokens but the reference "
                                  f"has {self.n_grid_tokens}")
            if not bool(self.keep.any()):
                raise LayoutError(f"the mask of subject '{self.caption}' selects none of its "
                                  "reference: paint the subject white (1) in the mask")

    @property
    def grid(self) -> tuple[int, int]:
        return (self.latent.shape[2] + 1) // 2, (self.latent.shape[3] + 1) // 2

    @property
    def n_grid_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        return self.n_grid_tokens if self.keep is None else int(self.keep.sum())

    def packed(self, process_in=None) -> torch.Tensor:
        """(1, n_tokens, C*4) reference tokens (keep-mask applied). ``process_in`` maps the raw
        VAE latent into the model's latent space (FLUX: shift and scale), as the canvas is."""
        latent = self.latent if process_in is None else process_in(self.latent)
        tokens, _ = pack_latent(latent)
        return tokens if self.keep is None else tokens[:, self.keep]

    @staticmethod
    def keep_from_mask(mask: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        grid = ((latent.shape[2] + 1) // 2, (latent.shape[3] + 1) // 2)
        return mask_to_tokens(mask, grid)

    def __deepcopy__(self, memo):
        return self


@dataclasses.dataclass(frozen=True, eq=False)
class SubjectSet:
    subjects: tuple[Subject, ...] = ()

    def __len__(self) -> int:
        return len(self.subjects)

    def add(self, subject: Subject) -> SubjectSet:
        check_subject_count(len(self.subjects) + 1)
        return SubjectSet(self.subjects + (subject,))

    @property
    def has_hard_region(self) -> bool:
        return any(s.region is not None and s.region.mode == "hard" for s in self.subjects)

    def check_model(self, latent_channels: int, context_dim: int) -> None:
        for i, s in enumerate(self.subjects, 1):
            if s.latent.shape[1] != latent_channels:
                raise LayoutError(f"subject {i} ('{s.caption}') was encoded by a VAE with "
                                  f"{s.latent.shape[1]} latent channels but the model expects "
                                  f"{latent_channels}: use the model's own VAE (FLUX: ae.safetensors)")
            if s.caption_tokens.shape[-1] != context_dim:
                raise LayoutError(f"subject {i} ('{s.caption}') caption features are "
                                  f"{s.caption_tokens.shape[-1]} wide but the model expects "
                                  f"{context_dim}: encode it with the model's text encoder")

    def __deepcopy__(self, memo):
        return self
