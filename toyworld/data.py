"""Toy encoders and the base model's pre-encoded training pools.

Pools are rendered from ``World`` with seeded rows and encoded once through the toy VAE / model
latent space (``process_latent_in(vae.encode(pixels))``: the same tensors ComfyUI's graph feeds
FLUX), then cached under ``.cache/toy`` (fp16 latents + prompts in the metadata).

Base-model data [chosen]: square 128 px scenes of training subjects with 1 subject (50 %), 2
(20 %), 3 (15 %) or 4 (15 %), captioned by the world (single caption / MUSAR-Gen template), and
wide 128 x 256 two-panel images (two different training subjects, each on its own background)
captioned with the pack's diptych prompt template - real FLUX can draw diptychs, and debiased
diptych learning relies on it.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch

from .common import CACHE_DIR, module, save_safetensors

SUBJECT_COUNTS = ((1, 0.5), (2, 0.2), (3, 0.15), (4, 0.15))


class ToyEncoders:
    """The toy world's ComfyUI objects (MODEL latent space, CLIP, VAE) as plain callables."""

    def __init__(self, pack, model, clip, vae):
        self.pack, self.model, self.clip, self.vae = pack, model, clip, vae
        self._subject = module(pack, "nodes.subject")
        self._prompts: dict = {}

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in 0..1 -> (B, 16, H/8, W/8) model-space latents."""
        return self.model.model.process_latent_in(self.vae.encode(pixels.movedim(1, -1)))

    def prompt(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """text -> ((1, P, 64) features, (1, 32) pooled), exactly as CLIPTextEncode makes them."""
        if text not in self._prompts:
            cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(text), return_pooled=True)
            self._prompts[text] = (cond.float(), pooled.float())
        return self._prompts[text]

    def caption(self, text: str) -> torch.Tensor:
        """Subject caption -> (1, n, 64), exactly as MUSAR_Subject encodes it."""
        return self._subject.encode_caption(self.clip, text)

    def for_trainer(self, namespace: str):
        samples = module(self.pack, "musar.train.samples")
        return samples.Encoders(image=self.image, prompt=self.prompt, caption=self.caption,
                                namespace=namespace)


def pixels_of(images) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) float in 0..1."""
    arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.from_numpy(arr).float().div(255.0).permute(0, 3, 1, 2).contiguous()


def _count(rnd: random.Random) -> int:
    return rnd.choices([n for n, _ in SUBJECT_COUNTS], [p for _, p in SUBJECT_COUNTS])[0]


def render_square(world, seed: int, index: int):
    """One square base-model scene: (PIL image, prompt)."""
    rs = int(np.random.SeedSequence([seed, 0, index]).generate_state(1)[0])
    img, truth = world.sample_scene(rs, _count(random.Random(rs)), "train")
    return img, truth.caption


def render_wide(world, seed: int, index: int, template: str):
    """Two different training subjects on two panels side by side, diptych prompt."""
    rs = int(np.random.SeedSequence([seed, 1, index]).generate_state(1)[0])
    rnd = random.Random(rs)
    a, b = rnd.sample(list(world.train_subjects), 2)
    bg_a, bg_b = rnd.sample(list(world.backgrounds), 2)
    left, ta = world.render_scene([a], bg_a, None, rs)
    right, tb = world.render_scene([b], bg_b, None, rs + 1)
    canvas = np.concatenate([np.asarray(left), np.asarray(right)], axis=1)
    from PIL import Image

    first, second = (ta, tb) if rnd.random() < 0.5 else (tb, ta)
    return Image.fromarray(canvas), template.format(desc_a=first.caption, desc_b=second.caption)


def build_pool(pack, world, enc: ToyEncoders, kind: str, n: int, seed: int, tag: str,
               chunk: int = 64) -> tuple[torch.Tensor, list[str]]:
    """(latents (n, 16, h, w) fp16, prompts) of ``kind`` 'square' or 'wide', cached on disk."""
    key = hashlib.sha256(f"{kind}/{n}/{seed}/{world.seed}/{world.panel}/{tag}".encode()).hexdigest()[:12]
    path = Path(CACHE_DIR) / f"base_pool_{kind}_{n}_{key}.safetensors"
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return f.get_tensor("latents"), json.loads(f.metadata()["prompts"])
    template = module(pack, "musar.data.diptych").DEFAULT_PROMPT_TEMPLATE
    latents, prompts = [], []
    for start in range(0, n, chunk):
        rows = [render_square(world, seed, i) if kind == "square" else render_wide(world, seed, i, template)
                for i in range(start, min(n, start + chunk))]
        latents.append(enc.image(pixels_of([r[0] for r in rows])).half())
        prompts += [r[1] for r in rows]
    out = torch.cat(latents)
    save_safetensors({"latents": out}, path, {"prompts": json.dumps(prompts)})
    return out, prompts
