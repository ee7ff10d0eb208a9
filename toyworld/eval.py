"""Does MUSAR transfer subjects from their references, and does routing keep them apart? Held-out
identities generated through the real ComfyUI graph (PromptExecutor: MUSAR nodes + stock
KSampler + VAEDecode, ``toyworld.graph``), read cell by cell by the exact detector.

    python -m toyworld.eval                                  # the table (make eval-toy)
    python -m toyworld.eval --counts 2:1 --conditions b --out /tmp/e   # one case
    python -m toyworld.eval --part text & python -m toyworld.eval --part routing & ...  # side by side
    python -m toyworld.eval --merge                     # the parts (eval.PARTS) -> one table

Cases (``make_cases``): for n = 2 / 3 / 4, 100 / 200 / 200 sets of n held-out identities with
different patterns and no colour in common, in n random slots on a random background; each
subject's reference is its block alone in a random slot on a random background. Per case one
more held-out identity B' with the pattern of a chosen subject B and colours no subject has
(the counterfactual). One noise seed per case, shared by every condition.

Conditions (same cases, same seeds; prompts name slots and patterns, never colours, except the
oracle; subject captions name the pattern only):
  text    base model, prompt without colours (chance level)
  oracle  base model, prompt with colours
  a       LoRA trained with dense attention, routing off (the fair no-routing baseline)
  a2      LoRA trained with static routing, routing off (a'; outside its training)
  b       LoRA trained with static routing, static routing
  c       the same, static + dynamic routing (shipped defaults: start 0.2, double blocks, smoothing 3)
  d       the same, dynamic routing from the single blocks starting at 0.5: the setting that
          ``toyworld.route_study`` found best on other cases (seed 1), confirmed here
For a, a2, b, c and d every case is generated twice: as is, and with B's reference swapped for B''s
(same seed, same prompt) - ``detector.counterfactual`` turns the pair into T and L.

Records (one JSON line per image, the 16 x 16 cell map as letters) go to <out>/records.jsonl; a
rerun skips finished images (resumable) and refuses to add to records made with other model files
(``<out>/models.json``: a digest of every file used). ``--verify`` re-runs a share of the finished images and
counts identical cell maps. ``toyworld.report`` turns the records into the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import time
from pathlib import Path

from PIL import Image

from . import common
from .common import module
from .figures import eval_figure
from .report import write_report
from .world import distinct

logger = logging.getLogger("toyworld.eval")
OFF, STATIC, BOTH = ({"static_routing": s, "dynamic_routing": d} for s, d in
                     ((False, False), (True, False), (True, True)))
TUNED = {**BOTH, "routing_blocks": "single", "start_percent": 0.5}  # docs/TOY_WORLD.md §6.2
CONDITIONS = {"text": (None, None, False), "oracle": (None, None, True), "a": ("dense", OFF, False),
              "a2": ("static", OFF, False), "b": ("static", STATIC, False), "c": ("static", BOTH, False),
              "d": ("static", TUNED, False)}
COUNTERFACTUAL = ("a", "a2", "b", "c", "d")
LORA_FILES = {"static": "toy_lora_static.safetensors", "dense": "toy_lora_dense.safetensors"}
COUNTS = "2:100,3:200,4:200"
PARTS = {"text": "text,oracle,a,a2", "routing": "b,c", "tuned": "d"}  # make eval-toy runs these side by side


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=common.BASE_SIZES, default=common.DEFAULT_SIZE, help="which base model's chain "
                   "(train_base --size): sets the defaults of --weights and --out")
    p.add_argument("--out", type=Path, help="default .cache/toyworld[/<size>]/eval")
    p.add_argument("--weights", type=Path, help="default: the size's weights folder")
    p.add_argument("--loras", type=Path, help="folder of the LoRA files (default: --weights)")
    p.add_argument("--counts", default=COUNTS, help="n:cases,... (subject count : number of cases)")
    p.add_argument("--conditions", help="default: every condition, or the --part's")
    p.add_argument("--part", choices=PARTS, help="one of the parts of the conditions that run side by "
                   f"side ({'; '.join(f'{k}: {v}' for k, v in PARTS.items())}) into <work>/eval_<part>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=4, help="cases per subject count saved as images")
    p.add_argument("--verify", type=float, default=0.0, help="re-run this share of finished images "
                   "and count identical cell maps (written to <out>/verify.json)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", nargs="*", type=Path, metavar="DIR", help="generate nothing: combine "
                   "the records of evaluations of the same cases run side by side on disjoint "
                   "--conditions into --out, then the report and figures (no DIR: the --part folders)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    weights, work = common.run_folders(args.size)
    if args.merge == []:
        args.merge = [part_folder(work, part) for part in PARTS]
    args.conditions = args.conditions or PARTS.get(args.part, ",".join(CONDITIONS))
    args.weights = args.weights or weights
    args.out = args.out or (part_folder(work, args.part) if args.part else work / "eval")
    return args


def part_folder(work: Path, part: str) -> Path:
    return work / f"eval_{part}"


def draw_subjects(heldout, n: int, rnd: random.Random):
    """n identities (different patterns, disjoint colours), the counterfactual subject b and B'."""
    for _ in range(1_000_000):
        picked = rnd.sample(list(heldout), n)
        if not distinct(picked):
            continue
        colours = {c for i in picked for c in i.colours}
        b = rnd.randrange(n)
        new = [i for i in heldout if i.pattern == picked[b].pattern and not set(i.colours) & colours]
        if new:
            return picked, b, rnd.choice(new)
    raise RuntimeError(f"no counterfactual case with {n} held-out subjects")


