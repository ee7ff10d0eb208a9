"""The multi-reference toy base's data (toyworld.multiref): prompts, slots, the held-out split,
reference geometry and position ids against ComfyUI's "index" formula; the identity-clustered
bootstrap and Holm's correction (toyworld.stats); the Route References report on known records."""

import random

import numpy as np
import pytest
import torch

from musar.layout import grid_ids as musar_grid_ids
from musar.layout import pack_latent
from toyworld import multiref as mr
from toyworld.eval import encode_cells
from toyworld.refgate import ref_graph
from toyworld.refreport import comparisons, render, rows_of
from toyworld.report import per_case
from toyworld.stats import clustered_bootstrap, holm, paired_bootstrap
from toyworld.textenc import ToyTextEncoder
from toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    NAMES,
    PATTERNS,
    SLOTS,
    Identity,
    Placed,
    World,
    cell_indices,
    paint,
    render_cells,
    scene_caption,
)

WORLD = World(0)


def test_prompt_names_images_in_index_order_with_slots_and_background_only():
    assert mr.ref_prompt(["top right"], "grey") == "image 1 at top right on grey."
    assert mr.ref_prompt(["top right", "bottom left", "top left"], "sand") == \
        "image 1 at top right, image 2 at bottom left and image 3 at top left on sand."
    for bad in ([], ["top left", "top left"], ["middle"], list(SLOTS) + ["top left"]):
        with pytest.raises(ValueError):
            mr.ref_prompt(bad, "grey")
    forbidden = set(COLOURS) | set(PATTERNS)
    for step in range(20):
        for prompt in mr.step_batch(WORLD, 0, step, 16).prompts:
            assert not forbidden & set(prompt.replace(",", " ").replace(".", " ").split())


def test_ref_vocabulary_is_complete_and_leaves_every_existing_encoding_unchanged():
    plain, ref = ToyTextEncoder(seed=0), ToyTextEncoder(seed=0, extra_words=mr.REF_WORDS)
    assert ref.vocab[:len(plain.vocab)] == plain.vocab and set(ref.vocab[len(plain.vocab):]) == set(mr.REF_WORDS)
    assert torch.equal(ref.embeddings[:len(plain.vocab)], plain.embeddings)
    caption = scene_caption([Placed(Identity.parse("red and blue striped block"), "top left")], "grey", True)
    for a, b in zip(plain.encode(caption), ref.encode(caption)):
        assert torch.equal(a, b)
    prompts = [p for s in range(10) for p in mr.step_batch(WORLD, 0, s, 16).prompts if p]
    assert all(ref.unk_id not in ref.tokenize(p) for p in prompts)
    assert any(plain.unk_id in plain.tokenize(p) for p in prompts)  # the plain encoder lacks the words
    longest = mr.ref_prompt(list(SLOTS), "slate")
    assert len(ref.tokenize(longest)) == 26 < ref.max_length


def test_training_batches_are_seeded_scenes_of_training_identities_in_distinct_slots():
    a, b = mr.step_batch(WORLD, 0, 3, 32), mr.step_batch(WORLD, 0, 3, 32)
    assert np.array_equal(a.cells, b.cells) and a.prompts == b.prompts and np.array_equal(a.refs, b.refs)
    assert not np.array_equal(a.cells, mr.step_batch(WORLD, 0, 4, 32).cells)
    held = {i.name for i in WORLD.heldout}
    seen, counts, dropped = set(), [], 0
    for step in range(40):
        rnd = random.Random(f"refbase/0/{step}")
        batch = mr.step_batch(WORLD, 0, step, 16)
        for i in range(16):
            scene, drop = mr.train_scene(WORLD, rnd), rnd.random() < mr.DROPOUT  # the batch's own draws
            assert np.array_equal(batch.cells[i], scene.cells())
            assert len({p.slot for p in scene.placed}) == len(scene.placed)
            seen |= {p.identity.name for p in scene.placed}
            dropped += drop
            assert (batch.prompts[i] == "") == drop and batch.counts[i] == (0 if drop else len(scene.placed))
            for j, ref in enumerate(scene.ref_cells()[:batch.counts[i]]):
                assert np.array_equal(batch.refs[i, j], ref)
            counts.append(len(scene.placed))
    assert not seen & held and len(seen) > 100
    assert set(counts) == set(mr.SUBJECT_COUNTS) and min(np.bincount(counts)[1:]) > 100
    assert 20 < dropped < 130  # about 10 % of 640


