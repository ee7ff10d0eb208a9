"""Toy world: subjects, held-out split, deterministic rendering, captions and the parquet exports."""

import io
import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from toyworld import export
from toyworld.backgrounds import BACKGROUNDS, background_palette
from toyworld.components import dilate, erode
from toyworld.errors import ToyWorldError
from toyworld.world import (
    ALL_SUBJECTS,
    COLOURS,
    PATTERN_COLOUR,
    SIZE_RANGES,
    Subject,
    World,
    caption,
    multi_caption,
    vocabulary,
)

PANEL = 128


@pytest.fixture(scope="module")
def world():
    return World(seed=0, panel=PANEL)


def test_subject_phrase_item_and_parse_round_trip():
    s = Subject("star", "red", "striped")
    assert s.item == "red striped star" and s.phrase == "a red striped star"
    assert Subject.parse(s.phrase) == s == Subject.parse(s.item)
    assert len(ALL_SUBJECTS) == 6 * 6 * 3 == len(set(ALL_SUBJECTS))


def test_unknown_attribute_is_a_musar_error_listing_the_valid_values():
    with pytest.raises(ToyWorldError, match="'circle'"):
        Subject("hexagon", "red", "plain")
    with pytest.raises(ToyWorldError, match="colour"):
        Subject("star", "purple", "plain")
    with pytest.raises(ToyWorldError, match="multiple of 16"):
        World(panel=100)


def test_heldout_split_is_deterministic_and_every_attribute_pair_stays_in_training(world):
    held, train = set(world.heldout_subjects), set(world.train_subjects)
    assert held == set(World(seed=0).heldout_subjects)
    assert held != set(World(seed=1).heldout_subjects)
    assert not held & train and held | train == set(ALL_SUBJECTS)
    assert len(held) == round(0.2 * len(ALL_SUBJECTS))
    for a, b in (("shape", "colour"), ("shape", "pattern"), ("colour", "pattern")):
        pairs = {(getattr(s, a), getattr(s, b)) for s in ALL_SUBJECTS}
        assert pairs == {(getattr(s, a), getattr(s, b)) for s in train}, f"a ({a}, {b}) pair is only held out"
    for attr in ("shape", "colour", "pattern"):
        counts = [sum(getattr(s, attr) == v for s in held) for v in {getattr(s, attr) for s in ALL_SUBJECTS}]
        assert max(counts) - min(counts) <= 1


def test_same_spec_and_seed_render_identical_pixels_and_other_seeds_differ(world):
    subjects = [Subject("star", "red", "striped"), Subject("circle", "blue", "dotted")]
    a, ta = world.render_scene(subjects, "grass", None, rng_seed=7)
    b, tb = world.render_scene(subjects, "grass", None, rng_seed=7)
    c, _ = world.render_scene(subjects, "grass", None, rng_seed=8)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(ta.subjects, tb.subjects, strict=True))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert a.size == (PANEL, PANEL) and a.mode == "RGB"


def test_explicit_placements_reproduce_the_sampled_scene_and_keep_its_background(world):
    subjects = [Subject("heart", "green", "plain"), Subject("cross", "yellow", "striped")]
    img, truth = world.render_scene(subjects, "carpet", None, rng_seed=3)
    again, _ = world.render_scene(subjects, "carpet", [t.placement for t in truth.subjects], rng_seed=3)
    assert np.array_equal(np.asarray(img), np.asarray(again))
    swapped, _ = world.render_scene([Subject("heart", "blue", "plain"), subjects[1]], "carpet",
                                    [t.placement for t in truth.subjects], rng_seed=3)
    outside = ~dilate(truth.subjects[0].mask, 3)  # anti-aliased fringes (thin tips) reach past the mask
    assert np.array_equal(np.asarray(img)[outside], np.asarray(swapped)[outside])


def test_truth_masks_hold_the_subject_colour_and_scenes_do_not_overlap(world):
    for seed in range(24):
        n = 1 + seed % 4
        img, truth = world.sample_scene(seed, n, "all", background=world.backgrounds[seed % 6])
        px = np.asarray(img).astype(int)
        union = np.zeros((PANEL, PANEL), int)
        for t in truth.subjects:
            lo, hi = SIZE_RANGES[n]
            assert lo <= t.placement.size <= hi
            cols = px[erode(t.mask, 1)]  # inside: blends of the subject colour and white only
            a, u = np.asarray(COLOURS[t.subject.colour]), np.asarray(PATTERN_COLOUR) - COLOURS[t.subject.colour]
            along = np.clip((cols - a) @ u / (u @ u), 0, 1)
            off = np.abs(cols - a - along[:, None] * u).max(1)
            assert (off <= 2).mean() > 0.99, (t.subject, (off <= 2).mean())
            white = (along > 0.5).mean()
            assert (white > 0.03) == (t.subject.pattern != "plain"), (t.subject, white)
            x0, y0, x1, y1 = t.bbox
            assert t.mask[y0:y1, x0:x1].sum() == t.area > 0
            union += t.mask
        assert union.max() == 1


