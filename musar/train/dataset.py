"""Open a training set: a dataset on disk -> its sample source + a description for resume checks."""

from __future__ import annotations

import os

from ..data import DEFAULT_PROMPT_TEMPLATE, PairDataset, build_source, open_dataset
from ..errors import DatasetError
from .samples import TrainingSet


def open_training_set(path, layout: str = "auto", min_quality: int | None = 5,
                      target_width: int | None = 1024, target_height: int | None = 512,
                      reference_size: int = 512, prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
                      prompt_dropout: float = 0.0, condition_dropout: float = 0.0,
                      seed: int = 0) -> TrainingSet:
    """The sample source of ``path`` (DiptychBuilder for single-subject pairs, MultiSubjectSource
    for ready samples), with the arguments of ``DatasetSettings`` (same names). ``min_quality``
    None or 0 turns the Subjects200K filter off; ``target_width`` / ``target_height`` None keep a
    ready sample's target size."""
    target_size = None if target_width is None or target_height is None else (target_height, target_width)
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise DatasetError("the dataset path is empty: expected a .parquet file, a folder of "
                           "parquet shards or a sample folder")
    quality = None if not min_quality else min_quality
    dataset = open_dataset(os.path.expanduser(str(path).strip()), layout, min_quality=quality)
    settings = dict(target_size=target_size, reference_size=reference_size,
                    prompt_dropout=prompt_dropout, condition_dropout=condition_dropout)
    if isinstance(dataset, PairDataset):
        settings["prompt_template"] = prompt_template
    source = build_source(dataset, seed, **settings)
    description = {"path": os.path.abspath(os.path.expanduser(str(path).strip())),
                   "layout": dataset.report.layout, "kind": type(source).__name__,
                   "rows": len(dataset), "seed": int(seed), "min_quality": quality,
                   **{k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}}
    return TrainingSet(source, description, dataset.report.summary())
