"""Training settings: one frozen, keyword-only dataclass, checked when it is made.

Every default is documented in docs/TRAINING.md; the ones marked [chosen] there are this pack's
choices (the MUSAR authors published no training code). ``TrainConfig.from_mapping`` is how the
CLI builds a config from the YAML's ``train`` section (unknown keys are an error that lists the
valid ones); MUSAR Train Dual LoRA builds it from its settings (musar/train/settings.py), whose
inputs have the same names and whose widget ranges are these rules. ``RULES`` is the one table
of what the trainer accepts (the primitive checks of musar/checks.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Mapping

from ..checks import FLAG, Limit, check_names, check_values, complete
from ..errors import TrainingError
from ..layout import POSITION_MODES

OPTIMIZERS = ("adamw", "prodigy")
PRECISIONS = ("fp32", "bf16")
ATTENTION_PLANS = ("static", "dense")
# Settings that shape the trajectory: a checkpoint resumes only under the same values.
TRAJECTORY_KEYS = ("noisy_rank", "subject_rank", "learning_rate", "optimizer", "weight_decay",
                   "grad_clip", "warmup_steps", "precision", "seed", "guidance", "t_mean", "t_std",
                   "position_mode", "attention")
MAX_RANK = 4096
MAX_STEPS = 1_000_000
COUNT, EVERY = Limit(1, math.inf, integer=True), Limit(0, math.inf, integer=True)
STEP_COUNT = Limit(0, MAX_STEPS, 1, integer=True)  # "every N steps" settings (0 = off)
RULES = {
    "steps": Limit(1, MAX_STEPS, 1, integer=True), "learning_rate": Limit(1e-7, 10.0, 1e-5),
    "noisy_rank": Limit(0, MAX_RANK, 1, integer=True), "subject_rank": Limit(0, MAX_RANK, 1, integer=True),
    "batch_size": Limit(1, 1024, 1, integer=True), "grad_accumulation": Limit(1, 1024, 1, integer=True),
    "optimizer": OPTIMIZERS, "weight_decay": Limit(0.0, 1.0), "grad_clip": Limit(0.0, 1e6),
    "warmup_steps": EVERY, "precision": PRECISIONS, "gradient_checkpointing": FLAG,
    "seed": Limit(0, 2**31 - 1, 1, integer=True), "guidance": Limit(0.0, 100.0),
    "t_mean": Limit(-10.0, 10.0), "t_std": Limit(0.0, 10.0, above=True),
    "position_mode": POSITION_MODES, "attention": ATTENTION_PLANS, "checkpoint_every": STEP_COUNT,
    "keep_checkpoints": COUNT, "validation_every": STEP_COUNT, "smoothing": Limit(0.0, 0.9999),
    "pre_encode": FLAG,
}
RENAMED = {"grad_accum": "grad_accumulation", "validate_every": "validation_every"}  # before Dec 2026


def check_config(values: Mapping) -> dict:
    """Every rule of a training config (None: not known, skipped); the known values normalised
    (whole numbers int, other numbers float). TrainingError naming the setting."""
    v = check_values(TrainingError, values, RULES)
    if v.get("noisy_rank") == 0 and v.get("subject_rank") == 0:
        raise TrainingError("noisy_rank and subject_rank are both 0: nothing would be trained; "
                            "expected at least one rank >= 1 (defaults: 4 and 64)")
    if v.get("optimizer") == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
        raise TrainingError("optimizer 'prodigy' needs the prodigyopt package, which is not "
                            "installed: pip install prodigyopt, or use optimizer 'adamw'")
    return v


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What a training run does (docs/TRAINING.md lists every field)."""

    steps: int = 1000
    learning_rate: float = 1e-4  # [chosen]
    noisy_rank: int = 4  # [chosen] low: the noisy branch must not learn the diptych layout
    subject_rank: int = 64  # [chosen]
    batch_size: int = 1  # samples per micro-batch (per process)
    grad_accumulation: int = 1  # micro-batches per optimizer step
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    warmup_steps: int = 0  # linear learning-rate warm-up
    precision: str = "fp32"  # "bf16": autocast; LoRA tensors and optimizer state stay fp32
    gradient_checkpointing: bool = False
    seed: int = 0
    guidance: float = 1.0  # [chosen, as OminiControl] for guidance-distilled models (FLUX.1-dev)
    t_mean: float = 0.0  # t = sigmoid(N(t_mean, t_std)) [chosen, as OminiControl]
    t_std: float = 1.0
    position_mode: str = "shared"  # subject position ids (musar.layout.subject_ids)
    attention: str = "static"  # "static": the paper's routing mask; "dense": no routing (baseline)
    checkpoint_every: int = 0  # 0: only at the end (and on cancel)
    keep_checkpoints: int = 3
    validation_every: int = 0  # 0: no validation images
    smoothing: float = 0.9  # EMA factor of the smoothed loss curve
    pre_encode: bool = True  # encode every sample of the run before the first step

    def __post_init__(self):
        for name, value in check_config(complete(self, TrainingError)).items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_mapping(cls, values: Mapping) -> TrainConfig:
        old = sorted(k for k in values if k in RENAMED)
        if old:
            raise TrainingError(f"training setting(s) renamed: {', '.join(f'{k} -> {RENAMED[k]}' for k in old)} "
                                "(the node, the YAML config and the trainer share one name per setting)")
        check_names(TrainingError, values, [f.name for f in dataclasses.fields(cls)],
                    "training setting")
        return cls(**dict(values))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def samples_per_step(self, world: int = 1) -> int:
        """Samples of one optimizer step over all processes (the global batch)."""
        return self.batch_size * self.grad_accumulation * world

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        return self.learning_rate


def trajectory_differences(saved: Mapping, current: TrainConfig, saved_world: int,
                           world: int) -> list[str]:
    """Settings that differ between a checkpoint's config and this run (resume must match)."""
    now = current.to_dict()
    # a setting added after a checkpoint was written had its default value in that run;
    # checkpoints written before the renames name some settings the old way
    saved = {RENAMED.get(k, k): v for k, v in saved.items()}
    old = {k: saved.get(k, TrainConfig.__dataclass_fields__[k].default) for k in TRAJECTORY_KEYS}
    diffs = [f"{k}: checkpoint {old[k]!r}, now {now[k]!r}" for k in TRAJECTORY_KEYS if old[k] != now[k]]
    before = int(saved.get("batch_size", 0)) * int(saved.get("grad_accumulation", 0)) * saved_world
    if before != current.samples_per_step(world):
        diffs.append(f"samples per step (batch_size x grad_accumulation x processes): checkpoint "
                     f"{before}, now {current.samples_per_step(world)}")
    return diffs
