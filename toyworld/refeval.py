"""Does MUSAR Route References keep reference identities apart on a natively multi-reference
model? Held-out identities on the multi-reference toy base (``toyworld.train_refbase``), every
image through the real ComfyUI graph (``toyworld.refgate.ref_graph``: stock ReferenceLatent /
FluxKontextMultiReferenceLatentMethod "index" / KSampler, MUSAR Route References in between), read
cell by cell by the exact detector.

    python -m toyworld.refeval --counts 2:4,3:4,4:4 --out /tmp/r      # quick
    python -m toyworld.refeval --part plain & python -m toyworld.refeval --part regions   # side by side
    python -m toyworld.refeval --merge                                 # the parts -> one table

Cases (``multiref.eval_cases``): for n = 2 / 3 / 4 references, 100 / 200 / 200 sets of n held-out
identities with different patterns and no colour in common, image j in slot ``slots[j]`` on a
random background; the prompt names each image's slot ("image 1 at top right, ...") and the
background, never a colour or pattern. One noise seed per case, shared by every condition.
Per case one more held-out identity B' with the pattern of subject b and colours no subject has:
every condition generates each case twice, as is and with b's reference picture swapped for B''s
(same seed, same prompt), which gives T and L (docs/TOY_WORLD.md §3).

Conditions (``CONDITIONS``; routing settings over MUSAR Route References' defaults):
  off      the stock graph, no Route References
  static   static routing on, dynamic routing off
  dynamic  static + dynamic with the shipped defaults (start 0.2, double blocks, smoothing 3, threshold 0)
  hard     dynamic + a hard MUSAR Layout Region per reference: its prompted slot's rectangle
  soft     the same regions, soft, strength 0.5

Records: one JSON line per image (the 16 x 16 cell map as letters) in <out>/records.jsonl; a rerun
skips finished images (resumable) and refuses records made with other model files (models.json).
``toyworld.refreport`` turns them into table.md and summary.json (intervals clustered by identity).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from . import common
from .common import module
from .errors import choose
from .eval import check_models, generate, merge_parts, model_digests, read_records
from .multiref import EVAL_COUNTS, REF_MODEL_FILE, case_scene, eval_cases
from .refgate import ref_graph, reference_files
from .refreport import write_ref_report
from .world import World

logger = logging.getLogger("toyworld.refeval")
STATIC = {"static_routing": True, "dynamic_routing": False}
CONDITIONS = {  # name -> (routing settings or None for the stock graph, (region mode, strength) or None)
    "off": (None, None), "static": (STATIC, None), "dynamic": ({}, None),
    "hard": ({}, ("hard", 0.5)),  # the strength of a hard region is ignored (the node's default)
    "soft": ({}, ("soft", 0.5))}
PARTS = {"plain": "off,static,dynamic", "regions": "hard,soft"}  # make eval-toy-refs: side by side
WEIGHTS = common.CACHE_DIR / "refbase"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=WEIGHTS, help="folder of the model, codec and text encoder")
    p.add_argument("--model", default=REF_MODEL_FILE)
    p.add_argument("--out", type=Path, help="default <weights>/eval, or <weights>/eval_<part>")
    p.add_argument("--counts", default=EVAL_COUNTS, help="n:cases,... (references per case : number of cases)")
    p.add_argument("--conditions", help="default: every condition, or the --part's")
    p.add_argument("--part", choices=PARTS, help="run one part of the conditions "
                   f"({'; '.join(f'{k}: {v}' for k, v in PARTS.items())}) into <weights>/eval_<part>")
    p.add_argument("--seed", type=int, default=0, help="the cases' seed")
    p.add_argument("--samples", type=int, default=2, help="cases per n saved as images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", nargs="*", type=Path, metavar="DIR", help="generate nothing: combine parts run "
                   "side by side into --out, then the report (no DIR: the --part folders)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.merge == []:
        args.merge = [args.weights / f"eval_{part}" for part in PARTS]
    args.conditions = args.conditions or PARTS.get(args.part, ",".join(CONDITIONS))
    for cond in args.conditions.split(","):
        choose(CONDITIONS, cond, "condition")
    args.out = args.out or args.weights / (f"eval_{args.part}" if args.part else "eval")
    return args


def counts_of(text: str) -> list[tuple[int, int]]:
    """ "2:100,3:200" -> [(2, 100), (3, 200)]."""
    try:
        return [(int(n), int(k)) for n, k in (item.split(":") for item in text.split(","))]
    except ValueError:
        raise SystemExit(f"--counts: expected n:cases,... such as 2:100,3:200, got {text!r}") from None


def graph_for(runner, case: dict, cond: str, swap: bool, model_file: str) -> dict:
    """The graph of one image; with ``swap`` subject b's reference picture shows B'."""
    routing, regions = CONDITIONS[cond]
    scene = case_scene(case, swap)
    files = reference_files(runner, [p.identity.name for p in scene.placed])
    return ref_graph(scene.prompt, files, seed=case["seed"], model_file=model_file, routing=routing,
                     regions=(list(case["slots"]), *regions) if regions else None)


def jobs(cases: list[dict], conditions: list[str]):
    for cond in conditions:  # condition-major: ComfyUI keeps the loaded model between prompts
        for case in cases:
            yield case, cond, "main"
            yield case, cond, "swap"


def evaluate(args) -> list[dict]:
    pack = common.setup(threads=args.threads)
    graph, det, toy = (module(pack, m) for m in ("toyworld.graph", "toyworld.detector", "nodes.testing.toy"))
    cases, conditions = eval_cases(World(0), counts_of(args.counts), args.seed), args.conditions.split(",")
    path = args.out / "records.jsonl"
    done = {(r["id"], r["condition"], r["variant"]): r for r in read_records(path)}
    files = [args.weights / name for name in (args.model, toy.text_file_for(args.model), toy.CODEC_FILE)]
    check_models(args.out, model_digests(files), bool(done))
    common.write_json({"cases": cases, "conditions": conditions}, args.out / "cases.json")
    todo = [j for j in jobs(cases, conditions) if (j[0]["id"], j[1], j[2]) not in done]
    with graph.Runner(pack, args.weights, args.out / "comfy") as runner:
        generate(args, runner, det, todo, lambda case, cond, swap: graph_for(runner, case, cond, swap, args.model),
                 done, path)
    return [done[(c["id"], cond, v)] for c, cond, v in jobs(cases, conditions)]


def main(argv=None) -> int:
    args = parse(argv)
    common.log_setup(args.verbose)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        _, _, records = merge_parts(args.merge, args.out)
    else:
        records = evaluate(args)
    cases = json.loads((args.out / "cases.json").read_text())["cases"]
    logger.info("table:\n%s", write_ref_report(args.out, cases, records, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