def make_cases(world, counts: list[tuple[int, int]], seed: int) -> list[dict]:
    cases = []
    for n, count in counts:
        for k in range(count):
            rnd = random.Random(f"eval/{seed}/{n}/{k}")
            subjects, b, new = draw_subjects(world.heldout, n, rnd)
            cases.append({"id": f"n{n}-{k:03d}", "n": n, "subjects": [s.name for s in subjects],
                          "slots": rnd.sample(list(world.slots), n), "background": rnd.choice(world.backgrounds),
                          "refs": [_ref(world, rnd) for _ in subjects], "b": b, "new": new.name,
                          "new_ref": _ref(world, rnd),
                          "seed": rnd.randrange(2 ** 31)})
    return cases


def _ref(world, rnd: random.Random) -> list[str]:
    """A reference panel: (slot, background)."""
    return [rnd.choice(world.slots), rnd.choice(world.backgrounds)]


def placed_of(W, case: dict) -> list:
    return [W.Placed(W.Identity.parse(s), slot) for s, slot in zip(case["subjects"], case["slots"])]


def subjects_of(W, runner, case: dict, swap: bool) -> list[tuple[str, str]]:
    """(caption, reference file) per subject; with ``swap`` subject b shows B'."""
    out = []
    for i, (name, (slot, background)) in enumerate(zip(case["subjects"], case["refs"])):
        if swap and i == case["b"]:
            name, (slot, background) = case["new"], case["new_ref"]
        ident = W.Identity.parse(name)
        file = f"ref_{name}_{slot}_{background}.png".replace(" ", "_")
        runner.save_input(W.render([W.Placed(ident, slot)], background), file)
        out.append((ident.item, file))
    return out


def graph_of(pack, W, runner, case: dict, cond: str, swap: bool, routing: dict | None = None) -> dict:
    """The graph of one image; ``routing`` replaces the condition's routing settings."""
    lora, cond_routing, colours = CONDITIONS[cond]
    routing = routing or cond_routing
    prompt = W.scene_caption(placed_of(W, case), case["background"], colours)
    subjects = subjects_of(W, runner, case, swap) if routing is not None else []
    return module(pack, "toyworld.graph").toy_graph(prompt, subjects, routing, seed=case["seed"],
                                                    lora=LORA_FILES[lora] if lora else None)


