"""What the user chose on a MUSAR node: one frozen, keyword-only dataclass per node, built from
the node's inputs by name, and one check function per settings object - the single home of
every rule and its wording (the primitive checks are in musar/checks.py).

A check function takes the node's inputs as a mapping; ``None`` means "not known yet" (ComfyUI
passes None for an input linked from another node at validation time) and skips every rule that
needs that value. The node calls it from ``validate_inputs`` through ``checks.verdict`` (literal
values, before anything runs) and the dataclass calls it again on construction (every value,
linked ones included, at execute time; an empty one is refused). ComfyUI skips its own min /
max / combo checks for every input that ``validate_inputs`` names, and never checks V3 combos
or NaN, so the ranges and option lists live here and the node schemas read their min / max /
step from ``LIMITS``.

Where to add a setting: a field on the node's dataclass (same name and default as the node
input), its rule in the ``*_RULES`` table (a ``LIMITS`` entry for a number), a cross-field rule
in the check function if it has one; the node schema reads ``LIMITS[name].schema()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .checks import FLAG, TEXT, Limit, check_values, complete
from .data.diptych import DEFAULT_PROMPT_TEMPLATE, check_template
from .data.readers import LAYOUTS
from .errors import DatasetError, LayoutError, MusarError, RoutingError, TrainingError
from .images import CROP_MODES
from .layout import MAX_REFERENCES, POSITION_MODES
from .regions import REGION_MODES
from .routing import parse_blocks
from .train.config import OPTIMIZERS, PRECISIONS, TrainConfig

MAX_STEPS = 1_000_000
LIMITS = {  # every numeric node input: the node schema's min / max / step and its check
    # MUSAR Apply Routing / Route References, Routing Preview, Subject, Layout Region, Label
    "start_percent": Limit(0.0, 1.0, 0.01),
    "end_percent": Limit(0.0, 1.0, 0.01),
    "threshold": Limit(0.0, 1.0, 0.01),
    "smoothing": Limit(1, 15, 2, integer=True),
    "strength": Limit(0.0, 2.0, 0.05),
    "step": Limit(-1, 10000, 1, integer=True),
    "opacity": Limit(0.0, 1.0, 0.05),
    "reference_size": Limit(64, 2048, 16, integer=True),
    "region_strength": Limit(0.0, 1.0, 0.05),
    "reference": Limit(1, MAX_REFERENCES, 1, integer=True),
    # MUSAR Load Dual LoRA
    "strength_noisy": Limit(-2.0, 2.0, 0.05),
    "strength_subject": Limit(-2.0, 2.0, 0.05),
    # MUSAR Load Diptych Dataset (and reference_size above)
    "min_quality": Limit(0, 10, 1, integer=True),
    "target_width": Limit(64, 4096, 16, integer=True),
    "target_height": Limit(64, 4096, 16, integer=True),
    "prompt_dropout": Limit(0.0, 1.0, 0.01),
    "condition_dropout": Limit(0.0, 1.0, 0.01),
    "seed": Limit(0, 2**31 - 1, 1, integer=True),
    # MUSAR Train Dual LoRA (and seed above)
    "steps": Limit(1, MAX_STEPS, 1, integer=True),
    "learning_rate": Limit(1e-7, 10.0, 1e-5),
    "noisy_rank": Limit(0, 3072, 1, integer=True),
    "subject_rank": Limit(0, 3072, 1, integer=True),
    "batch_size": Limit(1, 64, 1, integer=True),
    "grad_accumulation": Limit(1, 256, 1, integer=True),
    "checkpoint_every": Limit(0, MAX_STEPS, 1, integer=True),
    "validation_every": Limit(0, MAX_STEPS, 1, integer=True),
}


def _rules(*names: str, **rules) -> dict:
    """A rules table: ``names`` take their ``LIMITS`` entry, ``rules`` are given."""
    return {**{name: LIMITS[name] for name in names}, **rules}


# ---- MUSAR Apply Routing, MUSAR Route References --------------------------------------------
ROUTING_RULES = {"static_routing": FLAG, "dynamic_routing": FLAG, **_rules("start_percent", "end_percent"),
                 "routing_blocks": TEXT, **_rules("threshold", "smoothing"), "symmetric": FLAG,
                 **_rules("strength"), "condition_cache": FLAG, "positions": POSITION_MODES,
                 "block_prompt_references": FLAG}


def check_routing(values: Mapping) -> None:
    """Every rule of the routing nodes' settings; RoutingError naming the input."""
    v = check_values(RoutingError, values, ROUTING_RULES)
    if "smoothing" in v and v["smoothing"] % 2 == 0:
        raise RoutingError(f"smoothing: expected an odd window size (1, 3, 5 ...), got {v['smoothing']}")
    if "routing_blocks" in v:
        parse_blocks(v["routing_blocks"])  # syntax only; indices are checked against the model
    if v.get("start_percent", 0.0) > v.get("end_percent", 1.0):
        raise RoutingError(f"start_percent ({v['start_percent']}) is after end_percent "
                           f"({v['end_percent']}): dynamic routing would never run; lower "
                           "start_percent or raise end_percent")
    if v.get("symmetric") and v.get("dynamic_routing") is False:
        raise RoutingError("symmetric routing restricts conditions to their routed region: it "
                           "needs dynamic routing on (turn dynamic_routing on or symmetric off)")
    if v.get("symmetric") and v.get("condition_cache"):
        raise RoutingError("symmetric routing and the condition cache conflict (cached conditions "
                           "are not recomputed, so their routed view cannot change): turn one off")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoutingSettings:
    """MUSAR Apply Routing's inputs (same names, same defaults)."""

    static_routing: bool = True
    dynamic_routing: bool = True
    start_percent: float = 0.2
    end_percent: float = 1.0
    routing_blocks: str = "double"
    threshold: float = 0.0
    smoothing: int = 3
    symmetric: bool = False
    strength: float = 1.0
    condition_cache: bool = False
    positions: str = "shared"
    block_prompt_references: bool = False  # MUSAR Route References only [chosen: off]

    def __post_init__(self):
        check_routing(complete(self, RoutingError))


