"""Open a training dataset on local disk: Subjects200K parquet, MUSAR-Gen parquet or a folder.

``open_dataset(path)`` accepts a single ``.parquet`` file, a directory of parquet shards
(every ``*.parquet`` below it, sorted by path) or a plain folder (docs/DATASETS.md). Metadata
columns are read and filtered when the dataset opens; images are decoded on access.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DatasetError
from .datasets import MultiSubjectDataset, PairDataset
from .folder import open_folder
from .images import decode_image, split_diptych
from .parquet import ParquetSource, parquet_files
from .records import QUALITY_KEYS, MultiSubjectSample, ReadOptions, ReadReport, SubjectPair

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = {
    "musar_gen": ("cond_img_0", "cond_img_1", "tgt_img", "cond_prompt_0", "cond_prompt_1",
                  "prompt"),
    "subjects200k": ("image", "description", "quality_assessment"),
}
LAYOUTS = ("auto", "subjects200k", "musar_gen", "folder")
DESCRIPTION_FIELDS = ("item", "description_0", "description_1", "category")
LARGE_ROW_GROUP = 2000  # rows per group above which random access gets slow (warned once)


def open_dataset(path, layout: str = "auto", options: ReadOptions | None = None,
                 **settings) -> PairDataset | MultiSubjectDataset:
    """Open ``path`` as a lazy dataset. ``settings`` override fields of ``options``.

    Returns a PairDataset (Subjects200K, folder pairs) or a MultiSubjectDataset (MUSAR-Gen,
    folder samples); raises DatasetError when the layout is unknown or nothing is usable.
    """
    options = (options or ReadOptions()).with_settings(settings)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}: expected one of {LAYOUTS}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path '{path}' does not exist: expected a .parquet file, "
                           f"a folder of parquet shards or a sample folder")
    if layout == "folder":
        return open_folder(path, options)
    files = parquet_files(path) if path.is_dir() or path.suffix == ".parquet" else []
    if not files:
        if layout == "auto" and path.is_dir():
            return open_folder(path, options)
        raise DatasetError(f"expected parquet data for layout {layout!r} at '{path}', found no "
                           f".parquet file; pass a .parquet file or a folder of shards")
    source = ParquetSource(files, options.row_group_cache, limit=path if path.is_dir() else path.parent)
    layout = _check_columns(source, layout, options, str(path))
    logger.info("opening %s as %s (%d rows in %d shard(s))", path, layout, source.num_rows,
                len(files))
    if source.largest_group > LARGE_ROW_GROUP:
        logger.warning("'%s' has row groups of up to %d rows: reading one image decodes its whole "
                       "group. Rewrite it with smaller groups (pyarrow.parquet.write_table(..., "
                       "row_group_size=100)) for fast random access.", path, source.largest_group)
    opener = _open_musar_gen if layout == "musar_gen" else _open_subjects200k
    return opener(source, options, str(path))


def _required(layout: str, options: ReadOptions) -> tuple[str, ...]:
    columns = REQUIRED_COLUMNS[layout]
    if layout == "subjects200k" and options.min_quality is None:
        columns = tuple(c for c in columns if c != "quality_assessment")
    return columns


def _check_columns(source: ParquetSource, layout: str, options: ReadOptions, name: str) -> str:
    """The layout to read ``source`` as; DatasetError naming expected and found columns."""
    found = set(source.columns)
    candidates = REQUIRED_COLUMNS if layout == "auto" else {layout: None}
    missing = {lay: [c for c in _required(lay, options) if c not in found] for lay in candidates}
    for lay, absent in missing.items():
        if not absent:
            return lay
    expected = "; ".join(f"{lay}: {list(_required(lay, options))} (missing {absent})"
                         for lay, absent in missing.items())
    hint = (" (pass min_quality=None to read Subjects200K data without quality_assessment)"
            if missing.get("subjects200k") == ["quality_assessment"] else "")
    raise DatasetError(f"parquet data '{name}' does not match layout {layout!r}: found columns "
                       f"{source.columns}; expected {expected}{hint}. Convert it to the folder "
                       f"layout described in docs/DATASETS.md or pass the right layout.")


def _drop(alive: np.ndarray, failed: np.ndarray, reason: str, report: ReadReport,
          source: ParquetSource) -> None:
    """Filter ``failed`` rows still ``alive`` under ``reason`` (each row counted once)."""
    newly = np.flatnonzero(alive & failed)
    report.add_filtered(reason, int(newly.size), [source.row_key(int(r)) for r in newly[:3]])
    alive &= ~failed


def _struct(table: pa.Table, column: str, fields: tuple[str, ...], name: str) -> pa.StructArray:
    array = table.column(column).combine_chunks()
    present = [array.type.field(i).name for i in range(array.type.num_fields)] \
        if pa.types.is_struct(array.type) else []
    absent = [f for f in fields if f not in present]
    if absent:
        raise DatasetError(f"'{name}': column {column!r} should be a struct with fields "
                           f"{list(fields)}, got type {array.type} (missing {absent})")
    return array


def _null_mask(array: pa.Array) -> np.ndarray:
    return np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def _quality_masks(table: pa.Table, min_quality: int, name: str):
    """(no assessment, low quality) boolean masks for the Subjects200K quality filter."""
    qa = _struct(table, "quality_assessment", QUALITY_KEYS, name)
    missing, low = _null_mask(qa), np.zeros(len(qa), dtype=bool)
    for key in QUALITY_KEYS:
        scores = qa.field(key)
        if not (pa.types.is_integer(scores.type) or pa.types.is_floating(scores.type)):
            raise DatasetError(f"'{name}': quality_assessment.{key} should be numeric, "
                               f"got {scores.type}")
        missing |= _null_mask(scores)
        low |= np.asarray(pc.fill_null(scores, min_quality).to_numpy(zero_copy_only=False)
                          < min_quality)
    return missing, low


def _open_subjects200k(source: ParquetSource, options: ReadOptions, name: str) -> PairDataset:
    use_collection = options.collections is not None and "collection" in source.columns
    if options.collections is not None and not use_collection:
        raise DatasetError(f"'{name}': collections={options.collections} was asked for but the "
                           f"data has no 'collection' column; pass collections=None")
    columns = ["description"] + (["collection"] if use_collection else []) \
        + (["quality_assessment"] if options.min_quality is not None else [])
    table = source.read_columns(columns)
    report = ReadReport(name, "subjects200k", rows_read=source.num_rows)
    desc = _struct(table, "description", DESCRIPTION_FIELDS[:1], name)
    item_array = desc.field("item")
    if not (pa.types.is_string(item_array.type) or pa.types.is_large_string(item_array.type)):
        raise DatasetError(f"'{name}': description.item should be a string, got {item_array.type}")
    items_all = item_array.to_pylist()
    alive = np.ones(source.num_rows, dtype=bool)
    no_item = _null_mask(desc) | np.array([not (s or "").strip() for s in items_all], dtype=bool)
    _drop(alive, no_item, "bad_metadata", report, source)
    if use_collection:
        allowed = pa.array(list(options.collections), type=pa.string())
        collection = table.column("collection").combine_chunks().cast(pa.string())
        excluded = ~np.asarray(pc.fill_null(pc.is_in(collection, value_set=allowed), False)
                               .to_numpy(zero_copy_only=False), dtype=bool)
        _drop(alive, excluded, "collection_excluded", report, source)
    if options.min_quality is not None:
        missing, low = _quality_masks(table, options.min_quality, name)
        _drop(alive, missing, "no_quality_assessment", report, source)
        _drop(alive, low, "low_quality", report, source)
    rows = np.flatnonzero(alive)
    items = [items_all[int(r)].strip() for r in rows]
    return PairDataset(items, _Subjects200KRows(source, options, rows, items, desc), report)


class _Subjects200KRows:
    """Kept Subjects200K rows: metadata from arrow arrays, image decoded on ``load``."""

    def __init__(self, source: ParquetSource, options: ReadOptions, rows: np.ndarray,
                 items: list[str], desc: pa.StructArray):
        present = {desc.type.field(i).name for i in range(desc.type.num_fields)}
        self.texts = {f: desc.field(f) if f in present else None for f in DESCRIPTION_FIELDS[1:]}
        self.source, self.options, self.rows, self.items = source, options, rows, items

    def __len__(self) -> int:
        return len(self.rows)

    def key(self, index: int) -> str:
        return self.source.row_key(int(self.rows[index]))

    def _text(self, field: str, row: int) -> str:
        array = self.texts[field]
        return (array[row].as_py() or "") if array is not None else ""

    def load(self, index: int) -> SubjectPair:
        row, opts = int(self.rows[index]), self.options
        image = decode_image(self.source.cells(row, ("image",))["image"], self.source.root,
                             limit=self.source.limit)
        panels = split_diptych(image, opts.padding, opts.pad_tolerance, opts.min_side)
        return SubjectPair(item=self.items[index], category=self._text("category", row),
                           panels=panels, descriptions=(self._text("description_0", row),
                                                        self._text("description_1", row)),
                           key=self.source.row_key(row))


def _cond_count(columns: list[str]) -> int:
    numbers = {int(m.group(1)) for c in columns if (m := re.fullmatch(r"cond_img_(\d+)", c))}
    count = 0
    while count in numbers and f"cond_prompt_{count}" in columns:
        count += 1
    return count


def _open_musar_gen(source: ParquetSource, options: ReadOptions,
                    name: str) -> MultiSubjectDataset:
    count = _cond_count(source.columns)
    caption_columns = [f"cond_prompt_{i}" for i in range(count)]
    table = source.read_columns(["prompt", *caption_columns])
    report = ReadReport(name, "musar_gen", rows_read=source.num_rows)
    texts = {c: table.column(c).combine_chunks() for c in ["prompt", *caption_columns]}
    alive = np.ones(source.num_rows, dtype=bool)
    null_text = np.zeros(source.num_rows, dtype=bool)
    for array in texts.values():
        null_text |= _null_mask(array)
    _drop(alive, null_text, "bad_metadata", report, source)
    for array in (texts[c] for c in caption_columns):  # skipped and counted like broken images
        empty = alive & np.array([not str(t or "").strip() for t in array.to_pylist()], dtype=bool)
        for row in np.flatnonzero(empty):
            report.add_skipped("empty_caption", source.row_key(int(row)))
        alive &= ~empty
    rows = np.flatnonzero(alive)
    return MultiSubjectDataset(_MusarGenRows(source, options, rows, count, texts), report)


class _MusarGenRows:
    """Kept MUSAR-Gen rows: prompts in memory, condition / target images decoded on ``load``."""

    def __init__(self, source: ParquetSource, options: ReadOptions, rows: np.ndarray,
                 count: int, texts: dict):
        self.source, self.options, self.rows, self.texts = source, options, rows, texts
        self.captions = [f"cond_prompt_{i}" for i in range(count)]
        self.images = tuple(f"cond_img_{i}" for i in range(count)) + ("tgt_img",)

    def __len__(self) -> int:
        return len(self.rows)

    def key(self, index: int) -> str:
        return self.source.row_key(int(self.rows[index]))

    def load(self, index: int) -> MultiSubjectSample:
        row = int(self.rows[index])
        cells = self.source.cells(row, self.images)
        images = [decode_image(cells[c], self.source.root, self.options.min_side, self.source.limit)
                  for c in self.images]
        return MultiSubjectSample(
            cond_images=tuple(images[:-1]),
            cond_captions=tuple(str(self.texts[c][row].as_py()) for c in self.captions),
            target=images[-1], prompt=str(self.texts["prompt"][row].as_py()),
            key=self.source.row_key(row))
