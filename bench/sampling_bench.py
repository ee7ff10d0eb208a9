"""Sampling steps through real ComfyUI on a FLUX-architecture model wide enough that linear
layers matter: MUSAR (N subjects, node defaults) vs the same references as ComfyUI's
``ReferenceLatent`` conditioning (Kontext-style dense attention, no MUSAR) vs plain
text-to-image, with and without MUSAR's condition cache.

Every configuration samples SHAPES["steps"] euler steps (cfg 1, FLUX-dev style guidance) in
shuffled order per round after a warm-up run; a sampler callback stamps the end of every step,
so step 1 and steps 2..n are timed separately (CPU time of one torch thread; medians over
rounds, and ratios paired per round). Configurations: t2i, reference_latent, musar (the
MUSAR_ApplyRouting node's defaults), musar_static (dynamic routing off), musar_cache.
Usage: python bench/sampling_bench.py [--kernel sdpa|default] [--rounds 4] [--quick] [--json P]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from musar_run import runtime  # noqa: E402

MODEL = dict(hidden=1024, heads=8, depth=2, single_depth=2, context_dim=64, vec_dim=32)
SHAPES = dict(canvas=(16, 16), refs=((16, 16),) * 3, prompt=64, captions=(8, 12, 16), steps=3)
PAIRS = (("musar", "reference_latent"), ("musar_static", "reference_latent"),
         ("musar_cache", "t2i"), ("musar", "t2i"), ("reference_latent", "t2i"))
QUICK = dict(canvas=(8, 8), refs=((8, 8),) * 3, prompt=16, captions=(8, 12, 16), steps=3)


def bootstrap(kernel: str):
    """ComfyUI with the chosen attention kernel ('default' = what ComfyUI picks on this CPU:
    sub-quadratic; 'sdpa' = --use-pytorch-cross-attention). Must run before model_management."""
    comfy_dir = runtime.find_comfyui()
    sys.path.insert(0, str(comfy_dir))
    import comfy.cli_args
    import comfy.options  # noqa: F401

    comfy.cli_args.args.use_pytorch_cross_attention = kernel == "sdpa"
    runtime.bootstrap()
    pack = runtime.load_pack(ROOT)
    from comfy.ldm.modules import attention as comfy_attention

    return pack, comfy_attention.optimized_attention.__name__


def conditioning(shapes: dict, refs, context_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randn(1, shapes["prompt"], context_dim, generator=g)
    extra = {"pooled_output": torch.randn(1, MODEL["vec_dim"], generator=g), "guidance": 3.5}
    plain = [[prompt, dict(extra)]]
    kontext = [[prompt, dict(extra, reference_latents=list(refs))]]
    return plain, kontext


def subjects_for(pack, shapes: dict, refs, context_dim: int, seed: int = 1):
    subj = runtime.pack_module(pack, "musar.subjects")
    g = torch.Generator().manual_seed(seed)
    out = subj.SubjectSet()
    for i, (latent, n) in enumerate(zip(refs, shapes["captions"])):
        out = out.add(subj.Subject(latent, f"subject {i + 1}", torch.randn(1, n, context_dim, generator=g)))
    return out


def musar_model(pack, model, subjects, cache: bool, dynamic: bool = True):
    """Patched exactly as the MUSAR_ApplyRouting node does with its defaults (static + dynamic
    routing from 20 % of the schedule, route scores in the double blocks)."""
    nodes = runtime.pack_module(pack, "nodes.apply_routing")
    settings = runtime.pack_module(pack, "musar.settings").RoutingSettings(
        dynamic_routing=dynamic, condition_cache=cache)  # every other setting: the node's default
    out = nodes.MusarApplyRouting.execute(model, subjects, **dataclasses.asdict(settings))
    return out.result[0]


def sample_timed(model, cond, shapes: dict, steps: int, seed: int = 0, probe=None
                 ) -> tuple[list, list]:
    """(CPU, wall) seconds per sampler step (the callback fires at the end of every step).
    ``probe()``, if given, is also called at the start and at the end of every step."""
    import comfy.sample

    rows, cols = shapes["canvas"]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 16, 2 * rows, 2 * cols, generator=g)

    def stamp(*_):
        stamps.append(common.clock())
        if probe is not None:
            probe()

    stamps: list = []
    stamp()
    comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", cond, cond,
                        torch.zeros_like(noise), seed=seed, disable_pbar=True, callback=stamp)
    per = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]
    return [c for _, c in per], [w for w, _ in per]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", choices=("sdpa", "default"), default="sdpa")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = QUICK if args.quick else SHAPES
    pack, kernel_name = bootstrap(args.kernel)
    standins = runtime.pack_module(pack, "nodes.testing.standins")
    cfg = standins.flux_unet_config(MODEL["hidden"], MODEL["heads"], MODEL["depth"],
                                    MODEL["single_depth"], MODEL["context_dim"], MODEL["vec_dim"])
    model = standins.build_flux(cfg, seed=0)
    g = torch.Generator().manual_seed(2)
    refs = [torch.randn(1, 16, 2 * h, 2 * w, generator=g) for h, w in shapes["refs"]]
    plain, kontext = conditioning(shapes, refs, MODEL["context_dim"])
    subjects = subjects_for(pack, shapes, refs, MODEL["context_dim"])
    configs = {
        "t2i": (model, plain),
        "reference_latent": (model, kontext),
        "musar": (musar_model(pack, model, subjects, cache=False), plain),
        "musar_static": (musar_model(pack, model, subjects, cache=False, dynamic=False), plain),
        "musar_cache": (musar_model(pack, model, subjects, cache=True), plain),
    }
    for m, c in configs.values():  # warm-up: one short run per configuration
        sample_timed(m, c, shapes, 1)
    steps = {name: [] for name in configs}
    wall = {name: [] for name in configs}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(configs)
        rng.shuffle(order)
        for name in order:
            m, c = configs[name]
            cpu_s, wall_s = sample_timed(m, c, shapes, shapes["steps"])
            steps[name].append(cpu_s)
            wall[name].append(wall_s)
            print(f"[sampling:{args.kernel}] {name}: cpu "
                  + " ".join(f"{s:.2f}s" for s in cpu_s) + " | wall "
                  + " ".join(f"{s:.2f}s" for s in wall_s), flush=True)
    first = {n: common.median([r[0] for r in rs]) for n, rs in steps.items()}
    later = {n: common.median([s for r in rs for s in r[1:]]) for n, rs in steps.items()}
    later_wall = {n: common.median([s for r in rs for s in r[1:]]) for n, rs in wall.items()}
    per_round = {n: [common.median(r[1:]) for r in rs] for n, rs in steps.items()}
    paired = {f"{a}/{b}": common.median([x / y for x, y in zip(per_round[a], per_round[b])])
              for a, b in PAIRS}
    rows, cols = shapes["canvas"]
    tokens = {"prompt": shapes["prompt"], "x": rows * cols,
              "refs": [h * w for h, w in shapes["refs"]], "captions": list(shapes["captions"])}
    result = {"kernel": args.kernel, "kernel_fn": kernel_name, "model": MODEL, "tokens": tokens,
              "steps": shapes["steps"], "rounds": args.rounds, "per_step_cpu_s": steps,
              "per_step_wall_s": wall, "step1_s": first, "steps2n_s": later,
              "steps2n_wall_s": later_wall,
              "paired_ratios": paired, "machine": common.machine(),
              "threads": args.threads, "loadavg_at_end": common.loadavg()}
    path = args.json or common.RESULTS / f"sampling_{args.kernel}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
