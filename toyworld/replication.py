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
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import common
from .stats import clustered_bootstrap, holm

SEEDS = (0, 1, 2)  # training seeds of both LoRA arms [pre-registered]
CASE_SEED = 2  # fresh test cases (0: the first evaluation, 1: the route study) [pre-registered]
COUNTS = "2:100,3:200,4:200"
CONDITIONS = "a,b,c,d"
PRIMARY = (("R3", "entangled", ("static", "off"), 3), ("R4", "entangled", ("static", "off"), 4),
           ("M3", "right", ("b", "a"), 3), ("M4", "right", ("b", "a"), 4),
           ("D3", "right", ("d", "b"), 3), ("D4", "right", ("d", "b"), 4))


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


def pooled(per_seed: list[dict], cases: list[dict], metric: str, conditions: tuple[str, str],
           n: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Per case (of n subjects, present in every seed): the mean over seeds of the per-case share
    of ``metric`` ("right" or "entangled") under each of the two conditions, and the case's
    identities (its bootstrap clusters)."""
    x, y, clusters = [], [], []
    for case in (c for c in cases if c["n"] == n):
        keys = [(cond, case["id"]) for cond in conditions]
        if not all(k in data for data in per_seed for k in keys):
            continue
        x.append(np.mean([np.mean(data[keys[0]][metric]) for data in per_seed]))
        y.append(np.mean([np.mean(data[keys[1]][metric]) for data in per_seed]))
        clusters.append(tuple(case["subjects"]))
    return np.asarray(x), np.asarray(y), clusters


CACHE_PRIMARY = (("I3", "right", ("isolated", "off"), 3), ("I4", "right", ("isolated", "off"), 4),
                 ("F3", "right", ("isolated", "frozen"), 3), ("F4", "right", ("isolated", "frozen"), 4))


def difference(source: tuple[list[dict], list[dict]], metric: str, pair: tuple[str, str], n: int) -> dict | None:
    """One paired difference of ``metric`` ("right" / "entangled") between the two conditions of
    ``pair`` at ``n`` subjects, per case pooled over the seeds of ``source`` (per-case data of every
    seed, cases), with the identity-clustered bootstrap's interval and p; None without cases."""
    x, y, clusters = pooled(source[0], source[1], metric, pair, n)
    if not len(x):
        return None
    result = clustered_bootstrap(x, y, clusters=clusters)
    return {"metric": metric, "comparison": f"{pair[0]} - {pair[1]}", "n": n, "cases": len(x),
            "diff": result["diff"], "lo": result["lo"], "hi": result["hi"], "p": result["p"]}


def primary(sources: dict[str, tuple[list[dict], list[dict]]], family=PRIMARY) -> list[dict]:
    """The primary endpoints of ``family`` (§11.2: R, M, D; §13: I, F) from ``sources``: "R"
    (refeval), "M" (the MUSAR seeds) or "C" (the cache study), each (per-case data of every seed,
    cases). Missing sources leave their endpoints out; Holm runs over the endpoints present (the
    note says when a part is still missing)."""
    out = []
    for name, metric, pair, n in family:
        source = sources.get({"R": "R", "I": "C", "F": "C"}.get(name[0], "M"))
        row = difference(source, metric, pair, n) if source else None
        if row:
            out.append({"id": name, **row})
    for row, adjusted in zip(out, holm([r["p"] for r in out]) if out else []):
        row.update(p_holm=adjusted, established=adjusted < 0.05)
    return out


# §11.2's secondary differences (subject right, no adjustment; no decision rests on one alone)
# and the ones §11.3's rules read: (source, comparison), at n = 2, 3, 4
SECONDARY = (("R", ("static", "off")), ("R", ("dynamic", "static")), ("R", ("hard", "dynamic")),
             ("R", ("soft", "dynamic")), ("R", ("hard", "off")), ("R", ("soft", "off")),
             ("M", ("c", "b")), ("M", ("c", "a")), ("M", ("d", "a")))
SEED_COMPARISONS = (("b", "a"), ("d", "b"), ("c", "b"), ("c", "a"), ("d", "a"))  # per LoRA seed
NS = (2, 3, 4)


def secondary(sources: dict[str, tuple[list[dict], list[dict]]]) -> list[dict]:
    """The §11.2 secondary differences of subject right present in ``sources``, unadjusted."""
    out = []
    for src, pair in SECONDARY:
        for n in NS if src in sources else ():
            row = difference(sources[src], "right", pair, n)
            if row:
                out.append({"source": src, **row})
    return out


def per_seed(seeds: dict[int, tuple[list[dict], dict]]) -> list[dict]:
    """Each LoRA seed's own differences of subject right (that seed's cases alone, the same
    clustered bootstrap) and, over two or more seeds, their mean and standard deviation (ddof 1):
    the across-seed spread §11.2 asks to report next to the pooled result."""
    out = []
    for pair in SEED_COMPARISONS:
        for n in NS:
            found = {s: difference(([data], cases), "right", pair, n) for s, (cases, data) in seeds.items()}
            found = {s: {k: r[k] for k in ("diff", "lo", "hi", "cases")} for s, r in found.items() if r}
            if not found:
                continue
            diffs = [r["diff"] for r in found.values()]
            out.append({"comparison": f"{pair[0]} - {pair[1]}", "n": n, "seeds": found,
                        "mean": float(np.mean(diffs)),
                        "sd": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None})
    return out


def decisions(rows: list[dict], second: list[dict]) -> list[dict]:
    """§11.3's four rules applied to the primary rows and the secondary differences; a rule whose
    inputs are not all there yet says so instead of deciding."""
    by_id = {r["id"]: r for r in rows}
    sec = {(r["comparison"], r["n"]): r for r in second}

    def need(*keys):  # the inputs not there yet, named for the report
        return [k if isinstance(k, str) else f"{k[0]} at n = {k[1]}" for k in keys
                if k not in by_id and k not in sec]

    out = []
    missing = need("R3", "R4", ("static - off", 3), ("static - off", 4))
    if missing:
        out.append({"rule": 1, "decision": None, "waiting_for": missing})
    else:
        r = [by_id["R3"], by_id["R4"]]
        if all(x["established"] and x["diff"] < 0 for x in r):
            d = "static reference routing reduces bleed: keep it on"
        elif any(x["established"] and x["diff"] > 0 for x in r):
            d = "static reference routing increases bleed: turn it off"
        elif all(sec[("static - off", n)]["lo"] >= -0.02 for n in (3, 4)):
            d = "no measurable effect on bleed; harmless (subject right lower bound >= -0.02): stays on"
        else:
            d = "no measurable effect on bleed and it may cost accuracy: default becomes off"
        out.append({"rule": 1, "decision": d})
    missing = need(("dynamic - static", 3), ("dynamic - static", 4))
    if missing:
        out.append({"rule": 2, "decision": None, "waiting_for": missing})
    else:
        ds = [sec[("dynamic - static", n)] for n in (3, 4)]
        d = ("dynamic reference routing costs accuracy: default off" if all(x["hi"] < 0 for x in ds) else
             "dynamic reference routing helps: stays on" if all(x["lo"] > 0 for x in ds) else
             "the evidence does not decide dynamic reference routing: stays on, and the README says so")
        out.append({"rule": 2, "decision": d})
    missing = need("D3", "D4", ("c - b", 3), ("c - b", 4))
    if missing:
        out.append({"rule": 3, "decision": None, "waiting_for": missing})
    else:
        if all(by_id[k]["established"] and by_id[k]["diff"] > 0 for k in ("D3", "D4")):
            d = "(d)'s settings become Apply Routing's defaults (routing_blocks single, start_percent 0.5)"
        elif all(sec[("c - b", n)]["hi"] < 0 for n in (3, 4)):
            d = ("dynamic routing becomes off by default in Apply Routing; (d)'s settings are documented "
                 "as the way to switch it on")
        else:
            d = "Apply Routing's dynamic defaults stay; the README says why"
        out.append({"rule": 3, "decision": d})
    missing = need("M3", "M4")
    if missing:
        out.append({"rule": 4, "decision": None, "waiting_for": missing})
    else:
        ok = all(by_id[k]["established"] and by_id[k]["diff"] > 0 for k in ("M3", "M4"))
        out.append({"rule": 4, "decision": "static routing for MUSAR subjects: the replication confirms it" if ok
                    else "static routing for MUSAR subjects: failure to replicate"})
    return out


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


def write_primary(folder: Path, rows: list[dict], extra_text: str = "", extra: dict | None = None) -> None:
    """primary.json and primary.md in ``folder``; prints the table."""
    data = {"endpoints": rows, **extra} if extra else rows
    (folder / "primary.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [f"Primary endpoints ({len(rows)} present; Holm over those):", "",
             "| id | metric | comparison | n | cases | diff [95 %] | p | p (Holm) | established |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['id']} | {r['metric']} | {r['comparison']} | {r['n']} | {r['cases']} | "
              f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] | {r['p']:.4f} | {r['p_holm']:.4f} | "
              f"{'yes' if r['established'] else 'no'} |" for r in rows]
    text = "\n".join(lines) + "\n" + extra_text
    (folder / "primary.md").write_text(text)
    print(text)