def test_background_palettes_stay_far_from_subject_and_pattern_colours():
    bg = background_palette() * 255
    fg = np.asarray([*COLOURS.values(), PATTERN_COLOUR], float)
    assert np.linalg.norm(bg[:, None] - fg[None], axis=-1).min() > 75
    for c in COLOURS.values():  # the blend line subject colour -> white passes far from every background
        t = np.linspace(0, 1, 101)[:, None]
        line = np.asarray(c) * (1 - t) + np.asarray(PATTERN_COLOUR) * t
        assert np.linalg.norm(bg[:, None] - line[None], axis=-1).min() > 40


def test_every_background_texture_only_uses_its_own_palette(world):
    for name in world.backgrounds:
        img, _ = world.render_scene([], name, [], rng_seed=5)
        px = np.asarray(img, float).reshape(-1, 3)
        pal = np.asarray(BACKGROUNDS[name].colours, float)
        lo, hi = pal.min(0) - 3, pal.max(0) + 3
        assert ((px >= lo) & (px <= hi)).all(), name


def test_captions_follow_the_musar_gen_template():
    a, b = Subject("star", "red", "striped"), Subject("circle", "blue", "plain")
    assert caption(a, "wooden floor") == "a red striped star on a wooden floor"
    assert multi_caption([a, b], "wooden floor") == (
        "An undivided, seamless, and harmonious picture with two objects. in the wooden floor scene, "
        "a red striped star and a blue plain circle are placed together.")
    c = Subject("heart", "green", "dotted")
    assert "with three objects. in the grass scene, a red striped star, a blue plain circle and a green " \
           "dotted heart are placed together." in multi_caption([a, b, c], "grass")
    assert "four objects" in multi_caption([a, b, c, Subject("cross", "cyan", "plain")], "sand")
    words = set(vocabulary())
    assert {"undivided", "striped", "tiles", "four", ","} <= words


def test_export_pairs_writes_the_subjects200k_layout(world, tmp_path):
    path = export.export_pairs(world, tmp_path, n_pairs=6, seed=1, split="heldout")
    table = pq.read_table(path)
    assert table.column_names == ["image", "collection", "quality_assessment", "description"]
    assert str(table.schema.field("image").type) == "struct<bytes: binary, path: string>"
    feats = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert feats["image"] == {"_type": "Image"}
    pad = export.PAD
    for row in table.to_pylist():
        assert row["collection"] == "toy_world"
        assert row["quality_assessment"] == {"compositeStructure": 5, "objectConsistency": 5, "imageQuality": 5}
        d = row["description"]
        subject = Subject.parse(d["item"])
        assert subject in world.heldout_subjects and d["category"] == subject.shape
        assert d["description_0"].startswith(subject.phrase + " on") and d["description_0"] != d["description_1"]
        img = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"))
        assert img.shape == (PANEL + 2 * pad, 2 * PANEL + 3 * pad, 3)
        border = np.ones(img.shape[:2], bool)
        border[pad:pad + PANEL, pad:pad + PANEL] = False
        border[pad:pad + PANEL, 2 * pad + PANEL:2 * pad + 2 * PANEL] = False
        assert (img[border] == 255).all()


def test_exports_are_deterministic_and_balanced(world, tmp_path):
    a = pq.read_table(export.export_pairs(world, tmp_path / "a", 4, seed=3)).to_pylist()
    b = pq.read_table(export.export_pairs(world, tmp_path / "b", 4, seed=3)).to_pylist()
    assert a == b
    t2i = pq.read_table(export.export_text_to_image(world, tmp_path, len(world.train_subjects), seed=2))
    rows = t2i.to_pylist()
    assert t2i.column_names == ["image", "caption", "item", "category", "background"]
    assert {Subject.parse(r["item"]) for r in rows} == set(world.train_subjects)  # one epoch: each once
    r = random.Random(0).choice(rows)
    assert r["caption"] == caption(Subject.parse(r["item"]), r["background"])
    assert export.decode_image(r["image"]).size == (PANEL, PANEL)


def test_the_real_dataset_reader_recovers_the_exported_panels_exactly(world, tmp_path):
    data = pytest.importorskip("musar.data")
    path = export.export_pairs(world, tmp_path, n_pairs=4, seed=4)
    ds = data.open_dataset(path)
    assert len(ds) == 4 and ds.report.summary().count("4 usable") == 1
    pad, p = export.PAD, PANEL
    for i, subject in enumerate(export.subject_stream(world, "train", 4, 4)):
        pair = ds.load(i)
        dip, cap0, cap1, _ = export.make_pair(world, subject, export.row_seed(4, i))
        assert pair.item == subject.item and pair.category == subject.shape and pair.descriptions == (cap0, cap1)
        dip = np.asarray(dip)
        assert np.array_equal(np.asarray(pair.panels[0]), dip[pad:pad + p, pad:pad + p])
        assert np.array_equal(np.asarray(pair.panels[1]), dip[pad:pad + p, p + 2 * pad:2 * p + 2 * pad])
