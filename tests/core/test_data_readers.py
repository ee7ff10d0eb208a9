"""Dataset readers: Subjects200K / MUSAR-Gen parquet and the plain folder layout.

Every test writes its own tiny data (32 px panels, PNG bytes) and compares what the readers
return with the pixels it drew.
"""

import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from musar.data import PairDataset, build_source, detect_panels, open_dataset, split_diptych
from musar.errors import DatasetError, MusarError

S = 32  # panel size
WHITE = (255, 255, 255)
QA_TYPE = pa.struct([("compositeStructure", pa.int64()), ("objectConsistency", pa.int64()),
                     ("imageQuality", pa.int64())])
DESC_TYPE = pa.struct([("item", pa.string()), ("description_0", pa.string()),
                       ("description_1", pa.string()), ("category", pa.string())])
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def noise(seed, h=S, w=S):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def diptych(left, right, margin, gap, right_margin, colour=WHITE):
    """Two panels on a uniform padding colour: margin | left | gap | right | right_margin."""
    h = S + 2 * margin
    canvas = np.empty((h, margin + 2 * S + gap + right_margin, 3), dtype=np.uint8)
    canvas[:] = colour
    canvas[margin:margin + S, margin:margin + S] = left
    x1 = margin + S + gap
    canvas[margin:margin + S, x1:x1 + S] = right
    return canvas


def qa(score=5, image_quality=None):
    return {"compositeStructure": score, "objectConsistency": score,
            "imageQuality": score if image_quality is None else image_quality}


def desc(item):
    return {"item": item, "description_0": f"{item} on a beach", "description_1": f"{item} indoors",
            "category": "things"}


def subjects_rows():
    """(rows, panels drawn per row) - two paddings, a low-quality, a corrupt, a null-QA row."""
    panels = {i: (noise(10 * i), noise(10 * i + 1)) for i in range(7)}
    layouts = {0: (4, 4, 8), 1: (6, 12, 6), 5: (4, 4, 8)}  # OminiControl-like and symmetric
    images = {i: png(diptych(*panels[i], *layouts.get(i, (4, 4, 8)))) for i in range(7)}
    images[3] = b"\x89PNG garbage that is not an image"
    images[6] = png(noise(99, 40, 40))  # square picture: not a diptych -> wrong_size
    quality = {2: qa(5, image_quality=3), 4: None}
    items = ["cat", "dog", "fox", "owl", "emu", "mug", "yak"]
    rows = [{"image": {"bytes": images[i], "path": None}, "collection": f"collection_{1 + i % 2}",
             "quality_assessment": quality.get(i, qa()), "description": desc(items[i])}
            for i in range(7)]
    return rows, panels


def write_subjects(path, rows, row_group_size=2):
    schema = pa.schema([("image", IMAGE_TYPE), ("collection", pa.string()),
                        ("quality_assessment", QA_TYPE), ("description", DESC_TYPE)])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)


@pytest.fixture
def subjects(tmp_path):
    rows, panels = subjects_rows()
    path = tmp_path / "s200k.parquet"
    write_subjects(path, rows)
    return path, panels


def test_subjects200k_filters_on_open_and_counts_broken_rows_on_access(subjects):
    path, _ = subjects
    ds = open_dataset(path, min_side=16)
    assert isinstance(ds, PairDataset)
    report = ds.report
    assert (report.layout, report.rows_read) == ("subjects200k", 7)
    assert dict(report.filtered) == {"low_quality": 1, "no_quality_assessment": 1}
    assert report.examples["low_quality"] == ["s200k.parquet:2"]
    assert len(ds) == 5 and ds.items == ["cat", "dog", "owl", "mug", "yak"]
    assert not report.skipped  # lazy: nothing decoded yet
    assert [p.item for p in ds] == ["cat", "dog", "mug"]
    assert dict(report.skipped) == {"corrupt_image": 1, "wrong_size": 1}
    assert report.examples["corrupt_image"] == ["s200k.parquet:3"]
    assert report.usable == 3
    summary = report.summary()
    for word in ("read 7 rows", "3 usable", "low_quality", "corrupt_image", "s200k.parquet:3"):
        assert word in summary