def _interval(r: dict) -> str:
    return f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"


def report_text(seeds: dict[int, tuple[list[dict], dict]], seed_rows: list[dict], second: list[dict],
                rules: list[dict]) -> str:
    """The per-seed table, the secondary differences and the rules' outcomes, as markdown."""
    names = [f"seed {s}" for s in SEEDS]
    lines = ["", f"Per LoRA seed (subject right; each seed's cases alone; published: "
             f"{', '.join(map(str, seeds)) or 'none'}):", "",
             "| comparison | n | " + " | ".join(names) + " | mean | SD over seeds |",
             "|---|---|" + "---|" * len(names) + "---|---|"]
    for r in seed_rows:
        cells = [_interval(r["seeds"][s]) if s in r["seeds"] else "—" for s in SEEDS]
        sd = f"{r['sd']:.3f}" if r["sd"] is not None else "—"
        lines.append(f"| {r['comparison']} | {r['n']} | " + " | ".join(cells) + f" | {r['mean']:+.3f} | {sd} |")
    lines += ["", "Secondary (subject right, pooled over seeds, not adjusted):", "",
              "| source | comparison | n | cases | diff [95 %] |", "|---|---|---|---|---|"]
    lines += [f"| {r['source']} | {r['comparison']} | {r['n']} | {r['cases']} | {_interval(r)} |" for r in second]
    lines += ["", "Decision rules (docs/TOY_WORLD.md §11.3):", ""]
    lines += [f"{r['rule']}. " + (r["decision"] or "not decided yet: waiting for " + ", ".join(r["waiting_for"]))
              for r in rules]
    return "\n".join(lines) + "\n"


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
    write_primary(RESULTS, rows, report_text(seeds, seed_rows, second, rules),
                  {"per_seed": seed_rows, "secondary": second, "decisions": rules})
    return 0


