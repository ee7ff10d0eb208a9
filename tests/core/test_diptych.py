"""Debiased diptych builder and the multi-subject source: choices, determinism, sizes, pixels."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from musar.data import DEFAULT_PROMPT_TEMPLATE, DiptychBuilder, MultiSubjectSource, build_source, open_dataset
from musar.errors import DatasetError

S = 32
ITEMS = ("cat", "dog", "fox", "owl", "Cat ")  # "Cat " is the same item as "cat"


def noise(seed, h=S, w=S):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_pairs(root, items=ITEMS, corrupt=None):
    for i, item in enumerate(items):
        folder = root / f"pair_{i}"
        folder.mkdir(parents=True)
        for k in range(2):
            Image.fromarray(noise(1000 * i + k)).save(folder / f"panel_{k}.png")
        (folder / "meta.json").write_text(json.dumps({
            "item": item, "description_0": f"{item.strip()} in a garden.",
            "description_1": f"{item.strip()} on a sofa.", "category": "animal"}))
    if corrupt is not None:
        (root / f"pair_{corrupt}" / "panel_0.png").write_bytes(b"not a png")
    return open_dataset(root, min_side=8)


@pytest.fixture
def pairs(tmp_path):
    return write_pairs(tmp_path)


def panel_index(array):
    """(pair index, panel index) of a drawn 32x32 panel, found by exact pixel comparison."""
    for i in range(len(ITEMS)):
        for k in range(2):
            if np.array_equal(array, noise(1000 * i + k)):
                return i, k
    raise AssertionError("pixels match no drawn panel")


def pairs_root(dataset):
    return Path(dataset.report.source)


def as_array(image):
    return np.asarray(image)


def test_sample_is_two_different_items_drawn_from_their_own_panels(pairs):
    builder = DiptychBuilder(pairs, seed=3, target_size=(S, 2 * S), reference_size=S)
    for index in range(24):
        sample = builder.sample(index)
        plan = builder.plan(index)
        assert sample.target.size == (2 * S, S)
        assert [c.size for c in sample.cond_images] == [(S, S), (S, S)]
        left, right = (panel_index(as_array(sample.target)[:, x:x + S]) for x in (0, S))
        cond_a, cond_b = (panel_index(as_array(c)) for c in sample.cond_images)
        half_a, half_b = (left, right) if plan.a_left else (right, left)
        # each condition is the other panel of the pair whose target half it belongs to
        assert (cond_a[0], cond_b[0]) == (half_a[0], half_b[0])
        assert cond_a[1] != half_a[1] and cond_b[1] != half_b[1]
        assert ITEMS[cond_a[0]].strip().casefold() != ITEMS[cond_b[0]].strip().casefold()
        assert sample.cond_captions == (ITEMS[cond_a[0]].strip(), ITEMS[cond_b[0]].strip())
        descriptions = [json.loads((pairs_root(pairs) / f"pair_{i}" / "meta.json").read_text())
                        [f"description_{k}"] for i, k in (half_a, half_b)]
        assert sample.prompt == DEFAULT_PROMPT_TEMPLATE.format(desc_a=descriptions[0],
                                                               desc_b=descriptions[1])


def test_choices_vary_over_indices(pairs):
    builder = DiptychBuilder(pairs, seed=0, target_size=(S, 2 * S), reference_size=S)
    plans = [builder.plan(i) for i in range(40)]
    assert {p.a_left for p in plans} == {True, False}
    assert {p.cond_panels[0] for p in plans} == {0, 1}
    left_items = {p.items[0] if p.a_left else p.items[1] for p in plans}
    assert len(left_items) >= 3


def test_same_seed_same_sample_in_any_call_order_and_other_seed_differs(pairs):
    a = DiptychBuilder(pairs, seed=7, target_size=(S, 2 * S), reference_size=S, prompt_dropout=0.3,
                       condition_dropout=0.3)
    b = DiptychBuilder(pairs, seed=7, target_size=(S, 2 * S), reference_size=S, prompt_dropout=0.3,
                       condition_dropout=0.3)
    forward = [a.sample(i) for i in range(12)]
    backward = [b.sample(i) for i in reversed(range(12))][::-1]
    for x, y in zip(forward, backward, strict=True):
        assert x.target.tobytes() == y.target.tobytes() and x.prompt == y.prompt
        assert [c.tobytes() for c in x.cond_images] == [c.tobytes() for c in y.cond_images]
        assert x.cond_captions == y.cond_captions and x.key == y.key
    other = DiptychBuilder(pairs, seed=8, target_size=(S, 2 * S), reference_size=S)
    assert [other.plan(i) for i in range(12)] != [a.plan(i) for i in range(12)]


def test_sizes_follow_target_and_reference_size(pairs):
    builder = DiptychBuilder(pairs, seed=1, target_size=(48, 80), reference_size=24)
    sample = builder.sample(5)
    assert sample.target.size == (80, 48) and sample.target.mode == "RGB"
    assert [c.size for c in sample.cond_images] == [(24, 24), (24, 24)]
    assert len(builder) == len(pairs)


def test_dropout_empties_the_prompt_or_removes_conditions_without_changing_the_pick(pairs):
    plain = DiptychBuilder(pairs, seed=2, target_size=(S, 2 * S), reference_size=S)
    no_prompt = DiptychBuilder(pairs, seed=2, target_size=(S, 2 * S), reference_size=S,
                               prompt_dropout=1.0)
    no_conds = DiptychBuilder(pairs, seed=2, target_size=(S, 2 * S), reference_size=S,
                              condition_dropout=1.0)
    half = DiptychBuilder(pairs, seed=2, target_size=(S, 2 * S), reference_size=S, condition_dropout=0.5)
    counts = set()
    for index in range(16):
        reference = plain.sample(index)
        assert no_prompt.sample(index).prompt == "" and reference.prompt
        empty = no_conds.sample(index)
        assert empty.cond_images == () and empty.cond_captions == ()
        assert empty.target.tobytes() == reference.target.tobytes()
        partial = half.sample(index)
        assert len(partial.cond_images) == len(partial.cond_captions)
        assert set(partial.cond_captions) <= set(reference.cond_captions)
        counts.add(len(partial.cond_images))
    assert counts >= {1, 2}


def test_templates_fill_placeholders_and_reject_unknown_ones(pairs):
    builder = DiptychBuilder(pairs, seed=4, target_size=(S, 2 * S), reference_size=S,
                             prompt_template="{item_left} | {item_right}")
    for index in range(6):
        sample, plan = builder.sample(index), builder.plan(index)
        left = plan.items[0] if plan.a_left else plan.items[1]
        assert sample.prompt.split(" | ")[0] == left
        left_pair = panel_index(as_array(sample.target)[:, :S])[0]
        assert ITEMS[left_pair].strip() == left
    with pytest.raises(DatasetError, match="desc_a"):
        DiptychBuilder(pairs, seed=0, prompt_template="{subject} {desc_a}")


def test_fewer_than_two_distinct_items_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="at least 2 different items"):
        DiptychBuilder(write_pairs(tmp_path, items=("cat", " CAT")), seed=0)


def test_broken_pairs_are_skipped_counted_and_replaced(tmp_path):
    pairs = write_pairs(tmp_path, corrupt=1)
    builder = DiptychBuilder(pairs, seed=5, target_size=(S, 2 * S), reference_size=S)
    for index in range(20):
        sample = builder.sample(index)
        assert "dog" not in sample.cond_captions and len(sample.cond_images) == 2
    assert dict(pairs.report.skipped) == {"corrupt_image": 1}


def test_multi_subject_source_resizes_and_seeds_dropout(tmp_path):
    for i in range(3):
        folder = tmp_path / f"s{i}"
        folder.mkdir()
        Image.fromarray(noise(i, 40, 60)).save(folder / "target.png")
        for k in range(3):
            Image.fromarray(noise(10 * i + k, 20, 30)).save(folder / f"cond_{k}.png")
        (folder / "sample.json").write_text(json.dumps(
            {"prompt": f"three things {i}", "cond_captions": ["a", "b", "c"]}))
    ds = open_dataset(tmp_path, min_side=8)
    source = MultiSubjectSource(ds, seed=1, target_size=(S, 2 * S), reference_size=16)
    sample = source.sample(4)  # wraps to row 1
    assert sample.key == "s1" and sample.prompt == "three things 1"
    assert sample.target.size == (2 * S, S) and [c.size for c in sample.cond_images] == [(16, 16)] * 3
    assert sample.cond_captions == ("a", "b", "c")
    dropping = MultiSubjectSource(ds, seed=1, target_size=None, reference_size=16, condition_dropout=0.5,
                                  prompt_dropout=0.5)
    again = MultiSubjectSource(ds, seed=1, target_size=None, reference_size=16, condition_dropout=0.5,
                               prompt_dropout=0.5)
    runs = [(dropping.sample(i).cond_captions, dropping.sample(i).prompt) for i in range(12)]
    assert runs == [(again.sample(i).cond_captions, again.sample(i).prompt) for i in range(12)]
    assert len({len(c) for c, _ in runs}) > 1 and "" in {p for _, p in runs}
    assert dropping.sample(0).target.size == (60, 40)


def test_build_source_picks_the_builder_for_the_data(pairs, tmp_path):
    assert isinstance(build_source(pairs, seed=0), DiptychBuilder)
    with pytest.raises(DatasetError, match="MultiSubjectDataset"):
        MultiSubjectSource(pairs, seed=0)
    with pytest.raises(DatasetError, match="probability"):
        DiptychBuilder(pairs, seed=0, prompt_dropout=1.5)
    with pytest.raises(DatasetError, match="index"):
        DiptychBuilder(pairs, seed=0).sample(-1)
