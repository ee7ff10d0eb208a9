"""The prompts of the adversarial tier: a good generation, a training run, the toy loader."""

from __future__ import annotations

import numpy as np
from files import TINY
from musar_helpers import sampler_nodes

SAMPLER = "10"
ROUTING = {"static_routing": True, "dynamic_routing": True, "start_percent": 0.0, "end_percent": 1.0,
           "routing_blocks": "double", "threshold": 0.0, "smoothing": 3, "symmetric": False,
           "strength": 1.0, "condition_cache": False, "positions": "shared"}
TRAIN = {"steps": 2, "learning_rate": 1e-3, "noisy_rank": 2, "subject_rank": 4, "batch_size": 1,
         "grad_accumulation": 1, "optimizer": "adamw", "precision": "fp32",
         "gradient_checkpointing": False, "seed": 0, "checkpoint_every": 0, "output_name": "adv",
         "resume": "none", "validation_every": 0}
DATASET = {"path": "pairs", "layout": "auto", "min_quality": 5, "target_width": 128, "target_height": 64,
           "reference_size": 64, "prompt_template": "{item_a} and {item_b}", "prompt_dropout": 0.0,
           "condition_dropout": 0.0, "seed": 0}


def generation(seed: int = 1) -> dict:
    def subject(image, caption, chain=None):
        return {"class_type": "MUSAR_Subject", "inputs": {
            "image": [image, 0], "vae": ["1", 2], "clip": ["1", 1], "caption": caption,
            "crop": "center crop", "reference_size": 64, **({"subjects": [chain, 0]} if chain else {})}}

    return {
        "1": {"class_type": "MUSAR_TinyFluxLoader", "inputs": {"size": TINY, "seed": 0}},
        "2": {"class_type": "MUSAR_LoadDualLoRA", "inputs": {
            "model": ["1", 0], "lora_name": "adv/good.safetensors", "strength_noisy": 1.0,
            "strength_subject": 1.0}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xD03020}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x2050E0}},
        "5": subject("3", "a red thing"),
        "6": subject("4", "a blue thing", "5"),
        "7": {"class_type": "MUSAR_ApplyRouting", "inputs": {"model": ["2", 0], "subjects": ["6", 0], **ROUTING}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red thing and a blue thing"}},
        "9": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        SAMPLER: {"class_type": "KSampler", "inputs": {
            "model": ["7", 0], "positive": ["8", 0], "negative": ["8", 0], "latent_image": ["9", 0],
            "seed": seed, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER, 0], "vae": ["1", 2]}},
        "12": {"class_type": "MUSAR_RoutingPreview", "inputs": {
            "routing": ["7", 1], "images": ["11", 0], "step": -1, "opacity": 0.5}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }


def training(**train) -> dict:
    return {
        "1": {"class_type": "MUSAR_TinyFluxLoader", "inputs": {"size": TINY, "seed": 0}},
        "20": {"class_type": "MUSAR_LoadDiptychDataset", "inputs": dict(DATASET)},
        "21": {"class_type": "MUSAR_TrainDualLoRA", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["20", 0], **TRAIN, **train}},
        "22": {"class_type": "MUSAR_SaveDualLoRA", "inputs": {"lora": ["21", 0], "filename_prefix": "adv/trained"}},
    }


def toy() -> dict:
    return {"30": {"class_type": "MUSAR_ToyWorldLoader", "inputs": {"model_file": "toy_flux.safetensors"}},
            **sampler_nodes(31, ["30", 0], ["30", 1], ["30", 2], "a thing", seed=0)}


def good_images(client, seed: int) -> list:
    """The good generation's decoded image and routing overlay (raises if it did not succeed)."""
    outcome = client.run(generation(seed))
    assert outcome.kind == "success", outcome
    return [client.images(outcome, node) for node in ("12", "13")]


def assert_good(client, solo: dict, seed: int) -> None:
    """The good prompt still gives exactly the images it gave alone on the fresh server."""
    for got, want in zip(good_images(client, seed), solo[seed]):
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), "the good prompt changed"