WEIGHTS_BUDGET = 20_000_000  # bytes of committed *.safetensors in toyworld/weights (issue 21)
COMMITTED_SEED = 0  # the LoRAs of this training seed are the demo's (the recipe's own seed)


RANK_TOLERANCE = 2.0 ** -11  # fp16's unit roundoff: a cut this small is below what fp16 storage loses


def _save_half(src: Path, dest: Path) -> dict:
    """``src`` with every floating tensor in fp16 (metadata kept) -> ``dest``."""
    import torch
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    dtypes = sorted({str(t.dtype) for t in tensors.values()})
    common.save_safetensors({k: t.to(torch.float16) if t.is_floating_point() else t
                             for k, t in tensors.items()}, dest, meta)
    return {"source_dtypes": dtypes, "stored": "float16"}


def _save_truncated_lora(src: Path, dest: Path, lora_io, omini) -> dict:
    """Every LoRA pair of ``src`` re-factored by SVD of its product (scale folded in) and cut to the
    fewest singular values whose left-out part has a Frobenius norm ≤ ``RANK_TOLERANCE`` × the
    product's: the delta changes by no more than fp16 rounding changes it. ``lora_io`` / ``omini``:
    the pack's musar.lora / musar.omini. Returns the ranks kept."""
    import dataclasses

    import torch

    lora, kept, params = omini.load_lora_file(src), {}, [0, 0]
    modules = {}
    for name, pairs in lora.modules.items():
        cut = []
        for branch, pair in zip(("noisy", "subject"), pairs):
            if pair is None:
                cut.append(None)
                continue
            delta = (pair.up.double() * pair.scale) @ pair.down.double()
            u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
            sign = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)))  # one sign per pair: same
            u, vh = u * sign, vh * sign.T  # bytes whichever LAPACK path (thread count) ran the SVD
            tail = torch.sqrt(torch.flip(torch.cumsum(torch.flip(sv ** 2, [0]), 0), [0]))  # tail[i]: norm of sv[i:]
            fits = torch.nonzero(tail <= RANK_TOLERANCE * tail[0]).flatten()
            rank = min(int(fits[0]) if len(fits) else pair.rank, pair.rank)
            root = torch.sqrt(sv[:rank])  # rank 0: the product is exactly zero (e.g. an output never read)
            cut.append(dataclasses.replace(pair, down=(root[:, None] * vh[:rank]).float(),
                                           up=(u[:, :rank] * root).float(), scale=1.0) if rank else None)
            kept[f"{name}.{branch}"] = [pair.rank, rank]
            params[0] += pair.rank * sum(delta.shape)
            params[1] += rank * sum(delta.shape)
        if any(cut):
            modules[name] = tuple(cut)
    lora_io.save_dual_lora(dest, dataclasses.replace(lora, modules=modules))
    return {"rank_tolerance": RANK_TOLERANCE, "ranks_kept": kept, "parameters": params}


