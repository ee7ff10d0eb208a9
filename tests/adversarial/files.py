"""Files the adversarial tier writes: a tiny dual LoRA and small pair datasets (no ComfyUI)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from musar import lora as musar_lora

ROOT = Path(__file__).resolve().parents[2]
HIDDEN, MLP = 128, 512  # the tiny stand-in FLUX (MUSAR_TinyFluxLoader "tiny")
TINY = "tiny (128 wide, 2+2 blocks)"
SHAPES = {"img_in": (64, HIDDEN), "img_mod.lin": (HIDDEN, 6 * HIDDEN), "img_attn.qkv": (HIDDEN, 3 * HIDDEN),
          "img_attn.proj": (HIDDEN, HIDDEN), "img_mlp.2": (MLP, HIDDEN), "modulation.lin": (HIDDEN, 3 * HIDDEN),
          "linear1": (HIDDEN, 3 * HIDDEN + MLP), "linear2": (HIDDEN + MLP, HIDDEN)}


def tiny_lora(seed: int = 0, hidden: int = HIDDEN):
    """A random dual LoRA for the tiny FLUX (or, ``hidden`` 256, for a twice wider one)."""
    scale = hidden // HIDDEN
    shapes = {name: tuple(d * scale for d in SHAPES[name.split(".", 2)[-1]])
              for name in musar_lora.target_modules(2, 2) if name != "img_in"}
    shapes["img_in"] = (64, hidden)
    params = musar_lora.init_trainable(shapes, 2, 4, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, value in params.items():
            if key.endswith(".up"):
                value.copy_(torch.randn(value.shape, generator=gen) * 0.3)
    return musar_lora.from_trainable(params, {"musar.hidden_size": str(hidden)})


def make_pair_dataset(root: Path, items: int = 4, size: int = 64) -> Path:
    """Folder-layout single-subject pairs: a coloured disc or square per item, two backgrounds."""
    for i in range(items):
        folder = root / f"object_{i}"
        folder.mkdir(parents=True)
        for k, background in enumerate(((230, 230, 225), (80, 100, 120))):
            image = Image.new("RGB", (size, size), background)
            shape = ImageDraw.Draw(image).ellipse if i % 2 else ImageDraw.Draw(image).rectangle
            shape((12 + 4 * k, 12, size - 12, size - 12 - 4 * k), fill=(60 * i % 255, 90, 200 - 40 * i))
            image.save(folder / f"panel_{k}.png")
        (folder / "meta.json").write_text(json.dumps({"item": f"thing {i}", "description_0": f"thing {i} indoors",
                                                      "description_1": f"thing {i} outdoors"}))
    return root
