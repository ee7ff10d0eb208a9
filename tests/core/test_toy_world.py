"""Toy world "slot blocks": identities, held-out split, deterministic rendering, colour-free words,
and the LoRA's training data read back through the pack's own reader."""

import random

import numpy as np
import pytest

from toyworld import export
from toyworld.errors import ToyWorldError
from toyworld.textenc import ToyTextEncoder
from toyworld.world import (
    ALL_IDENTITIES,
    BACKGROUNDS,
    BLOCK,
    COLOURS,
    DIPTYCH_TEMPLATE,
    PATTERNS,
    SLOTS,
    Identity,
    Placed,
    World,
    render,
    render_cells,
    scene_caption,
    vocabulary,
)


def test_identities_are_two_colours_in_canonical_order_and_a_pattern():
    assert len(ALL_IDENTITIES) == 45 * 4 == len(set(ALL_IDENTITIES))
    ident = Identity.of("blue", "red", "striped")
    assert (ident.first, ident.second) == ("red", "blue") and ident.name == "red and blue striped block"
    assert Identity.parse(ident.name) == ident and ident.item == "striped block"
    with pytest.raises(ToyWorldError, match="order"):
        Identity("blue", "red", "striped")
    with pytest.raises(ToyWorldError, match="expected one of"):
        Identity.of("red", "teal", "plain")


def test_heldout_split_keeps_every_colour_pair_and_pattern_in_training():
    world = World(0)
    assert len(world.heldout) == 36 and len(world.train) == 144
    assert {p: sum(i.pattern == p for i in world.heldout) for p in PATTERNS} == {p: 9 for p in PATTERNS}
    train_pairs = {i.colours for i in world.train}
    assert all(i.colours in train_pairs for i in world.heldout)
    assert World(0).heldout == world.heldout and World(1).heldout != world.heldout


def test_blocks_fill_their_slot_cells_and_the_cross_stays_background():
    placed = [Placed(Identity.of("red", "blue", p), s) for p, s in zip(PATTERNS, SLOTS)]
    cells = render_cells(placed, "grey")
    for p in placed:
        r, c = SLOTS[p.slot]
        assert (cells[r:r + BLOCK, c:c + BLOCK] == p.identity.cells()).all()
    assert set(cells[6:10].ravel()) == {"grey"} and set(cells[:, 6:10].ravel()) == {"grey"}
    assert (cells[0, :BLOCK] == ["blue", "blue", "blue", "blue", "blue", "blue"]).all()  # plain: frame
    assert (cells[1:5, 1:5] == "red").all()
    image = np.asarray(render(placed, "grey"))
    assert image.shape == (128, 128, 3)
    assert np.array_equal(image, np.asarray(render(placed, "grey")))  # deterministic
    flat = image.reshape(16, 8, 16, 8, 3)
    assert (flat == flat[:, :1, :, :1]).all()  # every 8 px cell is one colour
    with pytest.raises(ToyWorldError, match="one block per slot"):
        render_cells([placed[0], Placed(placed[1].identity, placed[0].slot)], "grey")


def test_words_name_colours_only_when_asked():
    world, rnd = World(0), random.Random(0)
    for n in (1, 2, 3, 4):
        placed, background = world.sample_scene(rnd, n)
        without, with_colours = (scene_caption(placed, background, c).split() for c in (False, True))
        assert not set(COLOURS) & set(w.strip(",.") for w in without)
        assert all(c in " ".join(with_colours) for p in placed for c in p.identity.colours)
    caption = scene_caption([Placed(Identity.of("red", "blue", "plain"), "bottom right"),
                             Placed(Identity.of("green", "black", "striped"), "top left")], "sand", False)
    assert caption == "a striped block in the top left and a plain block in the bottom right on sand."
    assert all(not set(COLOURS) & set(i.item.split()) for i in ALL_IDENTITIES)


def test_every_prompt_fits_the_text_encoder_and_uses_only_known_words():
    enc = ToyTextEncoder()
    placed = [Placed(Identity.of("orange", "purple", "checkered"), s) for s in SLOTS]
    longest = scene_caption(placed, "slate", True)
    dip = DIPTYCH_TEMPLATE.format(desc_left=scene_caption(placed[:1], "slate", True),
                                  desc_right=scene_caption(placed[3:], "sand", True))
    for text in (longest, dip, *(scene_caption([p], b, False) for p in placed for b in BACKGROUNDS)):
        ids = enc.tokenize(text)
        assert enc.unk_id not in ids and len(ids) < enc.max_length, text
    assert set(vocabulary()) >= {"top", "bottom", "left", "right", *COLOURS, *PATTERNS, *BACKGROUNDS}


