"""Lazy datasets: metadata in memory, images decoded on access, broken rows skipped and counted.

``load(i)`` returns the row or None when its data is broken (recorded once in the report).
``ds[i]`` never fails on a broken row: it moves on to the next usable row (i+1, i+2 ...,
wrapping around), so the answer depends only on the data, never on the order of calls.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from ..errors import DatasetError
from .images import BadRow
from .records import MultiSubjectSample, ReadReport, SubjectPair

logger = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
LOGGED_PER_REASON = 5  # log the first few broken rows per reason as warnings, the rest at debug


class Rows(Protocol[T_co]):
    """What a reader hands to a LazyDataset. Readers use plain classes (no closures) so a
    dataset pickles into DataLoader worker processes."""

    def __len__(self) -> int: ...

    def key(self, index: int) -> str: ...

    def load(self, index: int) -> T_co: ...  # raises BadRow for broken data


class LazyDataset(Generic[T]):
    """A sequence of rows whose images are only decoded when a row is accessed."""

    kind = "rows"

    def __init__(self, rows: Rows[T], report: ReadReport):
        self.report = report
        self._rows = rows
        self._length = len(rows)
        self._bad: dict[int, str] = {}
        if self._length == 0:
            raise DatasetError(f"{report.layout} dataset '{report.source}' has no usable rows: "
                               f"expected at least one.\n{report.summary()}\nLoosen the filters "
                               f"(min_quality, collections, folder_kind, min_side) or fix the data.")

    def __len__(self) -> int:
        return self._length

    def key(self, index: int) -> str:
        return self._rows.key(self._check(index))

    def load(self, index: int) -> T | None:
        """Row ``index``, or None when its data is broken (counted in ``report`` once)."""
        index = self._check(index)
        if index in self._bad:
            return None
        try:
            return self._rows.load(index)
        except BadRow as bad:
            key = self._rows.key(index)
            self._bad[index] = bad.reason
            self.report.add_skipped(bad.reason, key)
            level = logging.WARNING if self.report.skipped[bad.reason] <= LOGGED_PER_REASON \
                else logging.DEBUG
            logger.log(level, "skipping %s row %s: %s", self.report.layout, key, bad)
            return None

    def __getitem__(self, index: int) -> T:
        index = self._check(index)
        for step in range(self._length):
            row = self.load((index + step) % self._length)
            if row is not None:
                return row
        raise DatasetError(f"{self.report.layout} dataset '{self.report.source}': expected "
                           f"decodable images, but all {self._length} rows are broken.\n"
                           f"{self.report.summary()}")

    def __iter__(self) -> Iterator[T]:
        """Every usable row once, in order (broken rows skipped and counted)."""
        for index in range(self._length):
            row = self.load(index)
            if row is not None:
                yield row

    def is_known_bad(self, index: int) -> bool:
        return index in self._bad

    def _check(self, index: int) -> int:
        index = operator.index(index)  # ints and numpy integers
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} outside a dataset of {self._length} rows")
        return index

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.report.source!r}, {self._length} rows)"


class PairDataset(LazyDataset[SubjectPair]):
    """Single-subject pairs (Subjects200K rows, folder pairs). ``items`` is read eagerly."""

    kind = "pairs"

    def __init__(self, items: list[str], rows: Rows[SubjectPair], report: ReadReport):
        if len(items) != len(rows):
            raise DatasetError(f"internal: {len(items)} items for {len(rows)} rows")
        super().__init__(rows, report)
        self.items = items

    def item(self, index: int) -> str:
        """The subject name of row ``index`` without decoding its image."""
        return self.items[self._check(index)]


class MultiSubjectDataset(LazyDataset[MultiSubjectSample]):
    """Ready multi-subject samples (MUSAR-Gen rows, folder samples)."""

    kind = "multi"
