"""Training nodes: MUSAR_LoadDiptychDataset -> MUSAR_TrainDualLoRA -> MUSAR_SaveDualLoRA.

Translation only: the loop lives in musar/train, the ComfyUI services in train_glue.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from comfy_api.latest import io, ui

from ..musar.errors import TrainingError
from ..musar.lora import save_dual_lora
from ..musar.train import CheckpointStore
from ..musar.train.dataset import open_training_set
from ..musar.train.settings import (
    DatasetSettings,
    SaveSettings,
    TrainingSettings,
    check_dataset,
    check_save,
    check_training,
)
from . import paths, train_glue
from .inputs import settings_of, validation, widgets
from .types import DATASET, DUAL_LORA

logger = logging.getLogger(__name__)
paths.register_folders()


def _schema(**kw) -> io.Schema:
    """A training node's schema: category MUSAR/training, experimental (house style)."""
    return io.Schema(category="MUSAR/training", is_experimental=True, **kw)


def _validated_dataset_path(path):
    return paths.dataset_path(path, must_exist=False)  # the run reports missing data


class MusarLoadDiptychDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            node_id="MUSAR_LoadDiptychDataset", display_name="MUSAR Load Diptych Dataset",
            description=(
                "Opens training data on local disk (Subjects200K or MUSAR-Gen parquet, or a folder) "
                "and turns it into two-subject samples: single-subject pairs go through the "
                "debiased diptych builder. Reports how many rows were read, kept and filtered."),
            inputs=[
                *widgets(DatasetSettings),
            ],
            outputs=[DATASET.Output(display_name="dataset")],
        )

    validate_inputs = validation(DatasetSettings, check_dataset, path=_validated_dataset_path)

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        s = settings_of(DatasetSettings, inputs)
        data = open_training_set(**{**dataclasses.asdict(s), "path": paths.dataset_path(s.path)})
        logger.info("MUSAR dataset: %s", data.summary)
        text = f"{data.summary}\n{len(data)} samples per epoch ({data.description['kind']})"
        return io.NodeOutput(data, ui=ui.PreviewText(text))


class MusarTrainDualLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            node_id="MUSAR_TrainDualLoRA", display_name="MUSAR Train Dual LoRA",
            description=(
                "Trains a MUSAR dual-branch LoRA (low-rank noisy branch on the generated image, "
                "high-rank subject branch on the reference images) with flow matching on the image "
                "tokens and static routing; the base model stays frozen. Checkpoints go to "
                "output/musar_training/<output_name>/; Cancel keeps the last step."),
            inputs=[
                io.Model.Input("model", tooltip="The plain FLUX.1 model from the loader (training does not change it)."),
                io.Clip.Input("clip", tooltip="FLUX's text encoder (prompts and subject captions)."),
                io.Vae.Input("vae", tooltip="FLUX's VAE (targets and references are encoded once, cached)."),
                DATASET.Input("dataset", tooltip="From MUSAR Load Diptych Dataset."),
                *widgets(TrainingSettings),
            ],
            outputs=[DUAL_LORA.Output(display_name="lora"),
                     io.Image.Output(display_name="loss_graph"),
                     io.Image.Output(display_name="validation")],
            hidden=[io.Hidden.unique_id],
        )

    validate_inputs = validation(TrainingSettings, check_training, output_name=paths.run_folder)

    @classmethod
    def execute(cls, model, clip, vae, dataset, **inputs) -> io.NodeOutput:
        settings = settings_of(TrainingSettings, inputs)
        folder = paths.run_folder(settings.output_name)
        config = settings.config()
        store = CheckpointStore(folder, settings.output_name.strip(), config.keep_checkpoints)
        result, curve, preview = train_glue.run_training(
            model, clip, vae, dataset, config, store, resume=settings.resume,
            cache_dir=os.path.join(paths.training_root(), "encoding_cache"),
            node_id=cls.hidden.unique_id)
        return io.NodeOutput(result.lora, curve, preview)


class MusarSaveDualLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema(
            node_id="MUSAR_SaveDualLoRA", display_name="MUSAR Save Dual LoRA", is_output_node=True,
            description=("Saves a trained dual-branch LoRA as .safetensors in models/loras (MUSAR "
                         "format, with ranks, targets, model size and training settings in its "
                         "metadata); MUSAR Load Dual LoRA reads it."),
            inputs=[
                DUAL_LORA.Input("lora", tooltip="The trained LoRA from MUSAR Train Dual LoRA."),
                *widgets(SaveSettings),
            ],
            outputs=[],
        )

    validate_inputs = validation(SaveSettings, check_save, filename_prefix=paths.lora_save_target)

    @classmethod
    def execute(cls, lora, **inputs) -> io.NodeOutput:
        settings = settings_of(SaveSettings, inputs)
        folder, name, counter = paths.lora_save_target(settings.filename_prefix)
        os.makedirs(folder, exist_ok=True)
        while os.path.exists(path := os.path.join(folder, f"{name}_{counter:05}_.safetensors")):
            counter += 1
        try:
            save_dual_lora(path, lora)
        except OSError as e:
            raise TrainingError(f"cannot write the LoRA to models/loras ({e.strerror or e}): "
                                "expected a writable models/loras folder") from None
        relative = os.path.relpath(path, paths.lora_root())
        logger.info("saved MUSAR dual LoRA %s", path)
        return io.NodeOutput(ui=ui.PreviewText(f"saved loras/{relative}"))


NODES = [MusarLoadDiptychDataset, MusarTrainDualLoRA, MusarSaveDualLoRA]
