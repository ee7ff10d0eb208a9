"""The statistics of the pre-registered analyses (docs/TOY_WORLD.md §11.2, §11.3, §13), on per-case
data already read from the published records: per case the mean over LoRA seeds, paired
differences with the identity-clustered bootstrap, Holm's adjustment over a primary family, each
seed's own differences with their spread over seeds, the secondary differences, the decision rules
and the written report (primary.json, primary.md). ``toyworld.replication`` reads the records and
calls these."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .stats import clustered_bootstrap, holm

PRIMARY = (("R3", "entangled", ("static", "off"), 3), ("R4", "entangled", ("static", "off"), 4),
           ("M3", "right", ("b", "a"), 3), ("M4", "right", ("b", "a"), 4),
           ("D3", "right", ("d", "b"), 3), ("D4", "right", ("d", "b"), 4))



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


def _interval(r: dict) -> str:
    return f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"


def write_primary(folder: Path, rows: list[dict], extra_text: str = "", extra: dict | None = None) -> None:
    """primary.json and primary.md in ``folder``; prints the table."""
    data = {"endpoints": rows, **extra} if extra else rows
    (folder / "primary.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [f"Primary endpoints ({len(rows)} present; Holm over those):", "",
             "| id | metric | comparison | n | cases | diff [95 %] | p | p (Holm) | established |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['id']} | {r['metric']} | {r['comparison']} | {r['n']} | {r['cases']} | "
              f"{_interval(r)} | {r['p']:.4f} | {r['p_holm']:.4f} | "
              f"{'yes' if r['established'] else 'no'} |" for r in rows]
    text = "\n".join(lines) + "\n" + extra_text
    (folder / "primary.md").write_text(text)
    print(text)


def report_text(all_seeds, seeds: dict[int, tuple[list[dict], dict]], seed_rows: list[dict],
                second: list[dict], rules: list[dict]) -> str:
    """The per-seed table (a column for each of ``all_seeds``), the secondary differences and the
    rules' outcomes, as markdown."""
    names = [f"seed {s}" for s in all_seeds]
    lines = ["", f"Per LoRA seed (subject right; each seed's cases alone; published: "
             f"{', '.join(map(str, seeds)) or 'none'}):", "",
             "| comparison | n | " + " | ".join(names) + " | mean | SD over seeds |",
             "|---|---|" + "---|" * len(names) + "---|---|"]
    for r in seed_rows:
        cells = [_interval(r["seeds"][s]) if s in r["seeds"] else "—" for s in all_seeds]
        sd = f"{r['sd']:.3f}" if r["sd"] is not None else "—"
        lines.append(f"| {r['comparison']} | {r['n']} | " + " | ".join(cells) + f" | {r['mean']:+.3f} | {sd} |")
    lines += ["", "Secondary (subject right, pooled over seeds, not adjusted):", "",
              "| source | comparison | n | cases | diff [95 %] |", "|---|---|---|---|---|"]
    lines += [f"| {r['source']} | {r['comparison']} | {r['n']} | {r['cases']} | {_interval(r)} |" for r in second]
    lines += ["", "Decision rules (docs/TOY_WORLD.md §11.3):", ""]
    lines += [f"{r['rule']}. " + (r["decision"] or "not decided yet: waiting for " + ", ".join(r["waiting_for"]))
              for r in rules]
    return "\n".join(lines) + "\n"