def test_broken_row_access_moves_on_to_the_next_usable_row_deterministically(subjects):
    path, _ = subjects
    ds = open_dataset(path, min_side=16)
    assert ds[2].item == "mug"  # row 3 is corrupt -> next usable (row 5)
    assert ds[4].item == "cat"  # last row is wrong-sized -> wraps to the first
    assert ds[2].item == "mug" and ds[-1].item == "cat"
    assert dict(ds.report.skipped) == {"corrupt_image": 1, "wrong_size": 1}  # counted once
    fresh = open_dataset(path, min_side=16)
    assert [fresh[i].key for i in (4, 2, 0)] == [ds[i].key for i in (4, 2, 0)]
    with pytest.raises(IndexError):
        ds[5]


def test_panels_are_extracted_exactly_with_auto_detected_padding(subjects):
    path, panels = subjects
    ds = open_dataset(path, min_side=16)
    for index, row in ((0, 0), (1, 1), (3, 5)):  # rows 0, 5: margin 4; row 1: margin 6, gap 12
        pair = ds[index]
        assert pair.key == f"s200k.parquet:{row}"
        for got, drawn in zip(pair.panels, panels[row], strict=True):
            assert got.mode == "RGB" and got.size == (S, S)
            np.testing.assert_array_equal(np.asarray(got), drawn)
    assert ds[1].descriptions == ("dog on a beach", "dog indoors") and ds[1].category == "things"


def test_configured_padding_uses_the_ominicontrol_crop(subjects):
    path, panels = subjects
    ds = open_dataset(path, min_side=16, padding=4)
    pair = ds[0]
    for got, drawn in zip(pair.panels, panels[0], strict=True):
        np.testing.assert_array_equal(np.asarray(got), drawn)


def test_detection_survives_a_padding_coloured_panel_edge_and_a_black_padding():
    left, right = noise(1), noise(2)
    left[:, :3] = 255  # the left panel's first columns look like padding
    picture = Image.fromarray(diptych(left, right, 4, 4, 8))
    got = split_diptych(picture)
    np.testing.assert_array_equal(np.asarray(got[0]), left)
    np.testing.assert_array_equal(np.asarray(got[1]), right)
    black = Image.fromarray(diptych(noise(3) | 64, noise(4) | 64, 5, 10, 5, colour=(0, 0, 0)))
    got = split_diptych(black)
    np.testing.assert_array_equal(np.asarray(got[1]), noise(4) | 64)


