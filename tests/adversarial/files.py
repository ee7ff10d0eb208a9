"""Files the adversarial tier writes: a tiny dual LoRA (no ComfyUI; the pair datasets come from
tests/comfy/musar_helpers.make_pairs)."""

from __future__ import annotations

from pathlib import Path

import torch

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
