"""Debiased diptych learning of the dual-branch LoRA (pure torch; docs/TRAINING.md).

    from musar.train import Trainer, TrainConfig, TrainingSet, Encoders, CheckpointStore
    trainer = Trainer(dm, TrainingSet(build_source(ds, seed=0), {...}), encoders,
                      TrainConfig(steps=1000), cache_dir="cache", store=CheckpointStore("ckpt", "run"))
    result = trainer.run(Callbacks(should_stop=...), resume="latest")

The ComfyUI side (nodes/train_glue.py) and the CLI (musar_train/) provide the encoders, the
validation sampler and the model; nothing here imports ComfyUI.
"""

from .checkpoint import CheckpointState, CheckpointStore, read_checkpoint
from .config import OPTIMIZERS, PRECISIONS, TrainConfig
from .distributed import Dist
from .history import LossHistory, placeholder_image, render_loss_curve
from .samples import EncodedSample, Encoders, SampleEncoder, TrainingSet
from .trainer import Callbacks, StepInfo, Trainer, TrainResult

__all__ = [
    "OPTIMIZERS", "PRECISIONS", "Callbacks", "CheckpointState", "CheckpointStore", "Dist",
    "EncodedSample", "Encoders", "LossHistory", "SampleEncoder", "StepInfo", "TrainConfig",
    "TrainResult", "Trainer", "TrainingSet", "placeholder_image", "read_checkpoint",
    "render_loss_curve",
]
