"""Toy world: a synthetic world for measuring MUSAR on a CPU - the world, its exact measuring
instruments, the experiment scripts that train and evaluate toy models on it, and their weights
(``toyworld/weights``). Not part of the method (``musar/``); the pack uses only the codec and the
text encoder (``nodes/toy.py``, MUSAR_ToyWorldLoader, category MUSAR/testing).

world       subjects (shape x colour x pattern), scenes on named backgrounds, captions, held-out split
export      Subjects200K-layout pair parquet and text-to-image parquet writers
codec       ToyCodec: deterministic 16-channel, 8x-downscale linear latent codec (PCA)
textenc     ToyTextEncoder: deterministic word-embedding text encoder with position terms
detector    Detector: exact subject detection; score / aggregate: prompt-fidelity metrics

Scripts (run from the repository root, inside real ComfyUI through ``musar_run.runtime``):
``python -m toyworld.train_base``, ``.train_lora``, ``.eval``, ``.diagnose``, ``.demo``.

See docs/TOY_WORLD.md. The world modules are pure numpy / torch / PIL / pyarrow, import nothing
outside this package and never import ComfyUI.
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
