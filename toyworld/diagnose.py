"""Does the trained dual LoRA use the references? Flow-matching loss on diptych samples the
training run never drew (held-out draws of the same pair parquet, or pairs of held-out subjects)
with (1) the right references, (2) references of another sample (swapped), (3) the base model
without LoRA (right references), at fixed timesteps and noise. If (1) is not clearly below (2),
the LoRA ignores the references.

    python -m toyworld.diagnose [--lora FILE] [--split heldout] [--samples 48]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from . import common
from .common import module

logger = logging.getLogger("toyworld.diagnose")
TIMES = (0.3, 0.5, 0.7, 0.9)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=common.WEIGHTS_DIR)
    p.add_argument("--lora", type=Path, default=common.WEIGHTS_DIR / "toy_musar_lora.safetensors")
    p.add_argument("--split", default="heldout", choices=("train", "heldout"))
    p.add_argument("--samples", type=int, default=48)
    p.add_argument("--work", type=Path, default=common.CACHE_DIR / "diagnose")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def encoded_samples(pack, args, model, clip, vae) -> list:
    world = module(pack, "toyworld").World(seed=0, panel=128)
    parquet = module(pack, "toyworld").export_pairs(world, args.work, 64, seed=12345, split=args.split)
    data = module(pack, "musar.train.dataset").open_training_set(parquet, target_size=(128, 256),
                                                                cond_size=128, seed=999)
    glue, samples = module(pack, "nodes.train_glue"), module(pack, "musar.train.samples")
    enc = samples.SampleEncoder(glue.make_encoders(model, clip, vae), args.work / "cache")
    with torch.no_grad():
        return [enc.encode(data.source.sample(i)) for i in range(args.samples)]


def losses(pack, dm, items, lora_modules) -> list[float]:
    """Mean velocity MSE per sample over TIMES; ``items``: (sample, references sample)."""
    ff, lay = module(pack, "musar.flux_forward"), module(pack, "musar.layout")
    out = []
    for k, (s, r) in enumerate(items):
        g = torch.Generator().manual_seed(k)
        noise = torch.randn(s.x0.shape, generator=g)
        ids = lay.grid_ids(*s.grid)[None]
        refs = torch.cat(lay.subject_ids(list(r.subject_grids)))
        total = 0.0
        for t in TIMES:
            xt = (1 - t) * s.x0 + t * noise
            inp = ff.ForwardInputs(xt, ids, s.context, list(r.captions), r.subjects, refs, torch.tensor([t]),
                                   s.pooled, None)
            layout = lay.TokenLayout(s.context.shape[1], s.x0.shape[1], tuple(c.shape[1] for c in r.captions),
                                     tuple(g[0] * g[1] for g in r.subject_grids))
            pred = ff.musar_forward(dm, inp, layout, module(pack, "musar.routing").RoutePlan(static=True),
                                    lora=lora_modules)
            total += float(((pred - (noise - s.x0)) ** 2).mean())
        out.append(total / len(TIMES))
    return out


def main(argv=None) -> int:
    args = parse(argv)
    common.log_setup(False)
    pack = common.setup(threads=args.threads)
    toy = module(pack, "nodes.toy")
    model, clip, vae = toy.load_toy_world(args.weights)
    samples = encoded_samples(pack, args, model, clip, vae)
    lora = module(pack, "musar.omini").load_lora_file(args.lora).modules
    dm = model.model.diffusion_model
    swapped = samples[1:] + samples[:1]
    with torch.no_grad():
        result = {"right": losses(pack, dm, list(zip(samples, samples)), lora),
                  "swapped": losses(pack, dm, list(zip(samples, swapped)), lora),
                  "no_lora": losses(pack, dm, list(zip(samples, samples)), {})}
    mean = {k: round(sum(v) / len(v), 5) for k, v in result.items()}
    wins = sum(a < b for a, b in zip(result["right"], result["swapped"]))
    report = {"lora": str(args.lora), "split": args.split, "samples": len(samples), "mean_loss": mean,
              "right_below_swapped": f"{wins}/{len(samples)}"}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
