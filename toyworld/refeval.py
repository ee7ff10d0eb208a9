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

Conditions (``CONDITIONS``; routing settings over MUSAR Route References' defaults), in two
studies (``STUDIES``; docs/TOY_WORLD.md §11 and §13):
  routing (default: --study routing)
    off      the stock graph, no Route References
    static   static routing on, dynamic routing off
    dynamic  static + dynamic with the shipped defaults (start 0.2, double blocks, smoothing 3, threshold 0)
    hard     dynamic + a hard MUSAR Layout Region per reference: its prompted slot's rectangle
    soft     the same regions, soft, strength 0.5
  cache (--study cache: off, dynamic and)
    isolated         dynamic + isolate (every reference sees only its own tokens)
    isolated_cached  isolated + condition_cache (the exact reference cache)
    frozen           the stock graph through core's Flux KV Cache (references' keys frozen after
                     the first step; ComfyUI 0.33+)

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
ISOLATED = {"isolate": True}
CONDITIONS = {  # name -> (routing settings or None for the stock graph, (region mode, strength) or None)
    "off": (None, None), "static": (STATIC, None), "dynamic": ({}, None),
    "hard": ({}, ("hard", 0.5)),  # the strength of a hard region is ignored (the node's default)
    "soft": ({}, ("soft", 0.5)),
    "isolated": (ISOLATED, None), "isolated_cached": ({**ISOLATED, "condition_cache": True}, None),
    "frozen": (None, None)}  # + core's Flux KV Cache (KV_CACHE)
KV_CACHE = {"frozen"}
STUDIES = {  # name -> (conditions, parts run side by side, default counts, default case seed)
    "routing": ("off,static,dynamic,hard,soft", {"plain": "off,static,dynamic", "regions": "hard,soft"},
                EVAL_COUNTS, 0),
    "cache": ("off,dynamic,isolated,isolated_cached,frozen",
              {"plain": "off,dynamic,frozen", "isolated": "isolated,isolated_cached"},
              "2:100,3:100,4:100", 1)}
PARTS = STUDIES["routing"][1]  # make eval-toy-refs: side by side
WEIGHTS = common.CACHE_DIR / "refbase"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=WEIGHTS, help="folder of the model, codec and text encoder")
    p.add_argument("--model", default=REF_MODEL_FILE)
    p.add_argument("--out", type=Path, help="default <weights>/eval, or <weights>/eval_<part>")
    p.add_argument("--study", choices=STUDIES, default="routing",
                   help="routing (§11, default) or cache (§13: isolation and the exact cache)")
    p.add_argument("--counts", help="n:cases,... (references per case : number of cases); default "
                   "the study's")
    p.add_argument("--conditions", help="default: the study's conditions, or the --part's")
    p.add_argument("--part", help="run one part of the study's conditions into <weights>/eval_<part> "
                   "(routing: " + "; ".join(f"{k}: {v}" for k, v in STUDIES["routing"][1].items())
                   + "; cache: " + "; ".join(f"{k}: {v}" for k, v in STUDIES["cache"][1].items()) + ")")
    p.add_argument("--seed", type=int, help="the cases' seed (default the study's: routing 0, cache 1)")
    p.add_argument("--samples", type=int, default=2, help="cases per n saved as images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", nargs="*", type=Path, metavar="DIR", help="generate nothing: combine parts run "
                   "side by side into --out, then the report (no DIR: the --part folders)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    conditions, parts, counts, seed = STUDIES[args.study]
    prefix = "eval" if args.study == "routing" else f"eval_{args.study}"
    if args.part is not None:
        choose(parts, args.part, "part")
    if args.merge == []:
        args.merge = [args.weights / f"{prefix}_{part}" for part in parts]
    args.counts = args.counts or counts
    args.seed = seed if args.seed is None else args.seed
    args.conditions = args.conditions or parts.get(args.part, conditions)
    for cond in args.conditions.split(","):
        choose(CONDITIONS, cond, "condition")
    args.out = args.out or args.weights / (f"{prefix}_{args.part}" if args.part else prefix)
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
                     regions=(list(case["slots"]), *regions) if regions else None,
                     kv_cache=cond in KV_CACHE)


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