def test_pairs_export_reads_back_through_the_pack_reader_pixel_exact(tmp_path):
    from musar.data import open_dataset

    world = World(0)
    path = export.export_pairs(world, tmp_path, 12, seed=3)
    again = export.export_pairs(world, tmp_path / "again", 12, seed=3)
    assert path.read_bytes() == again.read_bytes()
    data = open_dataset(str(path), "auto", min_quality=5)
    assert len(data) == 12
    subjects = export.subject_stream(world, "train", 12, 3)
    for i in range(12):
        pair = data[i]
        image, cap0, cap1 = export.make_pair(subjects[i], export.row_seed(3, i))
        left, right = (np.asarray(p) for p in pair.panels)
        assert np.array_equal(left, np.asarray(image)[8:136, 8:136])
        assert np.array_equal(right, np.asarray(image)[8:136, 144:272])
        assert pair.item == subjects[i].item and (pair.descriptions[0], pair.descriptions[1]) == (cap0, cap1)
        assert not set(COLOURS) & set(" ".join([pair.item, cap0, cap1]).replace(".", " ").split())


def test_every_stage_finds_the_same_folders_for_a_base_size():
    """`make toy-base/toy-lora/eval-toy TOY_SIZE=medium` chain through one folder, without flags;
    none of them is the committed weights folder."""
    from toyworld import common, train_base, train_lora
    from toyworld import eval as toy_eval

    assert tuple(train_base.SIZES) == common.BASE_SIZES
    for size in common.BASE_SIZES:
        base = train_base.parse(["--size", size])
        lora = train_lora.parse(["--size", size, "--attention", "dense"])
        ev = toy_eval.parse(["--size", size])
        assert lora.weights == lora.out == ev.weights == base.out
        assert base.work.parent == lora.work.parent == ev.out.parent
        assert len({base.work, lora.work, ev.out}) == 3
        parts = [toy_eval.parse(["--size", size, "--part", part]) for part in toy_eval.PARTS]
        assert toy_eval.parse(["--size", size, "--merge"]).merge == [p.out for p in parts]
        assert {p.out.parent for p in parts} == {ev.out.parent} and len({p.out for p in parts}) == len(parts)
        conditions = [c for p in parts for c in p.conditions.split(",")]  # disjoint, together every condition
        assert sorted(conditions) == sorted(toy_eval.CONDITIONS)
    assert train_base.parse([]).out == common.run_folders(common.DEFAULT_SIZE)[0]
    for size in common.BASE_SIZES:  # no training writes into the committed folder
        assert all(common.WEIGHTS_DIR not in (folder, *folder.parents) for folder in common.run_folders(size))


def test_route_study_reads_each_slot_as_its_three_by_three_tokens():
    import numpy as np

    from toyworld import route_study, world

    tokens = {slot: route_study.slot_tokens(world, slot) for slot in world.SLOTS}
    assert all(len(t) == 9 for t in tokens.values()) and len(set(np.concatenate(list(tokens.values())))) == 36
    for slot, (row, col) in world.SLOTS.items():  # a token is 16 px = 2 cells; the slot's first cell
        first = tokens[slot].min()
        assert (first // 8 * 2, first % 8 * 2) == (row, col)
    route = np.full(64, -1)
    route[tokens["top left"]] = 0
    route[tokens["top left"][:3]] = 1  # a third of subject 0's block routed to subject 1
    shares = route_study.route_shares(world, route, {"slots": ["top left", "bottom right"]})
    assert shares == [{"own": 0.667, "other": 0.333, "none": 0.0}, {"own": 0.0, "other": 0.0, "none": 1.0}]


def test_committed_weights_fit_the_budget_and_are_what_commit_weights_wrote():
    """toyworld/weights holds at most 20 MB of weights; every model commit-weights converted is the
    file its manifest names (digest), stored in fp16, and the base it came from passed its gate."""
    import json

    import torch
    from safetensors import safe_open

    from toyworld import commit_weights, common
    from toyworld.eval import model_digests

    folder = common.WEIGHTS_DIR
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) <= commit_weights.WEIGHTS_BUDGET
    manifest = json.loads((folder / "weights.json").read_text())
    assert set(manifest["files"]) == {"toy_flux.safetensors", "toy_lora_static.safetensors", "toy_lora_dense.safetensors"}
    for name, info in manifest["files"].items():
        assert model_digests([folder / name])[name] == info["digest"]
        with safe_open(str(folder / name), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert json.loads((folder / "base_gate.json").read_text())["passed"]
