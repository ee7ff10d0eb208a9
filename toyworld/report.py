"""The evaluation table: rates per (condition, subject count) from the per-image records.

Primary columns come straight from ``toyworld.score`` (exact detector, unchanged): all present,
exact, entangled (keyed on shape), collapsed, subjects present, extra detections.

Supplementary, shape-free columns (computed here from the same detections, because the base
model's weakest attribute is the shape, see docs/TOY_WORLD.md): every case has pairwise different
colours, so a colour names its subject.
- ``cp_present``: fraction of subjects with an unused detection of their colour and pattern
  (shape ignored);
- ``pattern_leak``: images where a detection in subject i's colour carries another subject's
  pattern instead of i's own (colour-pattern binding error, the mirror of ``entangled``).
"""

from __future__ import annotations

LABELS = {"text": "text only (no subjects)", "a": "(a) no routing", "b": "(b) static routing",
          "c": "(c) static + dynamic routing"}


def _wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return (round(centre - half, 3), round(centre + half, 3))


def _attrs(item: str) -> tuple[str, str, str]:
    colour, pattern, shape = item.split()
    return colour, pattern, shape


def binding(record: dict) -> tuple[int, bool]:
    """(subjects with a colour+pattern match, pattern leaked) of one image record."""
    expected = [_attrs(s) for s in record["subjects"]]
    found = [_attrs(d) for d in record["detected"]]
    used, matched = set(), 0
    for colour, pattern, _ in expected:
        hit = next((j for j, d in enumerate(found) if j not in used and d[:2] == (colour, pattern)), None)
        if hit is not None:
            used.add(hit)
            matched += 1
    leak = False
    for i, (colour, pattern, _) in enumerate(expected):
        others = {e[1] for k, e in enumerate(expected) if k != i}
        leak |= any(d[0] == colour and d[1] != pattern and d[1] in others for d in found)
    return matched, leak


def table_rows(records: list[dict], conditions: list[str]) -> list[dict]:
    rows = []
    for cond in conditions:
        for n in sorted({r["n"] for r in records}):
            sel = [r for r in records if r["condition"] == cond and r["n"] == n]
            if not sel:
                continue
            row = {"condition": cond, "n": n, "images": len(sel)}
            for key in ("all_present", "exact", "entangled", "collapsed"):
                k = sum(bool(r[key]) for r in sel)
                row[key], row[key + "_ci95"] = round(k / len(sel), 3), _wilson(k, len(sel))
            subjects = sum(len(r["present"]) for r in sel)
            row["subjects_present"] = round(sum(sum(r["present"]) for r in sel) / subjects, 3)
            row["extra"] = round(sum(r["extra"] for r in sel) / len(sel), 2)
            bind = [binding(r) for r in sel]
            row["cp_present"] = round(sum(b[0] for b in bind) / subjects, 3)
            leaks = sum(b[1] for b in bind)
            row["pattern_leak"], row["pattern_leak_ci95"] = round(leaks / len(sel), 3), _wilson(leaks, len(sel))
            row["seconds_per_image"] = round(sum(r["seconds"] for r in sel) / len(sel), 2)
            rows.append(row)
    return rows


def render_table(rows: list[dict]) -> str:
    head = ("| condition | subjects | images | all present | exact | entangled | collapsed | subjects present "
            "| extra / image | colour+pattern present | pattern leak |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {LABELS[r['condition']]} | {r['n']} | {r['images']} | {r['all_present']:.2f} | {r['exact']:.2f} | "
        f"{r['entangled']:.2f} | {r['collapsed']:.2f} | {r['subjects_present']:.2f} | {r['extra']:.2f} | "
        f"{r['cp_present']:.2f} | {r['pattern_leak']:.2f} |\n"
        for r in rows)
    return head + body
