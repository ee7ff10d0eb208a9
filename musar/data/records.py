"""Plain data crossing the data layer's seam: samples, read options and the read report.

Images are PIL RGB images. Samples are frozen dataclasses; the report is the one mutable object
(datasets are lazy, so broken rows are only discovered - and counted - when they are touched).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

from ..errors import DatasetError

QUALITY_KEYS = ("compositeStructure", "objectConsistency", "imageQuality")

# Every reason a row can be dropped, with the sentence the report prints for it.
REASONS = {
    # filtered: a policy decision taken on the metadata when the dataset is opened
    "low_quality": "a quality score below the minimum",
    "no_quality_assessment": "no quality assessment (null struct or null score)",
    "collection_excluded": "collection not in the selected collections",
    "bad_metadata": "missing or malformed metadata (description / json / captions)",
    "unrecognised_folder": "sub-folder is neither a multi-subject sample nor a single-subject pair",
    "ambiguous_folder": "sub-folder holds both target.* and panel_*.* files",
    "other_kind": "sample of the other kind than the one requested (folder_kind)",
    # skipped: broken data, found when opening (missing files) or when an image is decoded
    "missing_image": "image missing (null cell or file not found)",
    "corrupt_image": "image bytes that cannot be decoded",
    "wrong_size": "image smaller than min_side, or a diptych whose shape is not about 2:1",
    "bad_layout": "no two-panel layout found in the diptych (padding not detected)",
    "empty_caption": "a subject caption that is empty or only spaces",
    "outside_dataset": "an image or file path leading outside the dataset's folder (refused)",
}
EXAMPLES_PER_REASON = 3


@dataclass(frozen=True)
class SubjectPair:
    """One single-subject pair: two pictures of the same subject in different scenes."""

    item: str
    category: str
    panels: tuple[Image.Image, Image.Image]
    descriptions: tuple[str, str]
    key: str


@dataclass(frozen=True)
class MultiSubjectSample:
    """What the trainer consumes: conditions (+ their captions), a target and its prompt."""

    cond_images: tuple[Image.Image, ...]
    cond_captions: tuple[str, ...]
    target: Image.Image
    prompt: str
    key: str


@dataclass(frozen=True)
class ReadOptions:
    """How datasets are read and filtered. Every field is a documented default (docs/DATASETS.md).

    min_quality:    Subjects200K rows are kept when all three quality scores are >= this
                    (None turns the filter off; a null assessment is then accepted).
    padding:        Subjects200K diptych padding in px; None detects it per picture.
    pad_tolerance:  max per-channel difference from the padding colour (auto-detection).
    min_side:       images (or detected panels) with a side below this are skipped (wrong_size).
    collections:    keep only these Subjects200K ``collection`` values (None keeps all).
    folder_kind:    "auto", "pairs" or "multi": which samples of a plain folder to read.
    row_group_cache: parquet row groups kept decoded in memory (random access reads whole groups).
    """

    min_quality: int | None = 5
    padding: int | None = None
    pad_tolerance: int = 24
    min_side: int = 64
    collections: tuple[str, ...] | None = None
    folder_kind: str = "auto"
    row_group_cache: int = 2

    def __post_init__(self):
        for name in ("pad_tolerance", "min_side", "row_group_cache"):
            value, least = getattr(self, name), (1 if name == "row_group_cache" else 0)
            if not isinstance(value, int) or value < least:
                raise DatasetError(f"ReadOptions.{name} must be an int >= {least}, got {value!r}")
        if self.min_quality is not None and (not isinstance(self.min_quality, (int, float))
                                             or isinstance(self.min_quality, bool)):
            raise DatasetError(f"ReadOptions.min_quality must be a number or None (no filter), "
                               f"got {self.min_quality!r}")
        if self.padding is not None and (not isinstance(self.padding, int) or self.padding < 0):
            raise DatasetError(f"ReadOptions.padding must be None (auto) or an int >= 0, "
                               f"got {self.padding!r}")
        if self.folder_kind not in ("auto", "pairs", "multi"):
            raise DatasetError(f"ReadOptions.folder_kind must be 'auto', 'pairs' or 'multi', "
                               f"got {self.folder_kind!r}")
        if self.collections is not None:
            object.__setattr__(self, "collections", tuple(self.collections))

    def with_settings(self, settings: dict) -> ReadOptions:
        """A copy with ``settings`` applied; unknown names raise a DatasetError listing the valid."""
        valid = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            raise DatasetError(f"unknown dataset setting(s) {unknown}: expected some of {valid}")
        return dataclasses.replace(self, **settings)


@dataclass
class ReadReport:
    """Counts of what a dataset read, filtered (policy) and skipped (broken data), with examples.

    ``filtered`` is decided on metadata when the dataset opens; ``skipped`` grows while images
    are decoded (a lazy dataset only knows a row is corrupt once it touches it).
    """

    source: str
    layout: str
    rows_read: int = 0
    filtered: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def add_filtered(self, reason: str, count: int, example_keys=()) -> None:
        if count:
            self.filtered[reason] += count
            self._remember(reason, example_keys)

    def add_skipped(self, reason: str, key: str) -> None:
        self.skipped[reason] += 1
        self._remember(reason, [key])

    def _remember(self, reason: str, keys) -> None:
        kept = self.examples.setdefault(reason, [])
        for key in keys:
            if len(kept) >= EXAMPLES_PER_REASON:
                break
            kept.append(key)

    @property
    def usable(self) -> int:
        """Rows not filtered and not (yet) found broken."""
        return self.rows_read - sum(self.filtered.values()) - sum(self.skipped.values())

    def summary(self) -> str:
        """Human-readable account, one line per reason."""
        lines = [f"{self.layout} dataset '{self.source}': read {self.rows_read} rows, "
                 f"{self.usable} usable, {sum(self.filtered.values())} filtered, "
                 f"{sum(self.skipped.values())} skipped"]
        for title, counts in (("filtered", self.filtered), ("skipped", self.skipped)):
            for reason, count in sorted(counts.items()):
                examples = ", ".join(self.examples.get(reason, []))
                lines.append(f"  {title} {count} x {reason} ({REASONS.get(reason, reason)})"
                             + (f", e.g. {examples}" if examples else ""))
        return "\n".join(lines)
