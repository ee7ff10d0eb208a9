"""Training nodes: MUSAR_LoadDiptychDataset -> MUSAR_TrainDualLoRA -> MUSAR_SaveDualLoRA.

Translation only: the loop lives in musar/train, the ComfyUI services in train_glue.py.
"""

from __future__ import annotations

import logging
import os

import folder_paths
from comfy_api.latest import io, ui

from ..musar.data import DEFAULT_PROMPT_TEMPLATE
from ..musar.data.readers import LAYOUTS
from ..musar.errors import TrainingError
from ..musar.lora import save_dual_lora
from ..musar.train import OPTIMIZERS, PRECISIONS, CheckpointStore, TrainConfig
from ..musar.train.dataset import open_training_set
from . import train_glue
from .types import DATASET, DUAL_LORA

logger = logging.getLogger(__name__)
RESUME = ("none", "latest")
MAX_STEPS = 1_000_000


def _int(name, default, low, high, tip, step=1, **kw):
    return io.Int.Input(name, default=default, min=low, max=high, step=step, tooltip=tip, **kw)


def _float(name, default, low, high, step, tip, **kw):
    return io.Float.Input(name, default=default, min=low, max=high, step=step, tooltip=tip, **kw)


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
                _int("min_quality", 5, 0, 10, "Subjects200K: keep rows whose three quality scores "
                     "are all >= this (0 = no filter). 5 as OminiControl."),
                _int("target_width", 1024, 64, 4096, "Width of the two-panel target image.", 16),
                _int("target_height", 512, 64, 4096, "Height of the target image.", 16),
                _int("reference_size", 512, 64, 2048, "Side of each condition image (centre crop).", 16),
                io.String.Input("prompt_template", default=DEFAULT_PROMPT_TEMPLATE, multiline=True,
                                tooltip="Diptych prompt; placeholders {desc_a} {desc_b} {item_a} "
                                        "{item_b} {desc_left} {desc_right} ... (pairs only)."),
                _float("prompt_dropout", 0.0, 0.0, 1.0, 0.01, "Share of samples with an empty prompt."),
                _float("condition_dropout", 0.0, 0.0, 1.0, 0.01, "Chance that each condition is "
                       "dropped from a sample (the target still shows it)."),
                _int("seed", 0, 0, 2**31 - 1, "Seed of every sampling choice (pairs, panels, order, "
                     "dropout).", control_after_generate=False),
            ],
            outputs=[DATASET.Output(display_name="dataset")],
        )

    @classmethod
    def validate_inputs(cls, target_width, target_height, reference_size, **_):
        if target_width % 16 or target_height % 16 or reference_size % 16:
            return "target_width, target_height and reference_size must be multiples of 16"
        return True

    @classmethod
    def execute(cls, path, layout, min_quality, target_width, target_height, reference_size,
                prompt_template, prompt_dropout, condition_dropout, seed) -> io.NodeOutput:
        data = open_training_set(path, layout, min_quality, (target_height, target_width),
                                 reference_size, prompt_template, prompt_dropout, condition_dropout,
                                 seed)
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
                _int("steps", 1000, 1, MAX_STEPS, "Optimizer steps."),
                _float("learning_rate", 1e-4, 1e-7, 10.0, 1e-5, "AdamW learning rate (Prodigy: 1.0).",
                       round=False),
                _int("noisy_rank", 4, 0, 3072, "Rank of the noisy-image branch (low, so it cannot "
                     "learn the diptych layout)."),
                _int("subject_rank", 64, 0, 3072, "Rank of the subject (reference image) branch."),
                _int("batch_size", 1, 1, 64, "Samples per forward (samples with different token "
                     "layouts run as separate forwards, same weight)."),
                _int("grad_accumulation", 1, 1, 256, "Micro-batches per optimizer step."),
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default="adamw",
                               tooltip="adamw, or prodigy (needs the prodigyopt package; use lr 1.0)."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="fp32",
                               tooltip="bf16 autocast for the forward; LoRA and optimizer stay fp32."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute block activations in the backward pass: much "
                                         "less memory, about a third slower."),
                _int("seed", 0, 0, 2**31 - 1, "Seed of the LoRA init, sample order, timesteps and "
                     "noise.", control_after_generate=False),
                _int("checkpoint_every", 500, 0, MAX_STEPS, "Write a checkpoint every N steps (0: "
                     "only at the end); the last 3 are kept."),
                io.String.Input("output_name", default="musar_dual_lora",
                                tooltip="Run name: checkpoint folder under output/musar_training/."),
                io.Combo.Input("resume", options=list(RESUME), default="none",
                               tooltip="latest: continue from this run's newest checkpoint (same "
                                       "settings and data); none: start fresh."),
                _int("validation_every", 0, 0, MAX_STEPS, "Sample a validation image every N steps "
                     "(fixed seed and subjects; 0: off)."),
            ],
            outputs=[DUAL_LORA.Output(display_name="lora"),
                     io.Image.Output(display_name="loss_graph"),
                     io.Image.Output(display_name="validation")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, output_name, **_):
        if not output_name.strip() or any(c in output_name for c in "/\\") or output_name.strip(". ") == "":
            return "output_name must be a plain name (no folders), e.g. musar_dual_lora"
        return True

    @classmethod
    def execute(cls, model, clip, vae, dataset, steps, learning_rate, noisy_rank, subject_rank,
                batch_size, grad_accumulation, optimizer, precision, gradient_checkpointing, seed,
                checkpoint_every, output_name, resume, validation_every) -> io.NodeOutput:
        config = TrainConfig(steps=steps, learning_rate=learning_rate, noisy_rank=noisy_rank,
                             subject_rank=subject_rank, batch_size=batch_size,
                             grad_accum=grad_accumulation, optimizer=optimizer, precision=precision,
                             gradient_checkpointing=gradient_checkpointing, seed=seed,
                             checkpoint_every=checkpoint_every, validate_every=validation_every)
        root = os.path.join(folder_paths.get_output_directory(), "musar_training")
        store = CheckpointStore(os.path.join(root, output_name.strip()), output_name.strip(),
                                config.keep_checkpoints)
        result, curve, preview = train_glue.run_training(
            model, clip, vae, dataset, config, store, resume=resume,
            cache_dir=os.path.join(root, "encoding_cache"), node_id=cls.hidden.unique_id)
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
    def execute(cls, lora, filename_prefix) -> io.NodeOutput:
        loras = folder_paths.get_folder_paths("loras")[0]
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, loras)
        os.makedirs(folder, exist_ok=True)
        while os.path.exists(path := os.path.join(folder, f"{name}_{counter:05}_.safetensors")):
            counter += 1
        try:
            save_dual_lora(path, lora)
        except OSError as e:
            raise TrainingError(f"cannot write the LoRA to '{path}' ({e.strerror or e}): expected a "
                                "writable models/loras folder") from None
        relative = os.path.relpath(path, loras)
        logger.info("saved MUSAR dual LoRA %s", path)
        return io.NodeOutput(ui=ui.PreviewText(f"saved loras/{relative}"))


NODES = [MusarLoadDiptychDataset, MusarTrainDualLoRA, MusarSaveDualLoRA]
