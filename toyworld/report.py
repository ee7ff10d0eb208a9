"""The evaluation table, the paired comparisons and issue 14's success criteria, from the records
of ``toyworld.eval`` (pure: cases + records in, numbers and markdown out).

Per (condition, n): subject right (over subjects; Wilson 95 %), all right (over images; Wilson),
entangled (over subjects; Wilson), leaked-cell share, missing / extra / duplicated blocks per
image, and for the counterfactual conditions T, L and L/T. Paired comparisons (c - a), (b - a),
(c - b), and for the tuned dynamic routing (d - a), (d - b), (d - c), per n: paired-bootstrap
intervals over cases (the same resample for both conditions) of subject right, entangled, leaked
share and L/T; exact McNemar on the per-case binary columns (all right, any subject entangled).
"""

from __future__ import annotations

import numpy as np

from .detector import counterfactual, score
from .stats import mcnemar, paired_bootstrap, wilson
from .world import SLOTS, Identity, Placed

LABELS = {"text": "text, no colours (chance)", "oracle": "text with colours (oracle)",
          "a": "(a) dense-trained LoRA, no routing", "a2": "(a') static-trained LoRA, routing off",
          "b": "(b) static routing", "c": "(c) static + dynamic routing",
          "d": "(d) static + dynamic, single blocks from 0.5"}
PAIRS = (("c", "a"), ("b", "a"), ("c", "b"), ("d", "a"), ("d", "b"), ("d", "c"))


def _cells(text: str) -> np.ndarray:
    return (np.frombuffer(text.encode(), dtype=np.uint8) - ord("a")).astype(np.int64).reshape(-1, 16)


def per_case(cases: list[dict], records: list[dict]) -> dict:
    """(condition, case id) -> the case's measurements."""
    by_key = {(r["id"], r["condition"], r["variant"]): r for r in records}
    by_id = {c["id"]: c for c in cases}
    out = {}
    for (cid, cond, variant), rec in by_key.items():
        case = by_id.get(cid)
        if case is None or variant != "main":
            continue
        placed = [Placed(Identity.parse(s), slot) for s, slot in zip(case["subjects"], case["slots"])]
        cells = _cells(rec["cells"])
        s = score(cells, placed)
        m = {"n": case["n"], **{k: s[k] for k in ("right", "all_right", "entangled", "any_entangled",
                                                   "leaked", "missing", "extra", "duplicated", "copies")}}
        swap = by_key.get((cid, cond, "swap"))
        if swap:
            m.update(counterfactual(cells, _cells(swap["cells"]), placed, case["b"], Identity.parse(case["new"])))
        out[(cond, cid)] = m
    return out


def _rate(values: list[bool]) -> dict:
    k, n = int(sum(values)), len(values)
    lo, hi = wilson(k, n)
    return {"rate": round(k / n, 3) if n else None, "lo": round(lo, 3), "hi": round(hi, 3), "n": n}


def table_rows(cases: list[dict], data: dict, conditions: list[str]) -> list[dict]:
    rows = []
    for cond in conditions:
        for n in sorted({c["n"] for c in cases}):
            sel = [data[(cond, c["id"])] for c in cases if c["n"] == n and (cond, c["id"]) in data]
            if not sel:
                continue
            row = {"condition": cond, "n": n, "cases": len(sel),
                   "subject_right": _rate([r for m in sel for r in m["right"]]),
                   "all_right": _rate([m["all_right"] for m in sel]),
                   "entangled": _rate([e for m in sel for e in m["entangled"]]),
                   **{k: round(float(np.mean([m[k] for m in sel])), 3)
                      for k in ("leaked", "missing", "extra", "duplicated")}}
            if "T" in sel[0]:
                t, ell = sum(m["T"] for m in sel), sum(m["L"] for m in sel)
                row.update(T=round(t / len(sel), 3), L=round(ell / len(sel), 3),
                           L_over_T=round(ell / t, 3) if t else None)
            rows.append(row)
    return rows


def paired(cases: list[dict], data: dict, pairs):
    """Per subject count n and pair (x, y) of conditions: (n, x, y, the ids of the cases measured
    under both, their measurements under x, under y); pairs with no such case are left out."""
    for n in sorted({c["n"] for c in cases}):
        for x, y in pairs:
            ids = [c["id"] for c in cases if c["n"] == n and (x, c["id"]) in data and (y, c["id"]) in data]
            if ids:
                yield n, x, y, ids, [data[(x, i)] for i in ids], [data[(y, i)] for i in ids]