def _passed(gate: Path) -> bool:
    return gate.is_file() and json.loads(gate.read_text())["passed"]


def install(stage: Path, folder: Path, budget: int = WEIGHTS_BUDGET) -> int:
    """Move every file of ``stage`` into ``folder`` if the weights (*.safetensors) the folder then
    holds stay within ``budget`` bytes; otherwise refuse and leave ``folder`` as it was. Returns
    the folder's weight bytes."""
    staged = {p.name: p for p in stage.iterdir() if p.is_file()}
    total = sum(p.stat().st_size for p in staged.values() if p.suffix == ".safetensors")
    total += sum(p.stat().st_size for p in folder.glob("*.safetensors") if p.name not in staged)
    if total > budget:
        raise SystemExit(f"commit-weights: {folder} would hold {total / 1e6:.2f} MB of weights, over the "
                         f"{budget / 1e6:.0f} MB budget; nothing was changed")
    for name, path in staged.items():
        os.replace(path, folder / name)
    return total


def commit_weights() -> int:
    """Write the demo's models into the committed folder toyworld/weights: the medium base (its
    gate must have passed) and the seed-0 LoRAs of both arms (gated), every floating tensor in
    fp16, with their training logs and gates; the multi-reference base already there stays.
    Everything is made and measured in a staging folder first; the committed folder changes only
    when the result fits ``WEIGHTS_BUDGET``. ``weights.json`` records each file's source, its
    digest, what was converted and each LoRA's gate measured again on the converted files (the
    same cases as its training gate)."""
    from .eval import model_digests
    from .gate import lora_gate

    base_dir, lora_dir = common.run_folders("medium")[0], seed_folder(COMMITTED_SEED) / "weights"
    arms = ("static", "dense")
    models = [base_dir / "toy_flux.safetensors"] + [lora_dir / f"toy_lora_{a}.safetensors" for a in arms]
    sides = [base_dir / name for name in ("toy_codec.safetensors", "toy_text_encoder.safetensors",
                                          "train_base_log.json", "base_gate.json")]
    sides += [lora_dir / name for a in arms for name in (f"train_lora_{a}_log.json", f"lora_gate_{a}.json")]
    missing = [str(p) for p in models + sides if not p.is_file()]
    if missing:
        raise SystemExit("commit-weights: missing " + ", ".join(missing) + " (train the medium base and "
                         f"the seed-{COMMITTED_SEED} LoRAs first: make replicate SEEDS={COMMITTED_SEED})")
    failed = [str(g) for g in [base_dir / "base_gate.json"] + [lora_dir / f"lora_gate_{a}.json" for a in arms]
              if not _passed(g)]
    if failed:
        raise SystemExit("commit-weights: these gates did not pass: " + ", ".join(failed))
    stage = common.CACHE_DIR / "commit_stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    converted, pack = {}, common.setup(threads=1)
    for src in models:
        dest = stage / src.name
        info = {"source": str(src.relative_to(common.ROOT)), "source_digest": model_digests([src])[src.name]}
        if src.name.startswith("toy_lora_"):  # factors re-cut to the rank fp16 can tell apart, then fp16
            info.update(_save_truncated_lora(src, dest, *(common.module(pack, f"musar.{m}") for m in ("lora", "omini"))))
            src = dest
        info.update(_save_half(src, dest))
        converted[dest.name] = {**info, "digest": model_digests([dest])[dest.name]}
    for src in sides:
        shutil.copyfile(src, stage / src.name)
    for attention in arms:  # the gate again, on the converted (cut, fp16) files
        name, work = f"toy_lora_{attention}.safetensors", common.CACHE_DIR / f"commit_gate_{attention}"
        shutil.rmtree(work, ignore_errors=True)  # a measurement of these files, never an earlier run's records
        gate = lora_gate(stage, stage / name, attention, work, threads=2)
        converted[name]["gate_on_committed_files"] = gate
        print(f"{name}: gate on the committed files {gate['summary']}")
    total = install(stage, common.WEIGHTS_DIR)
    common.write_json({"files": converted, "weights_bytes": total, "budget_bytes": WEIGHTS_BUDGET},
                      common.WEIGHTS_DIR / "weights.json")
    print(f"committed weights: {total / 1e6:.2f} MB of {WEIGHTS_BUDGET / 1e6:.0f} MB")
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
        return commit_weights()
    return analyse()


if __name__ == "__main__":
    sys.exit(main())
