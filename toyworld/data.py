"""The base model's training data, drawn fresh at every step (no pool, nothing cached on disk).

Step ``s`` of phase ``p`` draws its batch from ``random.Random(f"base/{seed}/{p}/{s}")``: a
square step has ``batch`` scenes of 1-4 training-split blocks in random slots on a random
background; a diptych step (``wide_share`` of the steps) has ``batch // 2`` 128 x 256 two-panel
images, one block per panel, prompted with the LoRA's diptych template. Captions name the colours
for half of the images [chosen]; ``prompt_dropout`` of the prompts are empty (for CFG).

Latents: every cell of the world is one palette colour and the codec is linear per cell, so the
latent of an image is a lookup of each cell's colour in a table made by encoding one cell of
every palette colour through the toy VAE exactly as ComfyUI's graph does
(``process_latent_in(vae.encode(pixels))``; a tier-2 test checks it equals encoding the image).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from .common import module
from .world import BACKGROUNDS, DIPTYCH_TEMPLATE, NAMES, Placed, World, cell_indices, paint, scene_caption

SUBJECT_COUNTS = (1, 2, 3, 4)  # equally often [chosen]


class ToyEncoders:
    """The toy world's ComfyUI objects (MODEL latent space, CLIP, VAE) as plain callables."""

    def __init__(self, pack, model, clip, vae):
        self.pack, self.model, self.clip, self.vae = pack, model, clip, vae
        self._subject = module(pack, "nodes.subject")
        swatch = paint(np.asarray(NAMES, dtype=object)[None])  # one cell of every palette colour
        pixels = torch.from_numpy(swatch)[None].permute(0, 3, 1, 2).float() / 255.0
        self.table = self.image(pixels)[0, :, 0, :].T.contiguous()  # (len(NAMES), 16)

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in 0..1 -> (B, 16, H/8, W/8) model-space latents."""
        return self.model.model.process_latent_in(self.vae.encode(pixels.movedim(1, -1)))

    def latents(self, cells: np.ndarray) -> torch.Tensor:
        """(B, h, w) cell indices -> (B, 16, h, w): the table lookup equal to ``image``."""
        return self.table[torch.from_numpy(np.asarray(cells, dtype=np.int64))].permute(0, 3, 1, 2)

    def prompt(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """text -> ((1, P, 64) features, (1, 32) pooled), exactly as CLIPTextEncode makes them."""
        cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(text), return_pooled=True)
        return cond.float(), pooled.float()

    def caption(self, text: str) -> torch.Tensor:
        """Subject caption -> (1, n, 64), exactly as MUSAR_Subject encodes it."""
        return self._subject.encode_caption(self.clip, text)

    def for_trainer(self, namespace: str):
        samples = module(self.pack, "musar.train.samples")
        return samples.Encoders(image=self.image, prompt=self.prompt, caption=self.caption,
                                namespace=namespace)


def square(world: World, rnd: random.Random, colours: bool) -> tuple[np.ndarray, str]:
    placed, background = world.sample_scene(rnd, rnd.choice(SUBJECT_COUNTS), "train")
    return cell_indices(placed, background), scene_caption(placed, background, colours)


def diptych(world: World, rnd: random.Random, colours: bool) -> tuple[np.ndarray, str]:
    """Two panels side by side, one block each (different identities), diptych prompt."""
    a, b = rnd.sample(list(world.train), 2)
    panels = [([Placed(ident, rnd.choice(world.slots))], rnd.choice(list(BACKGROUNDS))) for ident in (a, b)]
    cells = np.concatenate([cell_indices(*p) for p in panels], axis=1)
    left, right = (scene_caption(*p, colours) for p in panels)
    return cells, DIPTYCH_TEMPLATE.format(desc_left=left, desc_right=right)


def step_batch(world: World, seed: int, phase: int, step: int, batch: int, wide_share: float,
               prompt_dropout: float) -> tuple[np.ndarray, list[str], random.Random]:
    """The seeded batch of one step: (cells (B, 16, 16 or 32), prompts, the step's generator)."""
    rnd = random.Random(f"base/{seed}/{phase}/{step}")
    wide = rnd.random() < wide_share
    make, n = (diptych, max(1, batch // 2)) if wide else (square, batch)
    rows = [make(world, rnd, rnd.random() < 0.5) for _ in range(n)]
    prompts = ["" if rnd.random() < prompt_dropout else text for _, text in rows]
    return np.stack([c for c, _ in rows]), prompts, rnd


def pixels_of(cells: np.ndarray) -> torch.Tensor:
    """(B, h, w) cell indices -> (B, 3, h*8, w*8) float pixels in 0..1 (for checks and figures)."""
    names = np.asarray(NAMES, dtype=object)
    arr = np.stack([paint(names[c]) for c in cells])
    return torch.from_numpy(arr).float().div(255.0).permute(0, 3, 1, 2)

