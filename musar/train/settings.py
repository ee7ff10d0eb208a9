"""The training nodes' settings, with the trainer they feed: MUSAR Load Diptych Dataset
(``DatasetSettings``, also the CLI YAML's ``dataset`` section), MUSAR Train Dual LoRA
(``TrainingSettings``: the node's subset of ``TrainConfig``, the YAML's ``train`` section, plus
the run's name and resume choice) and MUSAR Save Dual LoRA (``SaveSettings``).

One vocabulary: a setting has the same name on the node, in the YAML config and in the code
(``grad_accumulation``, ``validation_every``, ``reference_size``, ``condition_dropout`` ...), and
one rules table: a ``TrainingSettings`` field takes its rule from ``config.RULES``, so the node's
widget ranges are what the trainer accepts. Fields are declared with ``checks.setting`` as in
musar/settings.py (default, rule, tooltip).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..checks import FLAG, TEXT, Limit, check_values, complete, rules_of, setting
from ..data.diptych import DEFAULT_PROMPT_TEMPLATE, check_template
from ..data.readers import LAYOUTS
from ..errors import DatasetError, TrainingError
from ..settings import LATENT_CELLS, REFERENCE_SIZE
from .config import RULES, TrainConfig

RESUME = ("none", "latest")
SIZE = Limit(64, 4096, 16, integer=True, multiple=16, why=LATENT_CELLS)
SHARE = Limit(0.0, 1.0, 0.01)


# ---- MUSAR Load Diptych Dataset / the YAML's dataset section -----------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSettings:
    path: str = setting("", TEXT, "A .parquet file, a folder of parquet shards, or a folder in "
                        "the folder layout (see the help page).")
    layout: str = setting("auto", LAYOUTS, "auto: recognised by the parquet columns / folder files.")
    min_quality: int = setting(5, Limit(0, 10, 1, integer=True), "Subjects200K: keep rows whose "
                               "three quality scores are all >= this (0 = no filter). 5 as "
                               "OminiControl [chosen].")
    target_width: int = setting(1024, SIZE, "Width of the two-panel target image.")
    target_height: int = setting(512, SIZE, "Height of the target image.")
    reference_size: int = setting(512, REFERENCE_SIZE,
                                  "Side of each condition image (centre crop).")
    prompt_template: str = setting(DEFAULT_PROMPT_TEMPLATE, TEXT, "Diptych prompt; placeholders "
                                   "{desc_a} {desc_b} {item_a} {item_b} {desc_left} {desc_right} "
                                   "... (pairs only).", multiline=True)
    prompt_dropout: float = setting(0.0, SHARE, "Share of samples with an empty prompt.")
    condition_dropout: float = setting(0.0, SHARE, "Chance that each condition is dropped from "
                                       "a sample (the target still shows it).")
    seed: int = setting(0, RULES["seed"], "Seed of every sampling choice (pairs, panels, order, "
                        "dropout).", control_after_generate=False)

    def __post_init__(self):
        check_dataset(complete(self, DatasetError))


def check_dataset(values: Mapping) -> None:
    """Every rule of the dataset settings (the node confines the path to the dataset folders);
    DatasetError naming the input."""
    v = check_values(DatasetError, values, rules_of(DatasetSettings))
    if "prompt_template" in v:
        check_template(v["prompt_template"])


# ---- MUSAR Train Dual LoRA / the YAML's train section ------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    steps: int = setting(1000, RULES["steps"], "Optimizer steps.")
    learning_rate: float = setting(1e-4, RULES["learning_rate"], "AdamW learning rate (Prodigy: "
                                   "1.0).", round=False)
    noisy_rank: int = setting(4, RULES["noisy_rank"], "Rank of the noisy-image branch (low, so "
                              "it cannot learn the diptych layout).")
    subject_rank: int = setting(64, RULES["subject_rank"], "Rank of the subject (reference "
                                "image) branch.")
    batch_size: int = setting(1, RULES["batch_size"], "Samples per forward (samples with "
                              "different token layouts run as separate forwards, same weight).")
    grad_accumulation: int = setting(1, RULES["grad_accumulation"], "Micro-batches per optimizer step.")
    optimizer: str = setting("adamw", RULES["optimizer"], "adamw, or prodigy (needs the "
                             "prodigyopt package; use lr 1.0).")
    precision: str = setting("fp32", RULES["precision"], "bf16 autocast for the forward; LoRA "
                             "and optimizer stay fp32.")
    gradient_checkpointing: bool = setting(False, FLAG, "Recompute block activations in the "
                                           "backward pass: much less memory, about a third slower.")
    seed: int = setting(0, RULES["seed"], "Seed of the LoRA init, sample order, timesteps and "
                        "noise.", control_after_generate=False)
    checkpoint_every: int = setting(500, RULES["checkpoint_every"], "Write a checkpoint every N "
                                    "steps (0: only at the end); the last 3 are kept.")
    output_name: str = setting("musar_dual_lora", TEXT, "Run name: checkpoint folder under "
                               "output/musar_training/.")
    resume: str = setting("none", RESUME, "latest: continue from this run's newest checkpoint "
                          "(same settings and data); none: start fresh.")
    validation_every: int = setting(0, RULES["validation_every"], "Sample a validation image "
                                    "every N steps (fixed seed and subjects; 0: off).")

    def __post_init__(self):
        check_training(complete(self, TrainingError))

    def config(self) -> TrainConfig:
        """The trainer's settings: the fields both have, by name (the trainer adds its own rules)."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


def check_training(values: Mapping) -> None:
    """The rules of MUSAR Train Dual LoRA's settings (the run folder is resolved by the node;
    TrainConfig adds the trainer's cross-setting rules); TrainingError naming the input."""
    check_values(TrainingError, values, rules_of(TrainingSettings))


# ---- MUSAR Save Dual LoRA ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class SaveSettings:
    filename_prefix: str = setting("musar/dual_lora", TEXT, "Path under models/loras; a counter is "
                                   "appended, nothing is overwritten.")

    def __post_init__(self):
        check_save(complete(self, TrainingError))


def check_save(values: Mapping) -> None:
    """MUSAR Save Dual LoRA's setting (the node confines it to models/loras); TrainingError."""
    check_values(TrainingError, values, rules_of(SaveSettings))
