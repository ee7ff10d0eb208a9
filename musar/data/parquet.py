"""Lazy access to one parquet file or a sorted set of parquet shards (pyarrow only).

Only footers are read when a source opens. Small metadata columns are read eagerly with
``read_columns``; image cells are read with ``cells(row, columns)``, which decodes the row
group holding the row (parquet has no cheaper random access) and keeps the last few row
groups in a small LRU so neighbouring rows are cheap.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DatasetError
from ..paths import is_inside

logger = logging.getLogger(__name__)


def parquet_files(path: Path) -> list[Path]:
    """The parquet file itself, or every ``*.parquet`` under a directory (none reached through a
    symlink leading out of it), sorted by path."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if p.is_file() and is_inside(p, path))


class ParquetSource:
    """Rows of one or more parquet shards addressed by a global row index."""

    def __init__(self, files: list[Path], row_group_cache: int = 2, limit: Path | None = None):
        if not files:
            raise DatasetError("expected at least one .parquet file, found none")
        self.files = list(files)
        self.root = files[0].parent if len(files) == 1 else _common_parent(files)
        self.limit = limit or self.root  # image paths in cells must stay inside this folder
        self._groups: list[tuple[int, int]] = []  # (file index, row group index)
        self._starts: list[int] = []  # global row index where each group starts
        self._file_starts: list[int] = []
        total, columns = 0, None
        for file_index, file in enumerate(self.files):
            meta = _read_metadata(file)
            names = list(meta.schema.to_arrow_schema().names)
            if columns is not None and names != columns:
                raise DatasetError(f"parquet shard '{file}' has columns {names} but "
                                   f"'{self.files[0]}' has {columns}: expected every shard "
                                   f"of one dataset to share a schema; pass one split's folder")
            columns = names
            self._file_starts.append(total)
            for group in range(meta.num_row_groups):
                self._groups.append((file_index, group))
                self._starts.append(total)
                total += meta.row_group(group).num_rows
        self.columns: list[str] = columns or []
        self.num_rows = total
        self.largest_group = max((b - a for a, b in zip(self._starts, self._starts[1:] + [total],
                                                        strict=True)), default=0)
        self._cache_size = row_group_cache
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self):  # worker processes start with an empty row-group cache
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def row_key(self, row: int) -> str:
        """A readable, stable key: '<shard file name>:<row inside the shard>'."""
        file_index = bisect.bisect_right(self._file_starts, row) - 1
        return f"{self.files[file_index].name}:{row - self._file_starts[file_index]}"

    def read_columns(self, columns: list[str]) -> pa.Table:
        """Whole columns across all shards (for small metadata columns)."""
        tables = [pq.read_table(file, columns=columns) for file in self.files]
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def cells(self, row: int, columns: tuple[str, ...]) -> dict:
        """Python values of ``columns`` at global ``row`` (decodes and caches its row group)."""
        if not 0 <= row < self.num_rows:
            raise IndexError(f"row {row} outside 0..{self.num_rows - 1}")
        group = bisect.bisect_right(self._starts, row) - 1
        table = self._row_group(group, columns)
        offset = row - self._starts[group]
        return {name: table.column(name)[offset].as_py() for name in columns}

    def _row_group(self, group: int, columns: tuple[str, ...]) -> pa.Table:
        key = (group, columns)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        file_index, group_index = self._groups[group]
        table = pq.ParquetFile(self.files[file_index]).read_row_group(group_index,
                                                                      columns=list(columns))
        self._cache[key] = table
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return table


def _read_metadata(file: Path):
    try:
        return pq.read_metadata(file)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"expected a parquet file at '{file}', but pyarrow cannot read it "
                           f"({exc}); remove it or point to the dataset's .parquet shards") from None


def _common_parent(files: list[Path]) -> Path:
    parent = files[0].parent
    while not all(parent in f.parents for f in files):
        parent = parent.parent
    return parent
