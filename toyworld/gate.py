"""The gates of the toy models (docs/TOY_WORLD.md, "Gates"), measured through the real ComfyUI graph.

Base model (``base_gate``):
Text-only generation (``toyworld.graph.SAMPLING``: 20 Euler steps, CFG 2.5), exact cell reading:
- single block (``SINGLE`` prompts x ``SEEDS`` seeds, colours named in every other prompt):
  *well formed* = the prompted slot holds a well-formed block (>= 90 % of its cells fit one
  pattern and colour pair) with the prompted pattern, and no other slot holds a block;
  *colours right* (prompts naming colours) = the slot agrees with the named identity;
- four blocks (``FOUR`` prompts x ``SEEDS``; different patterns and disjoint colours, colours
  named in every other prompt): *filled* = every slot holds a well-formed block.
Gate: well formed >= 0.9, colours right >= 0.8, filled >= 0.8 (decided in issue 14).

LoRA (``lora_gate``): the evaluation's counterfactual (``toyworld.eval``) on ``LORA_CASES``
two-subject cases of held-out identities drawn with another seed than the evaluation's, under
(b) static routing for the static-trained LoRA and (a) no routing for the dense-trained one.
Gate: T >= 0.5.

    python -m toyworld.gate [--weights DIR] [--model toy_flux.safetensors]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

from . import common
from .common import run_script, write_json
from .world import distinct

logger = logging.getLogger("toyworld.gate")
SINGLE, FOUR, SEEDS = 48, 24, 2
LORA_CASES, LORA_SEED, LORA_T = 40, 1000, 0.5
THRESHOLDS = {"well_formed": 0.9, "colours_right": 0.8, "filled": 0.8}


def gate_cases(world_mod, seed: int = 0) -> list[dict]:
    """Seeded prompts of the base gate (identities of both splits)."""
    w, rnd = world_mod.World(0), random.Random(f"gate/{seed}")
    cases = []
    for k in range(SINGLE):
        placed = [world_mod.Placed(rnd.choice(w.identities), rnd.choice(w.slots))]
        cases.append({"kind": "single", "placed": placed, "background": rnd.choice(w.backgrounds),
                      "named": k % 2 == 0, "seed": rnd.randrange(2 ** 31)})
    for k in range(FOUR):
        idents = distinct_identities(w.identities, 4, rnd)
        placed = [world_mod.Placed(i, s) for i, s in zip(idents, w.slots)]
        cases.append({"kind": "four", "placed": placed, "background": rnd.choice(w.backgrounds),
                      "named": k % 2 == 0, "seed": rnd.randrange(2 ** 31)})
    return cases


def distinct_identities(pool, n: int, rnd: random.Random, avoid_colours=()) -> list:
    """``n`` identities of ``pool`` with pairwise different patterns and no colour in common
    (nor with ``avoid_colours``); seeded rejection sampling."""
    pool = list(pool)
    for _ in range(100_000):
        picked = rnd.sample(pool, n)
        if distinct(picked, avoid_colours):
            return picked
    raise RuntimeError(f"no {n} identities with different patterns and disjoint colours in the pool")


def judge(detector, images, case: dict) -> list[dict]:
    out = []
    for image in images:
        blocks = detector.read_panel(image)
        s = detector.score(image, case["placed"])
        if case["kind"] == "single":
            slot, ident = case["placed"][0].slot, case["placed"][0].identity
            b = blocks[slot]
            formed = b.well_formed and b.pattern == ident.pattern and s["extra"] == 0
            out.append({"well_formed": formed, "colours_right": s["all_right"] if case["named"] else None})
        else:
            out.append({"filled": all(b.well_formed for b in blocks.values()),
                        "patterns_right": all(blocks[p.slot].well_formed and blocks[p.slot].pattern ==
                                              p.identity.pattern for p in case["placed"]),
                        "all_right_named": s["all_right"] if case["named"] else None})
    return out


def summarise(rows: list[dict]) -> dict:
    rates = {}
    for key in ("well_formed", "colours_right", "filled", "patterns_right", "all_right_named"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        rates[key] = {"rate": round(sum(vals) / len(vals), 3), "n": len(vals)} if vals else None
    passed = all(rates[k] is not None and rates[k]["rate"] >= t for k, t in THRESHOLDS.items())
    summary = ", ".join(f"{k} {rates[k]['rate']:.2f} (>= {t})" for k, t in THRESHOLDS.items() if rates[k])
    return {"passed": passed, "rates": rates, "thresholds": THRESHOLDS, "summary": summary}


def base_gate(model_path: Path, weights: Path, work: Path, threads: int = 1) -> dict:
    """Measure the gate of the base model ``model_path`` (codec / text encoder in ``weights``)."""
    pack = common.setup(threads=threads)
    graph, detector = common.module(pack, "toyworld.graph"), common.module(pack, "toyworld.detector")
    world_mod = common.module(pack, "toyworld.world")
    rows = []
    with graph.Runner(pack, weights, work) as runner:
        for case in gate_cases(world_mod):
            prompt = world_mod.scene_caption(case["placed"], case["background"], case["named"])
            g = graph.toy_graph(prompt, [], None, seed=case["seed"], lora=None, batch=SEEDS,
                                model_file=Path(model_path).name)
            rows += [{"kind": case["kind"], **r} for r in judge(detector, runner.run(g)["images"], case)]
    return {**summarise(rows), "images": len(rows), "sampling": graph.SAMPLING}


def lora_gate(weights: Path, lora_path: Path, attention: str, work: Path, threads: int = 1) -> dict:
    """T of the LoRA ``lora_path`` (trained with ``attention``) on held-out two-subject cases."""
    from . import eval as toy_eval
    from .report import per_case

    cond = {"static": "b", "dense": "a"}[attention]
    args = toy_eval.parse(["--out", str(work), "--weights", str(weights), "--loras", str(Path(lora_path).parent),
                           "--counts", f"2:{LORA_CASES}", "--conditions", cond, "--seed", str(LORA_SEED),
                           "--samples", "0", "--threads", str(threads)])
    work.mkdir(parents=True, exist_ok=True)
    records = toy_eval.evaluate(args)
    cases = json.loads((work / "cases.json").read_text())["cases"]
    data = list(per_case(cases, records).values())
    t = sum(m["T"] for m in data) / len(data)
    right = sum(sum(m["right"]) for m in data) / sum(len(m["right"]) for m in data)
    return {"passed": t >= LORA_T, "condition": cond, "cases": len(data), "T": round(t, 3),
            "L": round(sum(m["L"] for m in data) / len(data), 3), "subject_right": round(right, 3),
            "threshold": LORA_T, "summary": f"T {t:.2f} (>= {LORA_T}), subject right {right:.2f}"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=common.WEIGHTS_DIR)
    p.add_argument("--model", default="toy_flux.safetensors")
    p.add_argument("--work", type=Path, default=common.CACHE_DIR / "gate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def work(args) -> dict:
    result = base_gate(args.weights / args.model, args.weights, args.work, args.threads)
    write_json(result, args.work / "base_gate.json")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    raise SystemExit(run_script(parse, work))