def test_reference_picture_is_the_block_alone_three_by_three_tokens():
    ident = Identity.parse("green and black checkered block")
    pic = np.asarray(mr.reference_picture(ident))
    assert pic.shape == (mr.REF_PX, mr.REF_PX, 3) == (48, 48, 3)
    canvas = render_cells([Placed(ident, "bottom right")], "grey")
    assert np.array_equal(pic, paint(canvas[10:16, 10:16]))
    cells = mr.reference_cells(ident)
    assert [NAMES[c] for c in cells.ravel()] == list(ident.cells().ravel())
    tokens, grid = pack_latent(torch.zeros(1, 16, *cells.shape))
    assert grid == mr.REF_GRID == (3, 3) and tokens.shape[1] == mr.REF_TOKENS == 9


def _comfy_index_ids(ref_shapes, patch=2, scale=1.0):
    """ComfyUI 0.3.75 Flux._forward / process_img for ref_latents_method "index", restated."""
    out, index = [], 0
    for h, w in ref_shapes:
        index += scale
        h_len, w_len = (h + patch // 2) // patch, (w + patch // 2) // patch
        ids = torch.zeros(h_len, w_len, 3)
        ids[:, :, 0] = ids[:, :, 1] + index
        ids[:, :, 1] = ids[:, :, 1] + torch.linspace(0, h_len - 1, steps=h_len).unsqueeze(1)
        ids[:, :, 2] = ids[:, :, 2] + torch.linspace(0, w_len - 1, steps=w_len).unsqueeze(0)
        out.append(ids.reshape(-1, 3))
    return torch.cat(out)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_reference_position_ids_are_comfyuis_index_method(count):
    assert torch.equal(mr.reference_ids(count), _comfy_index_ids([(6, 6)] * count))
    assert torch.equal(mr.reference_ids(count)[:9], musar_grid_ids(3, 3, index=1.0))
    assert torch.equal(mr.canvas_ids(), musar_grid_ids(8, 8))
    assert not torch.equal(mr.reference_ids(count, scale=10.0), _comfy_index_ids([(6, 6)] * count))


def test_gate_and_evaluation_cases_are_held_out_deterministic_and_seed_disjoint():
    held = {i.name for i in WORLD.heldout}
    cases = mr.eval_cases(WORLD, [(2, 100), (3, 200), (4, 200)])
    gate = mr.gate_cases(WORLD)
    assert cases == mr.eval_cases(WORLD, [(2, 100), (3, 200), (4, 200)]) and gate == mr.gate_cases(WORLD)
    for c in cases:
        ids = [Identity.parse(s) for s in c["subjects"]]
        assert set(c["subjects"]) <= held and c["new"] in held and len(set(c["slots"])) == c["n"]
        new = Identity.parse(c["new"])
        assert new.pattern == ids[c["b"]].pattern and not set(new.colours) & {x for i in ids for x in i.colours}
        assert mr.case_scene(c, swap=True).prompt == mr.case_scene(c).prompt
    assert [c["kind"] for c in gate].count("single") == mr.GATE_SINGLE and len(gate) == 96
    assert all(set(c["subjects"]) <= held and len(set(c["slots"])) == c["n"] for c in gate)
    assert {c["n"] for c in gate if c["kind"] == "four"} == {4}
    assert [c["seed"] for c in gate] == list(range(1_000_000, 1_000_096))
    assert not {c["seed"] for c in cases} & {c["seed"] for c in gate}
    assert len({c["seed"] for c in cases}) == len(cases)


def test_clustered_bootstrap_resamples_identities_not_rows():
    rng = np.random.default_rng(0)
    level = rng.normal(size=12)  # 12 clusters, 10 identical rows each
    x = np.repeat(level, 10)
    clusters = np.repeat(np.arange(12), 10).tolist()
    clustered = clustered_bootstrap(x, clusters=clusters)
    collapsed = clustered_bootstrap(level, clusters=list(range(12)))
    naive = clustered_bootstrap(x, clusters=list(range(120)))
    assert clustered["estimate"] == pytest.approx(level.mean()) and clustered["clusters"] == 12
    width = clustered["hi"] - clustered["lo"]
    assert width == pytest.approx(collapsed["hi"] - collapsed["lo"], rel=0.15)
    assert width > 2.5 * (naive["hi"] - naive["lo"])  # rows of one identity are not independent
    diff = clustered_bootstrap(x + 0.5, x, clusters=clusters)
    assert diff["p"] == pytest.approx(1 / 4000)  # every resample shows the shift: the floor
    none = clustered_bootstrap(x, x[::-1].copy(), clusters=clusters)
    assert 0.05 < none["p"] <= 1.0  # no shift at all: far from significant
    assert diff["diff"] == pytest.approx(0.5) and diff["lo"] == pytest.approx(0.5) == pytest.approx(diff["hi"])
    ratio = clustered_bootstrap([1, 1, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1], ratio=True,
                                clusters=[("a", "b"), ("b",), ("c",)])
    assert ratio["diff"] == pytest.approx(4 / 6) and ratio["n"] == 3 and ratio["clusters"] == 3
    plain = paired_bootstrap(x + 0.5, x)  # the existing helper is unchanged
    assert plain["diff"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        clustered_bootstrap(x, clusters=clusters[:-1])


def test_holm_adjusts_a_family_of_p_values():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.9, 0.8]) == [1.0, 1.0] and holm([]) == []
    assert holm([0.2, 0.3, 0.4]) == pytest.approx([0.6, 0.6, 0.6])
    assert holm([0.04, 0.01]) == pytest.approx([0.04, 0.02])


