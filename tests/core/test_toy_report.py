"""The evaluation's table, paired comparisons and success criteria computed from records
(toyworld.report), on synthetic records whose answers are known."""

import random

import numpy as np

from toyworld.eval import draw_subjects, encode_cells
from toyworld.report import comparisons, criteria, duplicate_places, per_case, render, table_rows
from toyworld.world import NAMES, SLOTS, Identity, Placed, World, cell_indices


def _cases(n: int, count: int) -> list[dict]:
    world, out = World(0), []
    for k in range(count):
        rnd = random.Random(k)
        subjects, b, new = draw_subjects(world.heldout, n, rnd)
        out.append({"id": f"n{n}-{k:03d}", "n": n, "subjects": [s.name for s in subjects],
                    "slots": rnd.sample(list(SLOTS), n), "background": "grey", "b": b, "new": new.name})
    return out


def _cells(case: dict, swap: bool, leak: bool) -> np.ndarray:
    placed = [Placed(Identity.parse(s), slot) for s, slot in zip(case["subjects"], case["slots"])]
    if swap:
        placed[case["b"]] = Placed(Identity.parse(case["new"]), placed[case["b"]].slot)
    cells = cell_indices(placed, case["background"]).astype(np.int64)
    if leak:  # subject 0's slot gets 9 cells of subject 1's (or, after the swap, B''s) first colour
        r, c = SLOTS[placed[0].slot]
        cells[r:r + 3, c:c + 3] = NAMES.index(placed[1].identity.first)
    return cells


def test_known_records_give_the_known_table_and_verdicts():
    cases = _cases(3, 40)
    records = []
    for case in cases:
        for cond, leak in (("a", True), ("c", False)):
            for variant in ("main", "swap"):
                cells = _cells(case, variant == "swap", leak)
                records.append({"id": case["id"], "condition": cond, "variant": variant, "cells": encode_cells(cells)})
        blank = np.full((16, 16), NAMES.index("grey"))
        records.append({"id": case["id"], "condition": "text", "variant": "main", "cells": encode_cells(blank)})
    data = per_case(cases, records)
    rows = table_rows(cases, data, ["text", "a", "c"])
    by = {r["condition"]: r for r in rows}
    assert by["c"]["subject_right"]["rate"] == 1.0 and by["c"]["entangled"]["rate"] == 0.0
    assert by["a"]["entangled"]["rate"] == round(1 / 3, 3) and by["a"]["leaked"] == round(9 / 108, 3)
    assert by["a"]["subject_right"]["rate"] == round(2 / 3, 3)  # 27 of 36 cells: not right
    assert by["text"]["missing"] == 3.0 and by["c"]["T"] == 1.0 and by["c"]["L"] == 0.0
    comps = {c["pair"]: c for c in comparisons(cases, data)}
    assert comps["c - a"]["entangled"]["diff"] < 0 and comps["c - a"]["entangled"]["hi"] < 0
    assert comps["c - a"]["mcnemar_any_entangled"] == {"x_only": 0, "y_only": 40, "p": 2 * 0.5 ** 40}
    verdicts = {c["criterion"]: c["result"] for c in criteria(cases, data, rows, list(comps.values()))}
    assert verdicts["routing n = 3: entangled(c) <= entangled(a) - 0.10, paired interval of (c - a) below 0"] is True
    assert verdicts["routing n = 3: subject right (c) >= (a) - 0.05"] is True
    assert verdicts["transfer: text-only (no colours) subject right <= 0.05 at every n"] is True
    assert "| (c) static + dynamic routing | 3 | 40 | 1.00" in render(rows, list(comps.values()), [])


def test_weak_transfer_makes_the_routing_verdicts_inconclusive():
    cases = _cases(3, 10)
    records = [{"id": c["id"], "condition": cond, "variant": v,
                "cells": encode_cells(_cells(c, False, cond == "a"))}  # no swap effect: T = 0
               for c in cases for cond in ("a", "c") for v in ("main", "swap")]
    data = per_case(cases, records)
    rows = table_rows(cases, data, ["a", "c"])
    verdicts = [c["result"] for c in criteria(cases, data, rows, comparisons(cases, data))
                if c["criterion"].startswith("routing")]
    assert verdicts and set(verdicts) == {"inconclusive"}


def test_duplicate_places_count_copies_at_the_reference_slot_against_chance():
    case = _cases(2, 1)[0]
    own, other = case["slots"]
    free = [s for s in SLOTS if s not in case["slots"]]
    case["refs"] = [[free[0], "grey"], [own, "grey"]]  # subject 0's reference shows it in a free slot
    placed = [Placed(Identity.parse(s), slot) for s, slot in zip(case["subjects"], case["slots"])]
    copy = Placed(placed[0].identity, free[0])  # subject 0 drawn again where its reference had it
    cells = cell_indices([*placed, copy], case["background"]).astype(np.int64)
    records = [{"id": case["id"], "condition": "b", "variant": "main", "cells": encode_cells(cells)}]
    (row,) = duplicate_places([case], per_case([case], records))
    assert (row["duplicates"], row["at_reference"], row["share"]) == (1, 1, 1.0)
    assert row["chance"] == round(1 / 3, 3)  # the copy could have been in any of 3 other slots
    assert "| (b) static routing | 2 | 1 | 1 | 1.00 | 0.33 |" in render([], [], [], [row])


def test_evaluation_records_refuse_to_mix_model_files(tmp_path):
    import pytest

    from toyworld.eval import check_models, model_digests

    base, lora = tmp_path / "toy_flux.safetensors", tmp_path / "toy_lora_static.safetensors"
    base.write_bytes(b"base one")
    lora.write_bytes(b"lora")
    out = tmp_path / "eval"
    out.mkdir()
    check_models(out, model_digests([base, lora]), resuming=False)
    check_models(out, model_digests([base, lora]), resuming=True)  # same files: resumes
    base.write_bytes(b"base two")
    with pytest.raises(SystemExit, match="toy_flux.safetensors changed"):
        check_models(out, model_digests([base]), resuming=True)
    check_models(out, model_digests([base]), resuming=False)  # no records yet: starts again