def comparisons(cases: list[dict], data: dict, seed: int = 0, pairs=PAIRS, interval=None) -> list[dict]:
    """Per n and pair: paired intervals of the differences of subject right, entangled, leaked
    share and L/T, and McNemar tests of all right and any entangled. ``interval(ids, *values,
    ratio=...)`` makes an interval (default: the paired bootstrap over cases)."""
    if interval is None:
        def interval(ids, *values, ratio=False):
            return paired_bootstrap(*values, ratio=ratio, seed=seed)
    out = []
    for n, x, y, ids, mx, my in paired(cases, data, pairs):
        row = {"n": n, "pair": f"{x} - {y}", "cases": len(ids)}
        for key in ("right", "entangled"):
            row[key] = interval(ids, [np.mean(m[key]) for m in mx], [np.mean(m[key]) for m in my])
        row["leaked"] = interval(ids, [m["leaked"] for m in mx], [m["leaked"] for m in my])
        if "T" in mx[0] and "T" in my[0]:
            row["L_over_T"] = interval(ids, [m["L"] for m in mx], [m["T"] for m in mx],
                                       [m["L"] for m in my], [m["T"] for m in my], ratio=True)
        for key in ("all_right", "any_entangled"):
            row[f"mcnemar_{key}"] = mcnemar([m[key] for m in mx], [m[key] for m in my])
        out.append(row)
    return out


def duplicate_places(cases: list[dict], data: dict) -> list[dict]:
    """Where duplicated blocks sit, per (condition, n): every slot other than its own where a
    subject's colour pair is fitted ("duplicates", ``score``'s copies); how many of them are the
    slot where the subject's *reference* shows its block ("at reference"), and the chance level of
    that: each duplicate counts 1 / (number of other slots) when the reference slot is another
    slot, else 0."""
    by_id, out = {c["id"]: c for c in cases}, {}
    for (cond, cid), m in data.items():
        case = by_id[cid]
        if "refs" not in case:
            continue
        entry = out.setdefault((cond, case["n"]), [0, 0, 0.0])
        for copies, slot, (ref_slot, _) in zip(m["copies"], case["slots"], case["refs"]):
            entry[0] += len(copies)
            entry[1] += copies.count(ref_slot)
            entry[2] += len(copies) * (ref_slot != slot) / (len(SLOTS) - 1)
    return [{"condition": cond, "n": n, "duplicates": d, "at_reference": at,
             "share": round(at / d, 3) if d else None, "chance": round(ch / d, 3) if d else None}
            for (cond, n), (d, at, ch) in sorted(out.items(), key=lambda kv: (list(LABELS).index(kv[0][0]), kv[0][1]))]


def _get(rows, cond, n):
    return next((r for r in rows if r["condition"] == cond and r["n"] == n), None)


def _pooled_T(cases, data, cond) -> float | None:
    sel = [data[(cond, c["id"])] for c in cases if (cond, c["id"]) in data and "T" in data[(cond, c["id"])]]
    return round(float(np.mean([m["T"] for m in sel])), 3) if sel else None