def _records(cases, cond, leak):
    out = []
    for case in cases:
        for variant in ("main", "swap"):
            placed = list(mr.case_scene(case, swap=variant == "swap").placed)
            cells = cell_indices(placed, case["background"]).astype(np.int64)
            if leak:  # image 1's slot shows 9 cells of image 2's first colour
                r, c = SLOTS[placed[0].slot]
                cells[r:r + 3, c:c + 3] = NAMES.index(placed[1].identity.first)
            out.append({"id": case["id"], "condition": cond, "variant": variant, "cells": encode_cells(cells)})
    return out


def test_route_references_report_on_known_records():
    cases = mr.eval_cases(WORLD, [(3, 30)])
    records = _records(cases, "off", True) + _records(cases, "static", False)
    data = per_case(cases, records)
    rows = {r["condition"]: r for r in rows_of(cases, data, ["off", "static"])}
    assert rows["static"]["clustered"]["subject_right"]["estimate"] == 1.0
    assert rows["off"]["clustered"]["entangled"]["estimate"] == pytest.approx(1 / 3, abs=1e-4)
    assert rows["static"]["T"] == 1.0 and rows["static"]["L"] == 0.0
    (comp,) = comparisons(cases, data)
    assert comp["pair"] == "static - off" and comp["entangled"]["hi"] < 0 < comp["right"]["lo"]
    assert comp["mcnemar_any_entangled"]["y_only"] == 30 and comp["mcnemar_any_entangled"]["p_holm"] == \
        pytest.approx(min(1.0, 2 * comp["mcnemar_any_entangled"]["p"]))
    assert "| static routing | 3 | 30 | 1.00 [1.00, 1.00]" in render(list(rows.values()), [comp])
    assert all(b in BACKGROUNDS for b in {c["background"] for c in cases})


def test_graph_regions_are_the_prompted_slots_and_the_method_is_index():
    g = ref_graph("image 1 at bottom right on grey.", ["a.png"], seed=1, routing={},
               regions=(["bottom right"], "hard", 0.5))
    assert (g["110"]["inputs"]["x"], g["110"]["inputs"]["y"]) == (80, 80) and g["101"]["inputs"]["width"] == 48
    assert g["112"]["inputs"]["reference"] == 1 and g["10"]["inputs"]["labels"] == ["112", 0]
    assert g["19"]["inputs"]["reference_latents_method"] == "index" and g["11"]["inputs"]["model"] == ["10", 0]
    assert g["11"]["inputs"]["negative"] == ["8", 0] and g["8"]["inputs"]["text"] == ""


def test_four_references_with_regions_keep_every_reference_node():
    """Four references reach node id 31; the region nodes must not take those ids (they did once:
    the n = 4 region cases failed ComfyUI's validation)."""
    slots = ["top left", "top right", "bottom left", "bottom right"]
    plain = ref_graph("four", [f"{j}.png" for j in range(4)], seed=1)
    g = ref_graph("four", [f"{j}.png" for j in range(4)], seed=1, routing={}, regions=(slots, "hard", 0.5))
    assert all(g[k] == v for k, v in plain.items() if k not in ("11",))  # references untouched
    assert [g[k]["class_type"] for k in ("29", "30", "31")] == ["LoadImage", "VAEEncode", "ReferenceLatent"]
    assert g["19"]["inputs"]["conditioning"] == ["31", 0]


def test_the_cache_study_graphs_and_its_defaults():
    from toyworld import refeval

    frozen = ref_graph("image 1 at top left on grey.", ["a.png"], seed=1, kv_cache=True)
    assert frozen["16"]["class_type"] == "FluxKVCache" and frozen["11"]["inputs"]["model"] == ["16", 0]
    assert frozen["19"]["inputs"]["reference_latents_method"] == "index"  # the conditioning keeps it
    isolated = ref_graph("image 1 at top left on grey.", ["a.png"], seed=1,
                         routing=refeval.CONDITIONS["isolated_cached"][0])
    assert isolated["10"]["inputs"]["isolate"] and isolated["10"]["inputs"]["condition_cache"]
    args = refeval.parse(["--study", "cache"])
    assert (args.conditions, args.counts, args.seed) == (
        "off,dynamic,isolated,isolated_cached,frozen", "2:100,3:100,4:100", 1)
    assert refeval.parse([]).conditions == "off,static,dynamic,hard,soft"  # §11 unchanged
