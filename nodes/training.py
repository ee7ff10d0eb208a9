"""Training nodes: MUSAR_LoadDiptychDataset -> MUSAR_TrainDualLoRA -> MUSAR_SaveDualLoRA.

Translation only: the loop lives in musar/train, the ComfyUI services in train_glue.py.
"""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io, ui

from ..musar.data import DEFAULT_PROMPT_TEMPLATE
from ..musar.data.diptych import check_template
from ..musar.data.readers import LAYOUTS
from ..musar.errors import DatasetError, TrainingError
from ..musar.lora import save_dual_lora
from ..musar.train import OPTIMIZERS, PRECISIONS, CheckpointStore, TrainConfig
from ..musar.train.dataset import open_training_set
from . import inputs, paths, train_glue
from .types import DATASET, DUAL_LORA

logger = logging.getLogger(__name__)
RESUME = ("none", "latest")
MAX_STEPS = 1_000_000
BOUNDS = {  # every number widget's (min, max): the schema and the execute-time checks share them
    "min_quality": (0, 10), "target_width": (64, 4096), "target_height": (64, 4096),
    "reference_size": (64, 2048), "prompt_dropout": (0.0, 1.0), "condition_dropout": (0.0, 1.0),
    "seed": (0, 2**31 - 1), "steps": (1, MAX_STEPS), "learning_rate": (1e-7, 10.0),
    "noisy_rank": (0, 3072), "subject_rank": (0, 3072), "batch_size": (1, 64),
    "grad_accumulation": (1, 256), "checkpoint_every": (0, MAX_STEPS),
    "validation_every": (0, MAX_STEPS)}
paths.register_folders()


def _int(name, default, tip, step=1, **kw):
    low, high = BOUNDS[name]
    return io.Int.Input(name, default=default, min=low, max=high, step=step, tooltip=tip, **kw)


def _float(name, default, step, tip, **kw):
    low, high = BOUNDS[name]
    return io.Float.Input(name, default=default, min=low, max=high, step=step, tooltip=tip, **kw)


def _numbers(error, **values) -> None:
    for name, value in values.items():
        inputs.number(name, value, *BOUNDS[name], error, integer=isinstance(BOUNDS[name][0], int))


def _check_dataset(path=None, layout=None, min_quality=None, target_width=None, target_height=None,
                   reference_size=None, prompt_template=None, prompt_dropout=None,
                   condition_dropout=None, seed=None, running=False) -> str | None:
    """The resolved dataset path (None when ``path`` is linked); DatasetError for a bad value.
    A path must lie inside the dataset folders at validation; it must also exist when running."""
    inputs.choice("layout", layout, LAYOUTS, DatasetError)
    sizes = dict(target_width=target_width, target_height=target_height, reference_size=reference_size)
    _numbers(DatasetError, min_quality=min_quality, prompt_dropout=prompt_dropout,
             condition_dropout=condition_dropout, seed=seed, **sizes)
    odd = [k for k, v in sizes.items() if v is not None and v % 16]
    if odd:
        raise DatasetError(f"{', '.join(odd)} must be multiples of 16 (FLUX latents are 2x2 "
                           f"packed 8x VAE cells), got {', '.join(str(sizes[k]) for k in odd)}")
    if prompt_template is not None:
        check_template(prompt_template)
    return None if path is None else paths.dataset_path(path, must_exist=running)


def _check_training(steps=None, learning_rate=None, noisy_rank=None, subject_rank=None,
                    batch_size=None, grad_accumulation=None, optimizer=None, precision=None,
                    gradient_checkpointing=None, seed=None, checkpoint_every=None,
                    output_name=None, resume=None, validation_every=None) -> str | None:
    """The resolved run folder (None when ``output_name`` is linked); TrainingError otherwise."""
    _numbers(TrainingError, steps=steps, learning_rate=learning_rate, noisy_rank=noisy_rank,
             subject_rank=subject_rank, batch_size=batch_size, grad_accumulation=grad_accumulation,
             seed=seed, checkpoint_every=checkpoint_every, validation_every=validation_every)
    inputs.choice("optimizer", optimizer, OPTIMIZERS, TrainingError)
    inputs.choice("precision", precision, PRECISIONS, TrainingError)
    inputs.choice("resume", resume, RESUME, TrainingError)
    inputs.choice("gradient_checkpointing", gradient_checkpointing, (True, False), TrainingError)
    return None if output_name is None else paths.run_folder(output_name)


class MusarLoadDiptychDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_LoadDiptychDataset", display_name="MUSAR Load Diptych Dataset",
            category="MUSAR/training", is_experimental=True,
            description=(
                "Opens training data on local disk (Subjects200K or MUSAR-Gen parquet, or a folder) "
                "and turns it into two-subject samples: single-subject pairs go through the "
                "debiased diptych builder. Reports how many rows were read, kept and filtered."),
            inputs=[
                io.String.Input("path", default="", tooltip="A .parquet file, a folder of parquet "
                                "shards, or a folder in the folder layout (see the help page)."),
                io.Combo.Input("layout", options=list(LAYOUTS), default="auto",
                               tooltip="auto: recognised by the parquet columns / folder files."),
                _int("min_quality", 5, "Subjects200K: keep rows whose three quality scores "
                     "are all >= this (0 = no filter). 5 as OminiControl."),
                _int("target_width", 1024, "Width of the two-panel target image.", 16),
                _int("target_height", 512, "Height of the target image.", 16),
                _int("reference_size", 512, "Side of each condition image (centre crop).", 16),
                io.String.Input("prompt_template", default=DEFAULT_PROMPT_TEMPLATE, multiline=True,
                                tooltip="Diptych prompt; placeholders {desc_a} {desc_b} {item_a} "
                                        "{item_b} {desc_left} {desc_right} ... (pairs only)."),
                _float("prompt_dropout", 0.0, 0.01, "Share of samples with an empty prompt."),
                _float("condition_dropout", 0.0, 0.01, "Chance that each condition is "
                       "dropped from a sample (the target still shows it)."),
                _int("seed", 0, "Seed of every sampling choice (pairs, panels, order, "
                     "dropout).", control_after_generate=False),
            ],
            outputs=[DATASET.Output(display_name="dataset")],
        )

    @classmethod
    def validate_inputs(cls, path, layout, target_width, target_height, reference_size,
                        prompt_template, prompt_dropout, condition_dropout):
        return inputs.validation(
            _check_dataset, path=path, layout=layout, target_width=target_width,
            target_height=target_height, reference_size=reference_size,
            prompt_template=prompt_template, prompt_dropout=prompt_dropout,
            condition_dropout=condition_dropout)

    @classmethod
    def execute(cls, path, layout, min_quality, target_width, target_height, reference_size,
                prompt_template, prompt_dropout, condition_dropout, seed) -> io.NodeOutput:
        values = dict(path=path, layout=layout, min_quality=min_quality, target_width=target_width,
                      target_height=target_height, reference_size=reference_size,
                      prompt_template=prompt_template, prompt_dropout=prompt_dropout,
                      condition_dropout=condition_dropout, seed=seed)
        inputs.linked_values(DatasetError, **values)
        data = open_training_set(_check_dataset(**values, running=True), layout, min_quality,
                                 (target_height, target_width), reference_size, prompt_template,
                                 prompt_dropout, condition_dropout, seed)
        logger.info("MUSAR dataset: %s", data.summary)
        text = f"{data.summary}\n{len(data)} samples per epoch ({data.description['kind']})"
        return io.NodeOutput(data, ui=ui.PreviewText(text))


class MusarTrainDualLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_TrainDualLoRA", display_name="MUSAR Train Dual LoRA",
            category="MUSAR/training", is_experimental=True,
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
                _int("steps", 1000, "Optimizer steps."),
                _float("learning_rate", 1e-4, 1e-5, "AdamW learning rate (Prodigy: 1.0).",
                       round=False),
                _int("noisy_rank", 4, "Rank of the noisy-image branch (low, so it cannot "
                     "learn the diptych layout)."),
                _int("subject_rank", 64, "Rank of the subject (reference image) branch."),
                _int("batch_size", 1, "Samples per forward (samples with different token "
                     "layouts run as separate forwards, same weight)."),
                _int("grad_accumulation", 1, "Micro-batches per optimizer step."),
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default="adamw",
                               tooltip="adamw, or prodigy (needs the prodigyopt package; use lr 1.0)."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="fp32",
                               tooltip="bf16 autocast for the forward; LoRA and optimizer stay fp32."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute block activations in the backward pass: much "
                                         "less memory, about a third slower."),
                _int("seed", 0, "Seed of the LoRA init, sample order, timesteps and "
                     "noise.", control_after_generate=False),
                _int("checkpoint_every", 500, "Write a checkpoint every N steps (0: "
                     "only at the end); the last 3 are kept."),
                io.String.Input("output_name", default="musar_dual_lora",
                                tooltip="Run name: checkpoint folder under output/musar_training/."),
                io.Combo.Input("resume", options=list(RESUME), default="none",
                               tooltip="latest: continue from this run's newest checkpoint (same "
                                       "settings and data); none: start fresh."),
                _int("validation_every", 0, "Sample a validation image every N steps "
                     "(fixed seed and subjects; 0: off)."),
            ],
            outputs=[DUAL_LORA.Output(display_name="lora"),
                     io.Image.Output(display_name="loss_graph"),
                     io.Image.Output(display_name="validation")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, learning_rate, optimizer, precision, output_name, resume):
        return inputs.validation(_check_training, learning_rate=learning_rate, optimizer=optimizer,
                                 precision=precision, output_name=output_name, resume=resume)

    @classmethod
    def execute(cls, model, clip, vae, dataset, steps, learning_rate, noisy_rank, subject_rank,
                batch_size, grad_accumulation, optimizer, precision, gradient_checkpointing, seed,
                checkpoint_every, output_name, resume, validation_every) -> io.NodeOutput:
        values = dict(steps=steps, learning_rate=learning_rate, noisy_rank=noisy_rank,
                      subject_rank=subject_rank, batch_size=batch_size,
                      grad_accumulation=grad_accumulation, optimizer=optimizer, precision=precision,
                      gradient_checkpointing=gradient_checkpointing, seed=seed,
                      checkpoint_every=checkpoint_every, output_name=output_name, resume=resume,
                      validation_every=validation_every)
        inputs.linked_values(TrainingError, **values)
        folder = _check_training(**values)
        config = TrainConfig(steps=steps, learning_rate=learning_rate, noisy_rank=noisy_rank,
                             subject_rank=subject_rank, batch_size=batch_size,
                             grad_accum=grad_accumulation, optimizer=optimizer, precision=precision,
                             gradient_checkpointing=gradient_checkpointing, seed=seed,
                             checkpoint_every=checkpoint_every, validate_every=validation_every)
        store = CheckpointStore(folder, output_name.strip(), config.keep_checkpoints)
        result, curve, preview = train_glue.run_training(
            model, clip, vae, dataset, config, store, resume=resume,
            cache_dir=os.path.join(paths.training_root(), "encoding_cache"),
            node_id=cls.hidden.unique_id)
        return io.NodeOutput(result.lora, curve, preview)


class MusarSaveDualLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_SaveDualLoRA", display_name="MUSAR Save Dual LoRA",
            category="MUSAR/training", is_experimental=True, is_output_node=True,
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
        return inputs.validation(lambda p: p is None or paths.lora_save_target(p), filename_prefix)

    @classmethod
    def execute(cls, lora, filename_prefix) -> io.NodeOutput:
        inputs.linked_values(TrainingError, filename_prefix=filename_prefix)
        folder, name, counter = paths.lora_save_target(filename_prefix)
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