def criteria(cases: list[dict], data: dict, rows: list[dict], comps: list[dict]) -> list[dict]:
    """Issue 14's success criteria, decided before the measurement, each with what was measured."""
    out = []

    def add(name, ok, measured):
        out.append({"criterion": name, "result": ok, "measured": measured})

    for cond in ("b", "c"):
        r = _get(rows, cond, 2)
        add(f"transfer: subject right >= 0.5 at n = 2 under ({cond}), Wilson lower bound > 0.35",
            None if r is None else r["subject_right"]["rate"] >= 0.5 and r["subject_right"]["lo"] > 0.35,
            None if r is None else r["subject_right"])
    text = [r["subject_right"]["rate"] for r in rows if r["condition"] == "text"]
    add("transfer: text-only (no colours) subject right <= 0.05 at every n", max(text) <= 0.05 if text else None, text)
    for cond in ("b", "c"):
        t = _pooled_T(cases, data, cond)
        add(f"transfer: T >= 0.5 under ({cond}) (all n)", None if t is None else t >= 0.5, t)
    for n in (3, 4):
        a, c = _get(rows, "a", n), _get(rows, "c", n)
        comp = next((x for x in comps if x["n"] == n and x["pair"] == "c - a"), None)
        if not (a and c and comp):
            continue
        weak = (min(a.get("T") or 0, c.get("T") or 0) < 0.3
                or min(a["subject_right"]["rate"], c["subject_right"]["rate"]) < 0.3)  # docs: inconclusive
        ent, lt = comp["entangled"], comp.get("L_over_T")
        checks = [
            (f"routing n = {n}: entangled(c) <= entangled(a) - 0.10, paired interval of (c - a) below 0",
             c["entangled"]["rate"] <= a["entangled"]["rate"] - 0.10 and ent["hi"] < 0, ent),
            (f"routing n = {n}: subject right (c) >= (a) - 0.05",
             c["subject_right"]["rate"] >= a["subject_right"]["rate"] - 0.05,
             {"a": a["subject_right"]["rate"], "c": c["subject_right"]["rate"]}),
            (f"routing n = {n}: L/T lower under (c), interval of (c - a) excluding 0",
             lt is not None and lt["hi"] < 0, lt)]
        for name, ok, measured in checks:
            add(name, "inconclusive" if weak else ok, measured)
    return out


def _ci(r: dict) -> str:
    return f"{r['rate']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"


def _num(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def render(rows: list[dict], comps: list[dict], crit: list[dict], places: list[dict] = ()) -> str:
    lines = ["| condition | n | cases | subject right | all right | entangled | leaked cells | missing | extra "
             "| duplicated | T | L | L/T |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {LABELS[r['condition']]} | {r['n']} | {r['cases']} | {_ci(r['subject_right'])} | "
                     f"{_ci(r['all_right'])} | {_ci(r['entangled'])} | {r['leaked']:.3f} | {r['missing']:.2f} | "
                     f"{r['extra']:.2f} | {r['duplicated']:.2f} | {_num(r.get('T'))} | {_num(r.get('L'))} | "
                     f"{_num(r.get('L_over_T'))} |")
    lines += ["", "| n | pair | subject right | entangled | leaked cells | L/T | McNemar all right (x only / y "
              "only, p) | McNemar any entangled |", "|---|---|---|---|---|---|---|---|"]
    for c in comps:
        d = {k: (f"{c[k]['diff']:+.3f} [{c[k]['lo']:+.3f}, {c[k]['hi']:+.3f}]" if k in c else "—")
             for k in ("right", "entangled", "leaked", "L_over_T")}
        mc = {k: f"{c[k]['x_only']} / {c[k]['y_only']}, p = {c[k]['p']:.3g}" for k in
              ("mcnemar_all_right", "mcnemar_any_entangled")}
        lines.append(f"| {c['n']} | {c['pair']} | {d['right']} | {d['entangled']} | {d['leaked']} | "
                     f"{d['L_over_T']} | {mc['mcnemar_all_right']} | {mc['mcnemar_any_entangled']} |")
    lines += ["", "| success criterion (issue 14) | result | measured |", "|---|---|---|"]
    for c in crit:
        result = {True: "met", False: "not met", None: "not measured"}.get(c["result"], c["result"])
        lines.append(f"| {c['criterion']} | {result} | {c['measured']} |")
    if places:
        lines += ["", "| condition | n | duplicated blocks | in the subject's reference slot | share | chance |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {LABELS[p['condition']]} | {p['n']} | {p['duplicates']} | {p['at_reference']} | "
                  f"{_num(p['share'])} | {_num(p['chance'])} |" for p in places]
    return "\n".join(lines) + "\n"


def write_report(out, cases: list[dict], records: list[dict], seed: int = 0) -> str:
    from .common import write_json

    conditions = [c for c in LABELS if any(r["condition"] == c for r in records)]
    data = per_case(cases, records)
    rows, comps = table_rows(cases, data, conditions), comparisons(cases, data, seed)
    crit, places = criteria(cases, data, rows, comps), duplicate_places(cases, data)
    text = render(rows, comps, crit, places)
    (out / "table.md").write_text(text)
    write_json({"rows": rows, "comparisons": comps, "criteria": crit, "duplicate_places": places,
                "seconds": round(sum(r.get("seconds", 0) for r in records), 1)}, out / "summary.json")
    return text
