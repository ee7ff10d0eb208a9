"""Training settings: one frozen dataclass, validated when it is made.

Every default is documented in docs/TRAINING.md; the ones marked [chosen] there are this pack's
choices (the MUSAR authors published no training code). ``TrainConfig.from_mapping`` is how the
CLI and the node build a config: unknown keys are an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Mapping

from ..errors import TrainingError

OPTIMIZERS = ("adamw", "prodigy")
PRECISIONS = ("fp32", "bf16")
ATTENTION_PLANS = ("static", "dense")
# Settings that shape the trajectory: a checkpoint resumes only under the same values.
TRAJECTORY_KEYS = ("noisy_rank", "subject_rank", "learning_rate", "optimizer", "weight_decay",
                   "grad_clip", "warmup_steps", "precision", "seed", "guidance", "t_mean", "t_std",
                   "position_mode", "attention")
MAX_RANK = 4096


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What a training run does (docs/TRAINING.md lists every field)."""

    steps: int = 1000
    learning_rate: float = 1e-4  # [chosen]
    noisy_rank: int = 4  # [chosen] low: the noisy branch must not learn the diptych layout
    subject_rank: int = 64  # [chosen]
    batch_size: int = 1  # samples per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimizer step
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
    validate_every: int = 0  # 0: no validation images
    smoothing: float = 0.9  # EMA factor of the smoothed loss curve
    pre_encode: bool = True  # encode every sample of the run before the first step

    def __post_init__(self):
        _check_int(self, "steps", 1)
        _check_int(self, "batch_size", 1)
        _check_int(self, "grad_accum", 1)
        _check_int(self, "noisy_rank", 0, MAX_RANK)
        _check_int(self, "subject_rank", 0, MAX_RANK)
        for name in ("warmup_steps", "checkpoint_every", "validate_every", "seed"):
            _check_int(self, name, 0)
        _check_int(self, "keep_checkpoints", 1)
        if self.noisy_rank == 0 and self.subject_rank == 0:
            raise TrainingError("noisy_rank and subject_rank are both 0: nothing would be trained; "
                                "expected at least one rank >= 1 (defaults: 4 and 64)")
        _check_float(self, "learning_rate", 0.0, 10.0, open_low=True)
        _check_float(self, "weight_decay", 0.0, 1.0)
        _check_float(self, "grad_clip", 0.0, 1e6)
        _check_float(self, "guidance", 0.0, 100.0)
        _check_float(self, "t_mean", -10.0, 10.0)
        _check_float(self, "t_std", 0.0, 10.0, open_low=True)
        _check_float(self, "smoothing", 0.0, 0.9999)
        _check_choice(self, "optimizer", OPTIMIZERS)
        _check_choice(self, "precision", PRECISIONS)
        _check_choice(self, "position_mode", ("shared", "distinct", "kontext"))
        _check_choice(self, "attention", ATTENTION_PLANS)
        if self.optimizer == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
            raise TrainingError("optimizer 'prodigy' needs the prodigyopt package, which is not "
                                "installed: pip install prodigyopt, or use optimizer 'adamw'")

    @classmethod
    def from_mapping(cls, values: Mapping) -> TrainConfig:
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise TrainingError(f"unknown training setting(s) {unknown}: expected some of {valid}")
        return cls(**dict(values))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def samples_per_step(self, world: int = 1) -> int:
        """Samples of one optimizer step over all processes (the global batch)."""
        return self.batch_size * self.grad_accum * world

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        return self.learning_rate


def _check_int(cfg, name: str, low: int, high: int | None = None) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise TrainingError(f"{name} must be an integer {bound}, got {value!r}")


def _check_float(cfg, name: str, low: float, high: float, open_low: bool = False) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or (open_low and value == low):
        side = ">" if open_low else ">="
        raise TrainingError(f"{name} must be a number {side} {low} and <= {high}, got {value!r}")
    object.__setattr__(cfg, name, float(value))


def _check_choice(cfg, name: str, options: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in options:
        raise TrainingError(f"unknown {name} {value!r}: expected one of {', '.join(options)}")


def trajectory_differences(saved: Mapping, current: TrainConfig, saved_world: int,
                           world: int) -> list[str]:
    """Settings that differ between a checkpoint's config and this run (resume must match)."""
    now = current.to_dict()
    # a setting added after a checkpoint was written had its default value in that run
    old = {k: saved.get(k, TrainConfig.__dataclass_fields__[k].default) for k in TRAJECTORY_KEYS}
    diffs = [f"{k}: checkpoint {old[k]!r}, now {now[k]!r}" for k in TRAJECTORY_KEYS if old[k] != now[k]]
    before = int(saved.get("batch_size", 0)) * int(saved.get("grad_accum", 0)) * saved_world
    if before != current.samples_per_step(world):
        diffs.append(f"samples per step (batch_size x grad_accum x processes): checkpoint "
                     f"{before}, now {current.samples_per_step(world)}")
    return diffs
