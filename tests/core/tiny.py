"""Tier 1 helpers (not tests): ``TinyFlux``, a pure-torch stand-in with FLUX.1's module layout
(the duck type ``musar_forward`` reads), deterministic tiny encoders and a tiny folder dataset.
No ComfyUI. ``tests/core/test_tiny_helpers.py`` checks the helpers themselves."""

import json
import types

import torch
from PIL import Image, ImageDraw
from torch import nn

from musar.train import Encoders


class _Mod(nn.Module):
    def __init__(self, hidden, n):
        super().__init__()
        self.lin = nn.Linear(hidden, n * hidden)


class _QK(nn.Module):
    def forward(self, q, k, v):
        return q, k


class _Attn(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.qkv, self.norm, self.proj = nn.Linear(hidden, 3 * hidden), _QK(), nn.Linear(hidden, hidden)


def _mlp(hidden):
    return nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))


class _Double(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.num_heads = heads
        for side in ("img", "txt"):
            setattr(self, f"{side}_mod", _Mod(hidden, 6))
            setattr(self, f"{side}_norm1", nn.LayerNorm(hidden, elementwise_affine=False))
            setattr(self, f"{side}_attn", _Attn(hidden))
            setattr(self, f"{side}_norm2", nn.LayerNorm(hidden, elementwise_affine=False))
            setattr(self, f"{side}_mlp", _mlp(hidden))


class _Single(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.hidden_size, self.num_heads = hidden, heads
        self.modulation = _Mod(hidden, 3)
        self.pre_norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.linear1 = nn.Linear(hidden, 3 * hidden + 2 * hidden)
        self.linear2 = nn.Linear(hidden + 2 * hidden, hidden)
        self.norm, self.mlp_act = _QK(), nn.GELU()


class _Rope(nn.Module):
    """FLUX's rotary table shape (B, 1, L, D/2, 2, 2) with a simple position-dependent angle."""

    def __init__(self, head_dim):
        super().__init__()
        self.half = head_dim // 2

    def forward(self, ids):
        pos = ids[..., 1:].sum(-1, keepdim=True)  # (B, L, 1)
        angle = pos * torch.linspace(0.01, 1.0, self.half)  # (B, L, D/2)
        c, s = torch.cos(angle), torch.sin(angle)
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)[:, None]


class _Final(nn.Module):
    def __init__(self, hidden, out):
        super().__init__()
        self.linear = nn.Linear(hidden, out)
        self.ada = nn.Linear(hidden, hidden)

    def forward(self, x, vec):
        return self.linear(x * (1 + self.ada(vec)[:, None]))


class TinyFlux(nn.Module):
    def __init__(self, hidden=32, heads=2, depth=1, single=1, context=16, vec=8, seed=0):
        super().__init__()
        self.hidden_size = hidden
        self.params = types.SimpleNamespace(guidance_embed=True, vec_in_dim=vec)
        self.img_in = nn.Linear(64, hidden)
        self.time_in, self.guidance_in = _mlp_in(hidden), _mlp_in(hidden)
        self.vector_in, self.txt_in = nn.Linear(vec, hidden), nn.Linear(context, hidden)
        self.pe_embedder = _Rope(hidden // heads)
        self.double_blocks = nn.ModuleList(_Double(hidden, heads) for _ in range(depth))
        self.single_blocks = nn.ModuleList(_Single(hidden, heads) for _ in range(single))
        self.final_layer = _Final(hidden, 64)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.0 if p.ndim == 1 else 0.1))


def _mlp_in(hidden):
    return nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))


def tiny_encoders(context=16, vec=8, namespace="tiny") -> Encoders:
    """Deterministic stand-in encoders: a fixed random 8x8 patch projection for images, hashed
    character embeddings for text (prompts padded to 12 tokens like a T5 min_length)."""
    proj = torch.randn(16, 3 * 8 * 8, generator=torch.Generator().manual_seed(1)) * 0.2
    table = torch.randn(256, context, generator=torch.Generator().manual_seed(2))

    def image(pixels):
        b, _, h, w = pixels.shape
        patches = pixels.unfold(2, 8, 8).unfold(3, 8, 8)  # (1, 3, h/8, w/8, 8, 8)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, h // 8, w // 8, -1)
        return (patches @ proj.t()).permute(0, 3, 1, 2).contiguous()

    def tokens(text, minimum):
        ids = [ord(c) % 256 for c in text][:40] or [0]
        ids += [1] * max(0, minimum - len(ids))
        return table[ids][None]

    def prompt(text):
        feats = tokens(text, 12)
        return feats, feats.mean(1)[:, :vec]

    return Encoders(image=image, prompt=prompt, caption=lambda t: tokens(t, 0), namespace=namespace)


def make_pair_folder(root, n_items=4, size=64):
    """A folder-layout dataset of single-subject pairs: coloured shapes on two backgrounds."""
    colours = [(200, 40, 40), (40, 160, 60), (40, 80, 200), (220, 180, 30), (150, 60, 170)]
    for i in range(n_items):
        folder = root / f"item_{i}"
        folder.mkdir(parents=True)
        for k, bg in enumerate(((235, 235, 230), (90, 110, 130))):
            img = Image.new("RGB", (size, size), bg)
            d = ImageDraw.Draw(img)
            box = (size // 4 + 4 * k, size // 4, 3 * size // 4, 3 * size // 4 - 4 * k)
            (d.ellipse if i % 2 else d.rectangle)(box, fill=colours[i % len(colours)])
            img.save(folder / f"panel_{k}.png")
        (folder / "meta.json").write_text(json.dumps({
            "item": f"object {i}", "description_0": f"object {i} on a light table",
            "description_1": f"object {i} in a dark room", "category": "toy"}))
    return root


def attachment(schedule, caption_lens=(), image_lens=(), references=None):
    """A ``musar.attachment.Attachment`` for ``schedule`` whose subjects have these caption and
    image token counts (random latents and caption features; image counts must be 2 or a
    square of even side), routing ``references`` (ReferenceLabels) when given."""
    from musar.attachment import Attachment
    from musar.session import Recorder
    from musar.subjects import Subject, SubjectSet

    g = torch.Generator().manual_seed(0)
    subjects = SubjectSet()
    for i, (n_caption, n_image) in enumerate(zip(caption_lens, image_lens)):
        side = int(round(n_image ** 0.5))
        h, w = (2, 4) if n_image == 2 else (2 * side, 2 * side)
        latent = torch.randn(1, 16, h, w, generator=g)
        subjects = subjects.add(Subject(latent, f"subject {i + 1}", torch.randn(1, n_caption, 16, generator=g)))
    return Attachment(subjects, references, schedule, Recorder(()), lambda x: x)