def jobs(cases: list[dict], conditions: list[str]):
    for cond in conditions:  # condition-major: ComfyUI keeps the loaded model and LoRA between prompts
        for case in cases:
            yield case, cond, "main"
            if cond in COUNTERFACTUAL:
                yield case, cond, "swap"


def evaluate(args) -> list[dict]:
    pack = common.setup(threads=args.threads)
    W, graph, det = (module(pack, f"toyworld.{m}") for m in ("world", "graph", "detector"))
    cases = make_cases(W.World(0), [tuple(map(int, c.split(":"))) for c in args.counts.split(",")], args.seed)
    conditions = args.conditions.split(",")
    path = args.out / "records.jsonl"
    done = {(r["id"], r["condition"], r["variant"]): r for r in read_records(path)}
    loras = {name: (args.loras or args.weights) / name for key, name in LORA_FILES.items()
             if any(CONDITIONS[c][0] == key for c in conditions)}
    toy = module(pack, "nodes.testing.toy")
    base = [args.weights / name for name in (toy.BASE_FILE, toy.TEXT_FILE, toy.CODEC_FILE)]
    check_models(args.out, model_digests([*base, *loras.values()]), bool(done))
    common.write_json({"cases": cases, "conditions": conditions}, args.out / "cases.json")
    todo = [j for j in jobs(cases, conditions) if (j[0]["id"], j[1], j[2]) not in done]
    with graph.Runner(pack, args.weights, args.out / "comfy", loras) as runner:
        generate(args, runner, det, todo, lambda case, cond, swap: graph_of(pack, W, runner, case, cond, swap),
                 done, path)
        if args.verify:
            verify(args, pack, W, det, runner, cases, done)
    figures(args, W, cases, conditions)
    return [done[(c["id"], cond, v)] for c, cond, v in jobs(cases, conditions)]


def merge(args) -> list[dict]:
    """``--merge``: the parts' cases must be identical (same --counts and --seed)."""
    from . import world as W

    cases, conditions, records = merge_parts(args.merge, args.out)
    figures(args, W, cases, conditions)
    return records


def merge_parts(parts: list[Path], out: Path) -> tuple[list[dict], list[str], list[dict]]:
    """Combine the records of evaluations run side by side on the same cases and disjoint
    conditions into ``out`` (cases.json, records.jsonl, models.json, images); refuses parts made on
    other cases or with other model files. Returns (cases, conditions, records)."""
    import shutil

    metas = [json.loads((part / "cases.json").read_text()) for part in parts]
    if any(m["cases"] != metas[0]["cases"] for m in metas):
        raise SystemExit("--merge: the parts were run on different cases; use the same --counts and --seed")
    conditions = [c for m in metas for c in m["conditions"]]
    if len(set(conditions)) != len(conditions):
        raise SystemExit(f"--merge: the parts overlap in their conditions ({conditions})")
    digests = [json.loads(p.read_text()) for p in (part / MODELS_FILE for part in parts) if p.is_file()]
    shared = {k: v for d in digests for k, v in d.items()}
    if any(shared[k] != v for d in digests for k, v in d.items()):
        raise SystemExit("--merge: the parts were made with different model files (their models.json differ)")
    records = [r for part in parts for r in read_records(part / "records.jsonl")]
    check_models(out, shared, False)
    common.write_json({"cases": metas[0]["cases"], "conditions": conditions}, out / "cases.json")
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for part in parts:
        if (part / "images").is_dir():
            shutil.copytree(part / "images", out / "images", dirs_exist_ok=True)
    return metas[0]["cases"], conditions, records


