"""Why does dynamic routing cost accuracy on the toy model? Where the route sends each subject's
block, and how the dynamic-routing settings change it, through the real ComfyUI graph.

    python -m toyworld.route_study --size medium                 # docs/TOY_WORLD.md §6.2
    python -m toyworld.route_study --cases 2 --variants b,c --out /tmp/r   # a quick look

The cases are drawn like the evaluation's (``toyworld.eval.make_cases``) but with another seed
(default 1), so that looking at settings here does not tune them on the evaluation's cases. Each
variant is the static-trained LoRA with static routing plus one setting of MUSAR Apply Routing
changed from the shipped one (``VARIANTS``); ``b`` is static routing alone, ``c`` the shipped
static + dynamic default. Per image: the detector's score, and for every routed step the share of
each subject's block tokens (3 x 3 tokens of its slot) that the route gives to that subject
("route right"), to another subject, or to no subject.

Records go to <out>/records.jsonl (resumable; refused with other model files, as the
evaluation's), the table to <out>/table.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from . import common
from .common import module
from .eval import (
    BOTH,
    LORA_FILES,
    STATIC,
    TUNED,
    check_models,
    graph_of,
    make_cases,
    model_digests,
    placed_of,
    read_records,
)
from .stats import paired_bootstrap, wilson

logger = logging.getLogger("toyworld.route_study")
VARIANTS = {  # name -> (what it changes, the routing settings)
    "b": ("static routing only", STATIC),
    "c": ("shipped dynamic routing (double blocks, start 0.2, smoothing 3)", BOTH),
    "single": ("route from the single blocks", {**BOTH, "routing_blocks": "single"}),
    "all": ("route from all blocks", {**BOTH, "routing_blocks": "all"}),
    "late": ("start at 0.5", {**BOTH, "start_percent": 0.5}),
    "sharp": ("no smoothing (1)", {**BOTH, "smoothing": 1}),
    "symmetric": ("symmetric (subjects see only their tokens)", {**BOTH, "symmetric": True}),
    "single_late": ("single blocks, start at 0.5", TUNED),  # evaluation condition (d)
}
TOKENS = 8  # token grid side of a 128 px panel
BLOCK_TOKENS = 3


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=common.BASE_SIZES, default=common.DEFAULT_SIZE)
    p.add_argument("--weights", type=Path, help="default: the size's weights folder")
    p.add_argument("--loras", type=Path, help="folder of the LoRA files (default: --weights)")
    p.add_argument("--out", type=Path, help="default .cache/toyworld[/<size>]/route_study")
    p.add_argument("--n", type=int, default=4, help="subjects per case")
    p.add_argument("--cases", type=int, default=50)
    p.add_argument("--seed", type=int, default=1, help="case seed (the evaluation uses 0)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    weights, work = common.run_folders(args.size)
    args.weights, args.out = args.weights or weights, args.out or work / "route_study"
    return args


def slot_tokens(W, slot: str) -> np.ndarray:
    """Flat indices of a slot's 3 x 3 tokens on the 8 x 8 token grid."""
    r, c = (v * TOKENS // W.GRID for v in W.SLOTS[slot])
    rows, cols = np.mgrid[r:r + BLOCK_TOKENS, c:c + BLOCK_TOKENS]
    return (rows * TOKENS + cols).ravel()


def route_shares(W, route: np.ndarray, case: dict) -> list[dict]:
    """Per subject: the shares of its block's tokens routed to it, to another subject, to none."""
    out = []
    for i, slot in enumerate(case["slots"]):
        got = route[slot_tokens(W, slot)]
        own, other = float((got == i).mean()), float(((got >= 0) & (got != i)).mean())
        out.append({"own": round(own, 3), "other": round(other, 3), "none": round(1 - own - other, 3)})
    return out


def run_case(pack, W, det, runner, case: dict, variant: str) -> dict:
    settings = VARIANTS[variant][1]
    out = runner.run(graph_of(pack, W, runner, case, "b", False, settings))  # the static-trained LoRA
    s = det.score(out["images"][0], placed_of(W, case))
    rec = {"id": case["id"], "variant": variant, "right": s["right"], "entangled": s["entangled"],
           "duplicated": s["duplicated"]}
    recorder = runner.last.output("10")[1] if settings["dynamic_routing"] else None
    run = recorder.latest if recorder is not None else None
    if run is not None and run.routes:
        rec["routes"] = [route_shares(W, r[0].numpy(), case) for _, r in run.routes]
    return rec


def study(args) -> list[dict]:
    pack = common.setup(threads=args.threads)
    W, graph, det = (module(pack, f"toyworld.{m}") for m in ("world", "graph", "detector"))
    cases = make_cases(W.World(0), [(args.n, args.cases)], args.seed)
    variants = args.variants.split(",")
    path = args.out / "records.jsonl"
    done = {(r["id"], r["variant"]): r for r in read_records(path)}
    toy = module(pack, "nodes.testing.toy")
    files = [args.weights / name for name in (toy.BASE_FILE, toy.TEXT_FILE, toy.CODEC_FILE)]
    lora = (args.loras or args.weights) / LORA_FILES["static"]
    check_models(args.out, model_digests([*files, lora]), bool(done))
    todo = [(c, v) for v in variants for c in cases if (c["id"], v) not in done]
    t0 = time.perf_counter()
    with graph.Runner(pack, args.weights, args.out / "comfy", {lora.name: lora}) as runner, path.open("a") as log:
        for k, (case, variant) in enumerate(todo, 1):
            rec = run_case(pack, W, det, runner, case, variant)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            done[(case["id"], variant)] = rec
            if k % 25 == 0:
                logger.info("%d/%d images (%s) %.0f s", k, len(todo), variant, time.perf_counter() - t0)
    return [done[(c["id"], v)] for v in variants for c in cases]


def _rate(values) -> str:
    k, n = int(sum(values)), len(values)
    lo, hi = wilson(k, n)
    return f"{k / n:.2f} [{lo:.2f}, {hi:.2f}]"


def table(records: list[dict]) -> str:
    """One row per variant: accuracy, entanglement, duplicates, where the route sends the blocks
    (at the first and the last routed step), and the paired differences against ``b`` and ``c``."""
    by = {}
    for r in records:
        by.setdefault(r["variant"], {})[r["id"]] = r
    lines = ["| variant | what changes | cases | subject right | entangled | duplicated / image | "
             "route right, first step | route right, last step | to another subject, last step | "
             "subject right − (b), paired | subject right − (c), paired |", "|" + "---|" * 11]
    for name, rows in by.items():
        ids = sorted(rows)
        right = [x for i in ids for x in rows[i]["right"]]
        routed = [rows[i]["routes"] for i in ids if rows[i].get("routes")]

        def mean(step, key, routed=routed):
            return f"{np.mean([s[key] for r in routed for s in r[step]]):.2f}" if routed else "—"

        def diff(base, name=name, rows=rows, ids=ids):
            if base == name or base not in by or not set(ids) <= set(by[base]):
                return "—"
            d = paired_bootstrap([np.mean(rows[i]["right"]) for i in ids], [np.mean(by[base][i]["right"]) for i in ids])
            return f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
        lines.append(f"| {name} | {VARIANTS[name][0]} | {len(ids)} | {_rate(right)} | "
                     f"{_rate([x for i in ids for x in rows[i]['entangled']])} | "
                     f"{np.mean([rows[i]['duplicated'] for i in ids]):.2f} | {mean(0, 'own')} | "
                     f"{mean(-1, 'own')} | {mean(-1, 'other')} | {diff('b')} | {diff('c')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse(argv)
    common.log_setup(args.verbose)
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(study(args))
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
