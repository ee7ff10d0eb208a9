"""The MUSAR result over training seeds and the pre-registered primary analysis (docs/TOY_WORLD.md
§11): each stage one command, resumable, nice'd by the Makefile.

    python -m toyworld.replication train --seed 1 --attention static   # one LoRA of one seed
    python -m toyworld.replication eval --seed 1                       # (a) (b) (c) (d), case seed 2
    python -m toyworld.replication publish-refs                        # refeval's records -> results
    python -m toyworld.replication analyse                             # the six primary endpoints

Folders (medium base): ``.cache/toyworld/medium/replication/seed<s>/`` holds the seed's two LoRAs
(``weights/``), their training work folders and its evaluation (``eval/``). A finished stage
publishes its records into ``toyworld/results/medium/replication/seed<s>/`` (training logs, gates,
records.jsonl.gz, cases, model digests, tables); ``publish-refs`` does the same for the Route
References evaluation (``toyworld/results/refbase/``). ``analyse`` reads only the published records:
it pools the three seeds per case, runs the identity-clustered bootstrap and Holm's adjustment over
the six primary tests present, adds each published seed's own differences with their spread over
seeds, the §11.2 secondary differences and §11.3's decision rules, and writes
``toyworld/results/primary.json`` and ``primary.md``. No record is edited by hand.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

from . import common
from .analysis import CACHE_PRIMARY, decisions, per_seed, primary, report_text, secondary, write_primary

SEEDS = (0, 1, 2)  # training seeds of both LoRA arms [pre-registered]
CASE_SEED = 2  # fresh test cases (0: the first evaluation, 1: the route study) [pre-registered]
COUNTS = "2:100,3:200,4:200"
CONDITIONS = "a,b,c,d"

RESULTS = common.ROOT / "toyworld" / "results"
PUBLISHED = ("cases.json", "models.json", "summary.json", "table.md", "verify.json")  # + records.jsonl as .gz


def seed_folder(seed: int) -> Path:
    """The seed's LoRAs, their training work folders and its evaluation (cache)."""
    return common.run_folders("medium")[1] / "replication" / f"seed{seed}"


def seed_results(seed: int) -> Path:
    return RESULTS / "medium" / "replication" / f"seed{seed}"


def ref_results() -> Path:
    return RESULTS / "refbase"


def publish(src: Path, dest: Path) -> None:
    """Copy a finished evaluation's records (gzip'd), cases, model digests and tables from the cache
    into the committed results; refuses an evaluation without records."""
    if not (src / "records.jsonl").is_file():
        raise SystemExit(f"{src}: no records.jsonl -- run the evaluation first")
    dest.mkdir(parents=True, exist_ok=True)
    with (src / "records.jsonl").open("rb") as f, (dest / "records.jsonl.gz").open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as g:  # same bytes every time
        shutil.copyfileobj(f, g)
    for name in PUBLISHED:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    print(f"published {src} -> {dest}")


def train(seed: int, attention: str, extra: list[str]) -> int:
    folder = seed_folder(seed)
    done = [folder / "weights" / f"toy_lora_{attention}.safetensors", seed_results(seed) / f"lora_gate_{attention}.json"]
    if all(path.is_file() for path in done) and not extra:
        print(f"seed {seed}, {attention}: trained and gated already ({done[0]})")
        return 0
    args = [sys.executable, "-m", "toyworld.train_lora", "--size", "medium", "--attention", attention,
            "--seed", str(seed), "--out", str(folder / "weights"), "--work", str(folder / f"lora_{attention}")]
    code = subprocess.call(args + extra, cwd=common.ROOT)
    if code == 0 and not extra:  # the training log (settings, loss curve, time) and the LoRA's gate
        for name in (f"train_lora_{attention}_log.json", f"lora_gate_{attention}.json"):
            if (folder / "weights" / name).is_file():
                seed_results(seed).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / "weights" / name, seed_results(seed) / name)
    return code


VERIFY_SHARE = 0.02  # of a seed's 4,000 images re-run once all are done (verify.json)
JOB_PARTS = ("a,c", "b,d")  # ``eval --jobs 2``: two processes of about equal work, then merged


def evaluate(seed: int, extra: list[str], jobs: int = 1) -> int:
    """(a)-(d) of one seed on the pre-registered cases; ``jobs`` = 2 runs two halves of the
    conditions side by side (one thread each) and merges them. Publishes the records once the
    pre-registered run is complete (no ``extra`` arguments)."""
    folder = seed_folder(seed)
    base = [sys.executable, "-m", "toyworld.eval", "--size", "medium", "--seed", str(CASE_SEED),
            "--counts", COUNTS, "--loras", str(folder / "weights")]
    if jobs == 1:
        code = subprocess.call(base + ["--conditions", CONDITIONS, "--out", str(folder / "eval")] + extra,
                               cwd=common.ROOT)
    else:
        parts = [folder / f"eval_{part.replace(',', '')}" for part in JOB_PARTS]
        procs = [subprocess.Popen(base + ["--conditions", part, "--out", str(out)] + extra, cwd=common.ROOT)
                 for part, out in zip(JOB_PARTS, parts)]
        code = max(proc.wait() for proc in procs)
        if code == 0:
            code = subprocess.call(base + ["--out", str(folder / "eval"), "--merge", *map(str, parts)]
                                   + extra, cwd=common.ROOT)
    if code == 0:  # the re-run check: a seeded share of the finished images generated again
        code = subprocess.call(base + ["--conditions", CONDITIONS, "--out", str(folder / "eval"),
                                       "--verify", str(VERIFY_SHARE)] + extra, cwd=common.ROOT)
    if code == 0 and not extra:  # a partial run (--counts ...) is not the pre-registered one
        publish(folder / "eval", seed_results(seed))
    return code


