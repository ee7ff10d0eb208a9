"""The pack loads in real ComfyUI through its own loader and registers the frozen node ids."""

import json
from pathlib import Path

import torch
from musar_helpers import TINY, sampler_nodes

import nodes as comfy_nodes

FROZEN_IDS = json.loads((Path(__file__).resolve().parents[1] / "node_ids.json").read_text())


def test_registered_node_ids_match_the_frozen_list(pack):
    registered = sorted(k for k in comfy_nodes.NODE_CLASS_MAPPINGS if k.startswith("MUSAR_"))
    assert registered == sorted(FROZEN_IDS), (
        "node ids are frozen once shipped: add new ids to tests/node_ids.json deliberately, "
        "retire old ones with is_deprecated instead of deleting them")


def test_web_directory_is_registered(pack):
    web_dirs = {Path(p).resolve() for p in comfy_nodes.EXTENSION_WEB_DIRS.values()}
    assert (Path(pack.__file__).parent / "web").resolve() in web_dirs


def test_every_node_documents_every_input(pack):
    missing = []
    for node_id in FROZEN_IDS:
        info = comfy_nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA() if hasattr(
            comfy_nodes.NODE_CLASS_MAPPINGS[node_id], "GET_SCHEMA") else None
        schema = info
        if not schema.description:
            missing.append(f"{node_id}: no description")
        for inp in schema.inputs or []:
            if not getattr(inp, "tooltip", None):
                missing.append(f"{node_id}.{inp.id}: no tooltip")
    assert not missing, "\n".join(missing)


def _stock_graph(loader_seed=0, text="a red star"):
    return {
        "1": {"class_type": "MUSAR_TinyFluxLoader", "inputs": {"size": TINY, "seed": loader_seed}},
        **sampler_nodes(2, ["1", 0], ["1", 1], ["1", 2], text, steps=2, cfg=2.0),
    }


def test_tiny_standins_run_a_stock_graph(run_prompt):
    """The stand-ins drive a stock graph end to end: reproducible for one seed, and the loader
    seed (model, text encoder, VAE weights) and the prompt text both reach the image."""
    images, latents = {}, {}
    for key, graph in {"base": _stock_graph(), "again": _stock_graph(), "seed": _stock_graph(loader_seed=1),
                       "text": _stock_graph(text="a blue moon")}.items():
        result = run_prompt(graph)
        result.raise_for_error()
        images[key], latents[key] = result.output("5")[0], result.output("4")[0]["samples"]
    image = images["base"]
    assert image.shape == (1, 64, 64, 3)
    assert torch.isfinite(image).all()
    assert torch.equal(images["again"], image) and torch.equal(latents["again"], latents["base"])
    assert (images["seed"] - image).abs().max() > 1e-3
    assert not torch.equal(latents["text"], latents["base"])