# ---- MUSAR Routing Preview --------------------------------------------------------------------
PREVIEW_RULES = _rules("step", "opacity")


def check_preview(values: Mapping) -> None:
    """Every rule of MUSAR Routing Preview's settings; RoutingError naming the input."""
    check_values(RoutingError, values, PREVIEW_RULES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreviewSettings:
    step: int = -1
    opacity: float = 0.5

    def __post_init__(self):
        check_preview(complete(self, RoutingError))


# ---- MUSAR Subject ----------------------------------------------------------------------------
SUBJECT_RULES = {"caption": TEXT, "crop": CROP_MODES, **_rules("reference_size")}


def check_subject(values: Mapping) -> None:
    """Every rule of MUSAR Subject's settings; LayoutError naming the input."""
    v = check_values(LayoutError, values, SUBJECT_RULES)
    if "caption" in v and not v["caption"].strip():
        raise LayoutError("the subject caption is empty: describe the subject in a few words "
                          "(e.g. 'a red ceramic mug')")
    if v.get("reference_size", 16) % 16:
        raise LayoutError(f"reference_size: expected a multiple of 16, got {v['reference_size']}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubjectSettings:
    caption: str = "a subject"
    crop: str = "center crop"
    reference_size: int = 512

    def __post_init__(self):
        check_subject(complete(self, LayoutError))


# ---- MUSAR Layout Region ----------------------------------------------------------------------
REGION_RULES = {"mode": REGION_MODES, "strength": LIMITS["region_strength"]}


def check_region_settings(values: Mapping) -> None:
    """Every rule of MUSAR Layout Region's settings; RoutingError naming the input."""
    check_values(RoutingError, values, REGION_RULES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegionSettings:
    mode: str = "hard"
    strength: float = 0.5  # soft mode [chosen]: bias on the attention share, see musar.regions

    def __post_init__(self):
        check_region_settings(complete(self, RoutingError))


# ---- MUSAR Reference Label --------------------------------------------------------------------
LABEL_RULES = {**_rules("reference"), "caption": TEXT, "color": TEXT}


def check_label(values: Mapping) -> None:
    """Every rule of MUSAR Reference Label's settings; LayoutError naming the input."""
    v = check_values(LayoutError, values, LABEL_RULES)
    if "color" in v:
        parse_color(v["color"])


def parse_color(text: str) -> tuple[float, float, float] | None:
    """'#RRGGBB' (or 'RRGGBB') -> RGB 0..1; '' -> None (the palette colour)."""
    raw = text.strip().lstrip("#")
    if not raw:
        return None
    try:
        if len(raw) != 6:
            raise ValueError
        return tuple(int(raw[i:i + 2], 16) / 255 for i in (0, 2, 4))
    except ValueError:
        raise LayoutError(f"color: expected '#RRGGBB' (e.g. '#e53935') or empty for the palette "
                          f"colour, got {text!r}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelSettings:
    reference: int = 1
    caption: str = ""
    color: str = ""

    def __post_init__(self):
        check_label(complete(self, LayoutError))


# ---- MUSAR Load Dual LoRA ---------------------------------------------------------------------
LORA_RULES = {"lora_name": TEXT, **_rules("strength_noisy", "strength_subject")}


def check_lora_settings(values: Mapping) -> None:
    """Every rule of MUSAR Load Dual LoRA's settings (the file itself is looked up by the node,
    inside ComfyUI's loras folders); MusarError naming the input."""
    check_values(MusarError, values, LORA_RULES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRASettings:
    lora_name: str
    strength_noisy: float = 1.0
    strength_subject: float = 1.0

    def __post_init__(self):
        check_lora_settings(complete(self, MusarError))


# ---- MUSAR Load Diptych Dataset ---------------------------------------------------------------
DATASET_RULES = {"path": TEXT, "layout": LAYOUTS, **_rules("min_quality", "target_width", "target_height",
                                                           "reference_size"),
                 "prompt_template": TEXT, **_rules("prompt_dropout", "condition_dropout", "seed")}
SIZES = ("target_width", "target_height", "reference_size")


def check_dataset(values: Mapping) -> None:
    """Every rule of MUSAR Load Diptych Dataset's settings (the path is confined to the dataset
    folders by the node); DatasetError naming the input."""
    v = check_values(DatasetError, values, DATASET_RULES)
    odd = [name for name in SIZES if name in v and v[name] % 16]
    if odd:
        raise DatasetError(f"{', '.join(odd)} must be multiples of 16 (FLUX latents are 2x2 "
                           f"packed 8x VAE cells), got {', '.join(str(v[k]) for k in odd)}")
    if "prompt_template" in v:
        check_template(v["prompt_template"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSettings:
    path: str
    layout: str = "auto"
    min_quality: int = 5  # [chosen, as OminiControl]
    target_width: int = 1024
    target_height: int = 512
    reference_size: int = 512
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    prompt_dropout: float = 0.0
    condition_dropout: float = 0.0
    seed: int = 0

    def __post_init__(self):
        check_dataset(complete(self, DatasetError))


# ---- MUSAR Train Dual LoRA, MUSAR Save Dual LoRA ------------------------------------------------
RESUME = ("none", "latest")
TRAINING_RULES = {**_rules("steps", "learning_rate", "noisy_rank", "subject_rank", "batch_size",
                           "grad_accumulation"),
                  "optimizer": OPTIMIZERS, "precision": PRECISIONS, "gradient_checkpointing": FLAG,
                  **_rules("seed", "checkpoint_every"), "output_name": TEXT, "resume": RESUME,
                  **_rules("validation_every")}


def check_training(values: Mapping) -> None:
    """The node's rules of MUSAR Train Dual LoRA's settings (the run folder is resolved by the
    node; TrainConfig adds the trainer's own rules); TrainingError naming the input."""
    check_values(TrainingError, values, TRAINING_RULES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    steps: int = 1000
    learning_rate: float = 1e-4
    noisy_rank: int = 4
    subject_rank: int = 64
    batch_size: int = 1
    grad_accumulation: int = 1
    optimizer: str = "adamw"
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    output_name: str = "musar_dual_lora"
    resume: str = "none"
    validation_every: int = 0

    def __post_init__(self):
        check_training(complete(self, TrainingError))

    def config(self) -> TrainConfig:
        """The trainer's settings (its field names differ where the CLI's do)."""
        return TrainConfig(
            steps=self.steps, learning_rate=self.learning_rate, noisy_rank=self.noisy_rank,
            subject_rank=self.subject_rank, batch_size=self.batch_size,
            grad_accum=self.grad_accumulation, optimizer=self.optimizer, precision=self.precision,
            gradient_checkpointing=self.gradient_checkpointing, seed=self.seed,
            checkpoint_every=self.checkpoint_every, validate_every=self.validation_every)


def check_save(values: Mapping) -> None:
    """MUSAR Save Dual LoRA's setting (the node confines it to models/loras); TrainingError."""
    check_values(TrainingError, values, {"filename_prefix": TEXT})


@dataclasses.dataclass(frozen=True, kw_only=True)
class SaveSettings:
    filename_prefix: str = "musar/dual_lora"

    def __post_init__(self):
        check_save(complete(self, TrainingError))