def read_eval(folder: Path) -> tuple[list[dict], dict] | None:
    """(cases, per-case data) of one published evaluation, or None while it is missing."""
    from .report import per_case

    if not (folder / "records.jsonl.gz").is_file() or not (folder / "cases.json").is_file():
        return None
    cases = json.loads((folder / "cases.json").read_text())["cases"]
    with gzip.open(folder / "records.jsonl.gz", "rt") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return cases, per_case(cases, records)


def published_seeds() -> dict[int, tuple[list[dict], dict]]:
    """The LoRA seeds whose evaluation is published so far: seed -> (cases, per-case data)."""
    found = {seed: read_eval(seed_results(seed)) for seed in SEEDS}
    return {seed: value for seed, value in found.items() if value}


def sources(seeds: dict[int, tuple[list[dict], dict]] | None = None) -> dict[str, tuple[list[dict], list[dict]]]:
    """What ``primary`` needs from the evaluations finished so far: "M" once every seed is
    evaluated (pooling fewer would not be the registered test), "R" once the Route References
    evaluation is merged."""
    seeds = published_seeds() if seeds is None else seeds
    out = {}
    if set(seeds) == set(SEEDS):
        out["M"] = ([seeds[s][1] for s in SEEDS], seeds[SEEDS[0]][0])
    ref = read_eval(ref_results())
    if ref:
        out["R"] = ([ref[1]], ref[0])
    return out


def cell_maps_agree(folder: Path, a: str, b: str) -> dict:
    """How many images of condition ``a`` have exactly the cell map of the same case and variant
    under ``b`` (the exact cache against the uncached isolated run, §13)."""
    with gzip.open(folder / "records.jsonl.gz", "rt") as f:
        cells = {(r["condition"], r["id"], r["variant"]): r["cells"] for r in map(json.loads, f) if r}
    pairs = [(v, cells.get((b, i, var))) for (c, i, var), v in cells.items() if c == a]
    same = sum(1 for x, y in pairs if x == y)
    return {"images": len(pairs), "identical_cell_maps": same, "compared": f"{a} vs {b}"}


def analyse_cache() -> int:
    """§13: I3, I4, F3, F4 with Holm over the four, and the exact cache's agreement check."""
    folder = ref_results() / "cache"
    found = read_eval(folder)
    if found is None:
        print(f"nothing to analyse yet: {folder} holds no published evaluation")
        return 1
    rows = primary({"C": ([found[1]], found[0])}, CACHE_PRIMARY)
    check = cell_maps_agree(folder, "isolated_cached", "isolated")
    write_primary(folder, rows, f"\nCheck: {check['identical_cell_maps']} of {check['images']} "
                  f"images have identical cell maps ({check['compared']}).\n", {"check": check})
    return 0


def analyse() -> int:
    """§11.2: the primary family (Holm over the endpoints present), each published seed's own
    differences with the across-seed spread, the secondary differences and §11.3's rules."""
    seeds = published_seeds()
    found = sources(seeds)
    rows = primary(found)
    if not rows and not seeds:
        print("nothing to analyse yet: no published evaluation")
        return 1
    seed_rows, second = per_seed(seeds), secondary(found)
    rules = decisions(rows, second)
    write_primary(RESULTS, rows, report_text(SEEDS, seeds, seed_rows, second, rules),
                  {"per_seed": seed_rows, "secondary": second, "decisions": rules})
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    t = sub.add_parser("train", help="one LoRA of one training seed")
    t.add_argument("--seed", type=int, choices=SEEDS, required=True)
    t.add_argument("--attention", choices=("static", "dense"), required=True)
    e = sub.add_parser("eval", help="conditions (a) (b) (c) (d) on the fresh test cases, one seed")
    e.add_argument("--seed", type=int, choices=SEEDS, required=True)
    e.add_argument("--jobs", type=int, choices=(1, 2), default=2,
                   help=f"2: the conditions in two processes side by side ({' and '.join(JOB_PARTS)}), then merged")
    sub.add_parser("publish-refs", help="copy the finished Route References evaluation into toyworld/results/refbase")
    sub.add_parser("publish-cache", help="copy the finished isolation / exact-cache evaluation "
                   "(§13) into toyworld/results/refbase/cache")
    sub.add_parser("analyse", help="the pre-registered primary endpoints")
    sub.add_parser("commit-weights", help="the medium base and the seed-0 LoRAs in fp16 -> toyworld/weights "
                   "(the demo's and the tests' models)")
    sub.add_parser("analyse-cache", help="§13's primary endpoints and the exact cache's check")
    args, extra = p.parse_known_args(argv)
    if args.stage == "train":
        return train(args.seed, args.attention, extra)
    if args.stage == "eval":
        return evaluate(args.seed, extra, args.jobs)
    if args.stage == "publish-refs":
        from .refeval import WEIGHTS

        publish(WEIGHTS / "eval", ref_results())
        for path in (WEIGHTS / "train_refbase_log.json", WEIGHTS / "refbase_gate.json", WEIGHTS / "run" / "gates.jsonl"):
            if path.is_file():  # the base's training log, its gate and the gates measured on the way
                shutil.copyfile(path, ref_results() / path.name)
        return 0
    if args.stage == "publish-cache":
        from .refeval import WEIGHTS

        publish(WEIGHTS / "eval_cache", ref_results() / "cache")
        return 0
    if args.stage == "analyse-cache":
        return analyse_cache()
    if args.stage == "commit-weights":
        from .commit_weights import commit_weights

        return commit_weights()
    return analyse()


if __name__ == "__main__":
    sys.exit(main())
