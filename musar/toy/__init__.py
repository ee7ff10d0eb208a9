"""Toy world: a synthetic stand-in for FLUX-scale data, with exact measuring instruments.

world       subjects (shape x colour x pattern), scenes on named backgrounds, captions, held-out split
export      Subjects200K-layout pair parquet and text-to-image parquet writers
codec       ToyCodec: deterministic 16-channel, 8x-downscale linear latent codec (PCA)
textenc     ToyTextEncoder: deterministic word-embedding text encoder with position terms
detector    Detector: exact subject detection; score / aggregate: prompt-fidelity metrics

See docs/TOY_WORLD.md. Pure numpy / torch / PIL / pyarrow; never imports ComfyUI.
"""

from .codec import ToyCodec
from .detector import Detection, Detector, classify_pixels
from .export import export_pairs, export_text_to_image, make_pair
from .scoring import aggregate, score
from .textenc import ToyTextEncoder
from .world import (
    ALL_SUBJECTS,
    Placement,
    SceneTruth,
    Subject,
    SubjectTruth,
    World,
    caption,
    multi_caption,
)

__all__ = ["ALL_SUBJECTS", "Detection", "Detector", "Placement", "SceneTruth", "Subject", "SubjectTruth",
           "ToyCodec", "ToyTextEncoder", "World", "aggregate", "caption", "classify_pixels", "export_pairs",
           "export_text_to_image", "make_pair", "multi_caption", "score"]