def photo(seed, n=128):
    """A smooth, photo-like panel (JPEG would smear pure noise beyond recognition)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n]
    base = np.stack([(x * 1.5 + rng.integers(0, 100)) % 256, (y * 2 + rng.integers(0, 100)) % 256,
                     (x + y) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("margin, gap, right_margin", [(4, 4, 8), (6, 12, 6), (16, 16, 16)])
def test_detection_ignores_jpeg_ringing_around_the_panels(margin, gap, right_margin):
    n = 128
    canvas = np.full((n + 2 * margin, margin + 2 * n + gap + right_margin, 3), 255, np.uint8)
    canvas[margin:margin + n, margin:margin + n] = photo(1)
    canvas[margin:margin + n, margin + n + gap:margin + 2 * n + gap] = photo(2)
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="JPEG", quality=75)
    jpeg = np.asarray(Image.open(buffer).convert("RGB"))
    assert detect_panels(jpeg, 24) == (margin, margin, margin + n + gap, n)


def test_quality_and_collection_filters_are_configurable(subjects):
    path, _ = subjects
    everything = open_dataset(path, min_side=16, min_quality=None)
    assert len(everything) == 7 and not everything.report.filtered
    lenient = open_dataset(path, min_side=16, min_quality=3)
    assert dict(lenient.report.filtered) == {"no_quality_assessment": 1}
    odd = open_dataset(path, min_side=16, collections=["collection_1"], min_quality=None)
    assert odd.items == ["cat", "fox", "emu", "yak"]
    assert odd.report.filtered["collection_excluded"] == 3


def test_a_directory_of_shards_is_read_in_sorted_order(tmp_path):
    rows, _ = subjects_rows()
    (tmp_path / "data").mkdir()
    write_subjects(tmp_path / "data" / "train-00001.parquet", rows[5:6])
    write_subjects(tmp_path / "data" / "train-00000.parquet", rows[:2])
    ds = open_dataset(tmp_path, min_side=16)
    assert ds.items == ["cat", "dog", "mug"]
    assert ds[2].key == "train-00001.parquet:0"


def test_opening_decodes_no_image(subjects, monkeypatch):
    path, _ = subjects
    calls = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: calls.append(1) or original(*a, **k))
    ds = open_dataset(path, min_side=16)
    assert calls == []
    ds[0]
    assert len(calls) == 1


def test_unknown_columns_raise_naming_expected_and_missing(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"image": [b"x"], "caption": ["a"]}), path)
    with pytest.raises(DatasetError) as info:
        open_dataset(path)
    message = str(info.value)
    assert "caption" in message and "missing ['description', 'quality_assessment']" in message
    assert "tgt_img" in message
    with pytest.raises(DatasetError, match="cond_img_0"):
        open_dataset(path, layout="musar_gen")


def test_bad_arguments_raise_dataset_errors(subjects):
    path, _ = subjects
    with pytest.raises(DatasetError, match="expected one of"):
        open_dataset(path, layout="subjects")
    with pytest.raises(DatasetError, match="min_quality"):
        open_dataset(path, min_qualty=5)
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(path.parent / "nowhere")
    assert issubclass(DatasetError, MusarError)


def test_empty_after_filtering_says_how_many_rows_and_why(tmp_path):
    rows, _ = subjects_rows()
    path = tmp_path / "bad.parquet"
    write_subjects(path, [rows[2], rows[4]])
    with pytest.raises(DatasetError) as info:
        open_dataset(path, min_side=16)
    message = str(info.value)
    assert "read 2 rows" in message and "low_quality" in message
    assert "no_quality_assessment" in message


def test_all_rows_broken_raises_instead_of_looping(tmp_path):
    rows, _ = subjects_rows()
    path = tmp_path / "broken.parquet"
    write_subjects(path, [rows[3]])
    ds = open_dataset(path, min_side=16)
    with pytest.raises(DatasetError, match="corrupt_image"):
        ds[0]


def write_musar_gen(path, rows):
    schema = pa.schema([(c, IMAGE_TYPE) for c in ("cond_img_0", "cond_img_1", "tgt_img")]
                       + [(c, pa.string()) for c in ("cond_prompt_0", "cond_prompt_1", "prompt")])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_musar_gen_rows_are_two_subject_samples(tmp_path):
    drawn = {i: (noise(i), noise(i + 50), noise(i + 100, S, 2 * S)) for i in range(3)}
    rows = [{"cond_img_0": {"bytes": png(a), "path": None}, "cond_img_1": {"bytes": png(b)},
             "tgt_img": {"bytes": png(t) if i != 1 else b"broken"}, "cond_prompt_0": f"cat {i}",
             "cond_prompt_1": f"dog {i}", "prompt": f"cat and dog {i}"}
            for i, (a, b, t) in drawn.items()]
    path = tmp_path / "gen.parquet"
    write_musar_gen(path, rows)
    ds = open_dataset(path, min_side=16)
    assert ds.report.layout == "musar_gen" and len(ds) == 3
    sample = ds[0]
    assert sample.cond_captions == ("cat 0", "dog 0") and sample.prompt == "cat and dog 0"
    for got, want in zip((*sample.cond_images, sample.target), drawn[0], strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert ds[1].key == "gen.parquet:2"
    assert dict(ds.report.skipped) == {"corrupt_image": 1}


def save(path, array):
    Image.fromarray(array).save(path)


def make_multi_folder(root):
    for k, (name, conds) in enumerate((("s0", 2), ("s1", 1), ("s2", 2))):
        folder = root / name
        folder.mkdir(parents=True)
        save(folder / "target.png", noise(300 + k, S, 2 * S))
        for i in range(conds if name != "s2" else 1):  # s2 lacks cond_1
            save(folder / f"cond_{i}.png", noise(i + 7))
        captions = [f"subject {i}" for i in range(conds)]
        (folder / "sample.json").write_text(json.dumps({"prompt": f"p {name}",
                                                        "cond_captions": captions}))
    (root / "s3").mkdir()
    save(root / "s3" / "target.png", noise(5))
    (root / "s3" / "sample.json").write_text("{not json")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("hello")


def test_folder_multi_subject_samples(tmp_path):
    make_multi_folder(tmp_path)
    ds = open_dataset(tmp_path, min_side=16)
    assert ds.report.layout == "folder/multi" and len(ds) == 2
    assert dict(ds.report.filtered) == {"bad_metadata": 1, "unrecognised_folder": 1}
    assert dict(ds.report.skipped) == {"missing_image": 1}
    assert ds.report.examples["missing_image"] == ["s2"]
    s0 = ds[0]
    assert s0.key == "s0" and s0.prompt == "p s0" and s0.cond_captions == ("subject 0", "subject 1")
    np.testing.assert_array_equal(np.asarray(s0.cond_images[1]), noise(8))
    assert s0.target.size == (2 * S, S) and len(ds[1].cond_images) == 1


def make_pair_folder(root, items=("cat", "dog")):
    for i, item in enumerate(items):
        folder = root / f"pair_{i}"
        folder.mkdir(parents=True)
        save(folder / "panel_0.png", noise(200 + 2 * i))
        save(folder / "panel_1.png", noise(201 + 2 * i))
        (folder / "meta.json").write_text(json.dumps({"item": item, "description_0": f"{item} 0",
                                                      "description_1": f"{item} 1"}))


def test_folder_pairs_and_a_corrupt_panel(tmp_path):
    make_pair_folder(tmp_path, ("cat", "dog", "fox"))
    (tmp_path / "pair_1" / "panel_1.png").write_bytes(b"garbage")
    ds = open_dataset(tmp_path, layout="folder", min_side=16)
    assert isinstance(ds, PairDataset) and ds.items == ["cat", "dog", "fox"]
    pair = ds[0]
    assert pair.descriptions == ("cat 0", "cat 1") and pair.category == ""
    np.testing.assert_array_equal(np.asarray(pair.panels[1]), noise(201))
    assert ds[1].item == "fox" and dict(ds.report.skipped) == {"corrupt_image": 1}


def test_mixed_folder_needs_a_kind(tmp_path):
    make_multi_folder(tmp_path)
    make_pair_folder(tmp_path)
    with pytest.raises(DatasetError, match="folder_kind"):
        open_dataset(tmp_path, min_side=16)
    pairs = open_dataset(tmp_path, min_side=16, folder_kind="pairs")
    assert len(pairs) == 2 and pairs.report.filtered["other_kind"] == 2
    with pytest.raises(DatasetError, match="one sample folder"):
        open_dataset(tmp_path / "pair_0", layout="folder")


def test_small_images_are_skipped_as_wrong_size(tmp_path):
    make_pair_folder(tmp_path)
    ds = open_dataset(tmp_path)  # default min_side 64 > 32 px panels
    with pytest.raises(DatasetError, match="wrong_size"):
        ds[0]


def test_datasets_pickle_for_dataloader_workers(subjects, tmp_path):
    import pickle

    path, panels = subjects
    ds = open_dataset(path, min_side=16)
    ds[0]  # fills the row-group cache, which must not travel
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(np.asarray(clone[np.int64(1)].panels[0]), panels[1][0])
    make_multi_folder(tmp_path / "folder")
    multi = pickle.loads(pickle.dumps(open_dataset(tmp_path / "folder", min_side=16)))
    assert multi[0].cond_captions == ("subject 0", "subject 1")


# ---- hardening: empty captions, paths that leave the dataset ---------------------------------
def test_an_empty_caption_is_skipped_and_counted_like_a_broken_image(tmp_path):
    rows = [{"cond_img_0": {"bytes": png(noise(i))}, "cond_img_1": {"bytes": png(noise(i + 9))},
             "tgt_img": {"bytes": png(noise(i, S, 2 * S))}, "cond_prompt_0": caption,
             "cond_prompt_1": f"dog {i}", "prompt": "p"}
            for i, caption in enumerate(["cat 0", "", "   ", "cat 3"])]
    write_musar_gen(tmp_path / "gen.parquet", rows)
    ds = open_dataset(tmp_path / "gen.parquet", min_side=16)
    assert len(ds) == 2 and [ds[i].cond_captions[0] for i in range(2)] == ["cat 0", "cat 3"]
    assert dict(ds.report.skipped) == {"empty_caption": 2}
    assert "skipped 2 x empty_caption" in ds.report.summary()
    make_multi_folder(tmp_path / "folder")
    meta = tmp_path / "folder" / "s1" / "sample.json"
    meta.write_text(json.dumps({"prompt": "p", "cond_captions": [" "]}))
    folder = open_dataset(tmp_path / "folder", min_side=16)
    assert len(folder) == 1 and folder.report.skipped["empty_caption"] == 1


def test_image_paths_in_parquet_cells_stay_inside_the_dataset_folder(tmp_path):
    outside = tmp_path / "secret.png"
    save(outside, noise(1))
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    save(data / "images" / "inside.png", noise(2))
    (data / "images" / "link.png").symlink_to(outside)
    cells = ["images/inside.png", str(data / "images" / "inside.png"), "../secret.png",
             str(outside), "images/link.png", "images/../../secret.png"]
    rows = [{"cond_img_0": {"path": c}, "cond_img_1": {"path": "images/inside.png"},
             "tgt_img": {"bytes": png(noise(3, S, 2 * S))}, "cond_prompt_0": "a",
             "cond_prompt_1": "b", "prompt": "p"} for c in cells]
    write_musar_gen(data / "gen.parquet", rows)
    ds = open_dataset(data / "gen.parquet", min_side=16)
    loaded = [ds.load(i) for i in range(len(cells))]
    assert [row is not None for row in loaded] == [True, True, False, False, False, False]
    assert dict(ds.report.skipped) == {"outside_dataset": 4}
    np.testing.assert_array_equal(np.asarray(loaded[0].cond_images[0]), noise(2))


def test_folder_samples_linking_outside_the_dataset_are_skipped(tmp_path):
    make_pair_folder(tmp_path / "ds", items=("cat", "dog", "owl"))
    elsewhere = tmp_path / "elsewhere"
    make_pair_folder(elsewhere, items=("fox",))
    (tmp_path / "ds" / "linked_sample").symlink_to(elsewhere / "pair_0", target_is_directory=True)
    panel = tmp_path / "ds" / "pair_1" / "panel_1.png"
    panel.unlink()
    panel.symlink_to(elsewhere / "pair_0" / "panel_1.png")
    ds = open_dataset(tmp_path / "ds", min_side=16)
    assert sorted(ds.items) == ["cat", "owl"]
    assert dict(ds.report.skipped) == {"outside_dataset": 2}


@pytest.mark.parametrize("template, words", [
    ("{desc_a:d} and {desc_b}", "{desc_a:d}"), ("{desc_a!r}", "{desc_a!r}"),
    ("{desc_a:>10}", "format spec"), ("{desc_a.upper}", "unknown placeholder"),
    ("{desc_a[0]}", "unknown placeholder"), ("{", "not a valid format string"),
    ("{}", "unknown placeholder")])
def test_prompt_templates_with_specs_or_unknown_fields_fail_when_the_builder_is_made(
        tmp_path, template, words):
    make_pair_folder(tmp_path, items=("cat", "dog"))
    with pytest.raises(DatasetError, match=re.escape(words)):
        build_source(open_dataset(tmp_path, min_side=16), 0, prompt_template=template)
