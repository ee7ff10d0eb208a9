"""The table and paired comparisons of the MUSAR Route References evaluation (``toyworld.refeval``)
from its records (pure: cases + records in, numbers and markdown out).

Per case the measurements are ``toyworld.report.per_case``'s (the detector's scores as in
docs/TOY_WORLD.md §3, and T / L from the counterfactual swap). Intervals are **clustered by
identity** (``stats.clustered_bootstrap``): a case's clusters are its subjects' identities, and
identities, not cases, are resampled (a held-out identity appears in many cases, so cases are not
independent). Per (condition, n): subject right, all right, entangled (rates with clustered 95 %
intervals), leaked-cell share, missing / extra / duplicated per image, T, L and L/T (L/T with a
clustered interval). Per n and pair of conditions (``PAIRS``): clustered paired intervals of the
differences of subject right, entangled, leaked share and L/T, and exact McNemar tests of all
right and any entangled, with Holm-adjusted p-values over the whole family of McNemar tests in
the table.
"""

from __future__ import annotations

import math

import numpy as np

from .report import comparisons as report_comparisons
from .report import per_case, table_rows
from .stats import clustered_bootstrap, holm

LABELS = {"off": "off (stock graph)", "static": "static routing",
          "dynamic": "static + dynamic (shipped defaults)", "hard": "static + dynamic + hard regions",
          "soft": "static + dynamic + soft regions (0.5)",
          "isolated": "static + dynamic + isolate", "isolated_cached": "isolate + exact cache",
          "frozen": "off + core's Flux KV Cache"}
PAIRS = (("static", "off"), ("dynamic", "off"), ("dynamic", "static"), ("hard", "dynamic"),
         ("soft", "dynamic"), ("hard", "off"), ("soft", "off"),
         ("isolated", "off"), ("isolated", "frozen"), ("isolated", "dynamic"), ("frozen", "off"),
         ("isolated_cached", "isolated"))  # only the pairs whose conditions the records hold


def _interval(*values, clusters, ratio=False, seed=0) -> dict:
    """The clustered interval, rounded; an undefined value (a ratio over T = 0) is None."""
    r = clustered_bootstrap(*values, clusters=clusters, ratio=ratio, seed=seed)
    return {k: (round(v, 4) if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in r.items()}


def rows_of(cases: list[dict], data: dict, conditions: list[str], seed: int = 0) -> list[dict]:
    """``report.table_rows`` (Wilson intervals) plus intervals clustered by identity."""
    by_id = {c["id"]: c for c in cases}
    rows = table_rows(cases, data, conditions)
    for row in rows:
        ids = [c["id"] for c in cases if c["n"] == row["n"] and (row["condition"], c["id"]) in data]
        sel, clusters = [data[(row["condition"], i)] for i in ids], [by_id[i]["subjects"] for i in ids]
        row["clustered"] = {
            "subject_right": _interval([np.mean(m["right"]) for m in sel], clusters=clusters, seed=seed),
            "all_right": _interval([float(m["all_right"]) for m in sel], clusters=clusters, seed=seed),
            "entangled": _interval([np.mean(m["entangled"]) for m in sel], clusters=clusters, seed=seed)}
        if "T" in sel[0]:
            row["clustered"]["L_over_T"] = _interval([m["L"] for m in sel], [m["T"] for m in sel],
                                                     clusters=clusters, ratio=True, seed=seed)
    return rows


def comparisons(cases: list[dict], data: dict, seed: int = 0) -> list[dict]:
    """``report.comparisons`` over ``PAIRS`` with intervals clustered by identity, plus Holm's
    adjustment over the table's McNemar tests."""
    by_id = {c["id"]: c for c in cases}

    def interval(ids, *values, ratio=False):
        return _interval(*values, clusters=[by_id[i]["subjects"] for i in ids], ratio=ratio, seed=seed)

    present = {cond for cond, _ in data}
    pairs = tuple(p for p in PAIRS if set(p) <= present)
    out = report_comparisons(cases, data, seed, pairs, interval)
    tests = [(row, key) for row in out for key in ("mcnemar_all_right", "mcnemar_any_entangled")]
    for (row, key), p in zip(tests, holm([row[key]["p"] for row, key in tests]) if tests else []):
        row[key]["p_holm"] = p
    return out


def _ci(r: dict, sign: str = "", digits: int = 2) -> str:
    """ "0.50 [0.40, 0.60]"; "—" for an undefined value or interval."""
    if r is None or any(r[k] is None for k in ("estimate", "lo", "hi")):
        return "—"
    return f"{r['estimate']:{sign}.{digits}f} [{r['lo']:{sign}.{digits}f}, {r['hi']:{sign}.{digits}f}]"


def _diff(r: dict | None) -> str:
    return _ci(r, "+", 3)


def _num(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def render(rows: list[dict], comps: list[dict]) -> str:
    lines = ["| condition | n | cases | subject right | all right | entangled | leaked cells | missing | extra "
             "| duplicated | T | L | L/T |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["clustered"]
        lt = _ci(c["L_over_T"]) if "L_over_T" in c else _num(r.get("L_over_T"))
        lines.append(f"| {LABELS[r['condition']]} | {r['n']} | {r['cases']} | {_ci(c['subject_right'])} | "
                     f"{_ci(c['all_right'])} | {_ci(c['entangled'])} | {r['leaked']:.3f} | {r['missing']:.2f} | "
                     f"{r['extra']:.2f} | {r['duplicated']:.2f} | {_num(r.get('T'))} | {_num(r.get('L'))} | {lt} |")
    lines += ["", "| n | pair | subject right | entangled | leaked cells | L/T | McNemar all right (x only / "
              "y only, p, Holm p) | McNemar any entangled |", "|---|---|---|---|---|---|---|---|"]
    for c in comps:
        mc = {k: f"{c[k]['x_only']} / {c[k]['y_only']}, p = {c[k]['p']:.3g}, {c[k]['p_holm']:.3g}"
              for k in ("mcnemar_all_right", "mcnemar_any_entangled")}
        lines.append(f"| {c['n']} | {c['pair']} | {_diff(c['right'])} | {_diff(c['entangled'])} | "
                     f"{_diff(c['leaked'])} | {_diff(c.get('L_over_T'))} | {mc['mcnemar_all_right']} | "
                     f"{mc['mcnemar_any_entangled']} |")
    return "\n".join(lines) + "\n"


def write_ref_report(out, cases: list[dict], records: list[dict], seed: int = 0) -> str:
    """table.md and summary.json in ``out``; returns the table."""
    from .common import write_json

    conditions = [c for c in LABELS if any(r["condition"] == c for r in records)]
    data = per_case(cases, records)
    rows, comps = rows_of(cases, data, conditions, seed), comparisons(cases, data, seed)
    text = render(rows, comps)
    (out / "table.md").write_text(text)
    write_json({"rows": rows, "comparisons": comps, "intervals": "bootstrap clustered by identity, 4,000 "
                "resamples", "seconds": round(sum(r.get("seconds", 0) for r in records), 1)}, out / "summary.json")
    return text
