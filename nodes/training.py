"""Training nodes: MUSAR_LoadDiptychDataset -> MUSAR_TrainDualLoRA -> MUSAR_SaveDualLoRA.

Translation only: the loop lives in musar/train, the ComfyUI services in train_glue.py.
"""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io, ui

from ..musar.checks import verdict
from ..musar.data import DEFAULT_PROMPT_TEMPLATE
from ..musar.data.readers import LAYOUTS
from ..musar.errors import TrainingError
from ..musar.lora import save_dual_lora
from ..musar.settings import (
    RESUME,
    DatasetSettings,
    SaveSettings,
    TrainingSettings,
    check_dataset,
    check_save,
    check_training,
)
from ..musar.train import OPTIMIZERS, PRECISIONS, CheckpointStore
from ..musar.train.dataset import open_training_set
from . import paths, train_glue
from .inputs import number
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
                io.String.Input("path", default="", tooltip="A .parquet file, a folder of parquet "
                                "shards, or a folder in the folder layout (see the help page)."),
                io.Combo.Input("layout", options=list(LAYOUTS), default="auto",
                               tooltip="auto: recognised by the parquet columns / folder files."),
                number("min_quality", 5, "Subjects200K: keep rows whose three quality scores "
                       "are all >= this (0 = no filter). 5 as OminiControl."),
                number("target_width", 1024, "Width of the two-panel target image."),
                number("target_height", 512, "Height of the target image."),
                number("reference_size", 512, "Side of each condition image (centre crop)."),
                io.String.Input("prompt_template", default=DEFAULT_PROMPT_TEMPLATE, multiline=True,
                                tooltip="Diptych prompt; placeholders {desc_a} {desc_b} {item_a} "
                                        "{item_b} {desc_left} {desc_right} ... (pairs only)."),
                number("prompt_dropout", 0.0, "Share of samples with an empty prompt."),
                number("condition_dropout", 0.0, "Chance that each condition is "
                       "dropped from a sample (the target still shows it)."),
                number("seed", 0, "Seed of every sampling choice (pairs, panels, order, "
                       "dropout).", control_after_generate=False),
            ],
            outputs=[DATASET.Output(display_name="dataset")],
        )

    @classmethod
    def validate_inputs(cls, path, layout, target_width, target_height, reference_size,
                        prompt_template, prompt_dropout, condition_dropout):
        return verdict(check_dataset, dict(
            path=path, layout=layout, target_width=target_width, target_height=target_height,
            reference_size=reference_size, prompt_template=prompt_template,
            prompt_dropout=prompt_dropout, condition_dropout=condition_dropout),
            path=_validated_dataset_path)

    @classmethod
    def execute(cls, path, layout, min_quality, target_width, target_height, reference_size,
                prompt_template, prompt_dropout, condition_dropout, seed) -> io.NodeOutput:
        s = DatasetSettings(path=path, layout=layout, min_quality=min_quality,
                            target_width=target_width, target_height=target_height,
                            reference_size=reference_size, prompt_template=prompt_template,
                            prompt_dropout=prompt_dropout, condition_dropout=condition_dropout,
                            seed=seed)
        data = open_training_set(paths.dataset_path(s.path), s.layout, s.min_quality,
                                 (s.target_height, s.target_width), s.reference_size,
                                 s.prompt_template, s.prompt_dropout, s.condition_dropout, s.seed)
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
                number("steps", 1000, "Optimizer steps."),
                number("learning_rate", 1e-4, "AdamW learning rate (Prodigy: 1.0).", round=False),
                number("noisy_rank", 4, "Rank of the noisy-image branch (low, so it cannot "
                       "learn the diptych layout)."),
                number("subject_rank", 64, "Rank of the subject (reference image) branch."),
                number("batch_size", 1, "Samples per forward (samples with different token "
                       "layouts run as separate forwards, same weight)."),
                number("grad_accumulation", 1, "Micro-batches per optimizer step."),
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default="adamw",
                               tooltip="adamw, or prodigy (needs the prodigyopt package; use lr 1.0)."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="fp32",
                               tooltip="bf16 autocast for the forward; LoRA and optimizer stay fp32."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute block activations in the backward pass: much "
                                         "less memory, about a third slower."),
                number("seed", 0, "Seed of the LoRA init, sample order, timesteps and "
                       "noise.", control_after_generate=False),
                number("checkpoint_every", 500, "Write a checkpoint every N steps (0: "
                       "only at the end); the last 3 are kept."),
                io.String.Input("output_name", default="musar_dual_lora",
                                tooltip="Run name: checkpoint folder under output/musar_training/."),
                io.Combo.Input("resume", options=list(RESUME), default="none",
                               tooltip="latest: continue from this run's newest checkpoint (same "
                                       "settings and data); none: start fresh."),
                number("validation_every", 0, "Sample a validation image every N steps "
                       "(fixed seed and subjects; 0: off)."),
            ],
            outputs=[DUAL_LORA.Output(display_name="lora"),
                     io.Image.Output(display_name="loss_graph"),
                     io.Image.Output(display_name="validation")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, learning_rate, optimizer, precision, output_name, resume):
        return verdict(check_training, dict(learning_rate=learning_rate, optimizer=optimizer,
                                            precision=precision, output_name=output_name,
                                            resume=resume), output_name=paths.run_folder)

    @classmethod
    def execute(cls, model, clip, vae, dataset, steps, learning_rate, noisy_rank, subject_rank,
                batch_size, grad_accumulation, optimizer, precision, gradient_checkpointing, seed,
                checkpoint_every, output_name, resume, validation_every) -> io.NodeOutput:
        settings = TrainingSettings(
            steps=steps, learning_rate=learning_rate, noisy_rank=noisy_rank,
            subject_rank=subject_rank, batch_size=batch_size, grad_accumulation=grad_accumulation,
            optimizer=optimizer, precision=precision, gradient_checkpointing=gradient_checkpointing,
            seed=seed, checkpoint_every=checkpoint_every, output_name=output_name, resume=resume,
            validation_every=validation_every)
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
                io.String.Input("filename_prefix", default="musar/dual_lora",
                                tooltip="Path under models/loras; a counter is appended, nothing is "
                                        "overwritten."),
            ],
            outputs=[],
        )

    @classmethod
    def validate_inputs(cls, filename_prefix):
        return verdict(check_save, dict(filename_prefix=filename_prefix),
                       filename_prefix=paths.lora_save_target)

    @classmethod
    def execute(cls, lora, filename_prefix) -> io.NodeOutput:
        settings = SaveSettings(filename_prefix=filename_prefix)
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