def figures(args, W, cases: list[dict], conditions: list[str]) -> None:
    def reference(case, i):
        name, (slot, background) = ((case["new"], case["new_ref"]) if i < 0 else
                                    (case["subjects"][i], case["refs"][i]))
        return W.render([W.Placed(W.Identity.parse(name), slot)], background)

    for n in sorted({c["n"] for c in cases}):
        eval_figure(args.out, cases, conditions, n, args.samples, reference)


def verify(args, pack, W, det, runner, cases, done) -> None:
    """Re-run a seeded share of the finished images; identical cell maps expected."""
    keys = sorted(done)
    sample = random.Random(f"verify/{args.seed}").sample(keys, max(1, round(args.verify * len(keys))))
    by_id = {c["id"]: c for c in cases}
    same = 0
    for key in sample:
        out = runner.run(graph_of(pack, W, runner, by_id[key[0]], key[1], key[2] == "swap"))
        same += encode_cells(det.read_cells(out["images"][0])) == done[key]["cells"]
    common.write_json({"rerun": len(sample), "identical": same}, args.out / "verify.json")
    logger.info("verify: %d of %d re-run images have identical cell maps", same, len(sample))


MODELS_FILE = "models.json"


def model_digests(files) -> dict[str, str]:
    """sha256 (first 16 hex digits) of every model file of a run, by file name."""
    return {Path(f).name: hashlib.sha256(Path(f).read_bytes()).hexdigest()[:16] for f in files}


def check_models(out: Path, digests: dict[str, str], resuming: bool) -> None:
    """Records of one table come from one set of model files: refuse to resume with others."""
    path = out / MODELS_FILE
    before = json.loads(path.read_text()) if path.is_file() else {}
    changed = sorted(k for k in digests.keys() & before.keys() if digests[k] != before[k])
    if resuming and changed:
        raise SystemExit(f"{out} holds records made with other model files ({', '.join(changed)} changed): "
                         "use another --out for these weights, or delete that folder to start again")
    common.write_json({**before, **digests}, path)


def encode_cells(cells) -> str:
    return "".join(chr(ord("a") + int(v)) for v in cells.ravel())


def decode_cells(text: str, width: int = 16):
    import numpy as np

    return (np.frombuffer(text.encode(), dtype=np.uint8) - ord("a")).astype(np.int64).reshape(-1, width)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def generate(args, runner, det, todo, graph_fn, done: dict, path: Path) -> None:
    """Each (case, condition, variant) of ``todo`` through ``runner`` (its prompt from
    ``graph_fn(case, condition, swap)``): one record per image appended to ``path`` (flushed, so
    an interrupted run resumes after the last image) and put into ``done``; sample images saved."""
    t0 = time.perf_counter()
    with path.open("a") as log:
        for k, (case, cond, variant) in enumerate(todo, 1):
            t = time.perf_counter()
            out = runner.run(graph_fn(case, cond, variant == "swap"))
            rec = {"id": case["id"], "condition": cond, "variant": variant,
                   "cells": encode_cells(det.read_cells(out["images"][0])),
                   "seconds": round(time.perf_counter() - t, 3)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            done[(case["id"], cond, variant)] = rec
            save_images(args, case, cond, variant, out)
            if k % 50 == 0:
                logger.info("%d/%d images (%s %s) %.0f s", k, len(todo), cond, case["id"], time.perf_counter() - t0)


def save_images(args, case, cond, variant, out) -> None:
    if int(case["id"].split("-")[1]) >= args.samples:
        return
    folder = args.out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out["images"][0]).save(folder / f"{case['id']}_{cond}_{variant}.png")
    if out["route"] is not None:
        Image.fromarray(out["route"][0]).save(folder / f"{case['id']}_{cond}_{variant}_route.png")


def main(argv=None) -> int:
    args = parse(argv)
    common.log_setup(args.verbose)
    args.out.mkdir(parents=True, exist_ok=True)
    records = merge(args) if args.merge else evaluate(args)
    print(write_report(args.out, json.loads((args.out / "cases.json").read_text())["cases"], records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
