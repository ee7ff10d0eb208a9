"""Training data: dataset readers, the debiased diptych builder and the encoding cache.

Pure Python / torch / numpy / PIL / pyarrow; user documentation in docs/DATASETS.md.

    ds = open_dataset("Subjects200K/data", min_quality=5)   # PairDataset (lazy)
    source = build_source(ds, seed=0)                      # DiptychBuilder
    sample = source.sample(0)                              # MultiSubjectSample
    logger.info(ds.report.summary())
"""

from .cache import EncodingCache, image_to_tensor
from .datasets import LazyDataset, MultiSubjectDataset, PairDataset
from .diptych import DEFAULT_PROMPT_TEMPLATE, DiptychBuilder, DiptychPlan, MultiSubjectSource, build_source
from .images import detect_panels, split_diptych
from .readers import open_dataset
from .records import MultiSubjectSample, ReadOptions, ReadReport, SubjectPair

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE", "DiptychBuilder", "DiptychPlan", "EncodingCache", "LazyDataset",
    "MultiSubjectDataset", "MultiSubjectSample", "MultiSubjectSource", "PairDataset",
    "ReadOptions", "ReadReport", "SubjectPair", "build_source", "detect_panels",
    "image_to_tensor", "open_dataset", "split_diptych",
]
