"""Edits of an API-format prompt for headless runs (pure: prompt + /object_info in, prompt out).

- :func:`substitute_standins`: replace model loaders by one stand-in node (``--tiny``), generic
  over :data:`STANDINS` entries.
- :func:`apply_overrides`: ``NODE.INPUT=VALUE`` edits typed by the input definitions (``--set``).
- :func:`set_model_files`: symlink model files into a scratch models folder and select them in
  the loaders (``--unet/--clip-l/--t5/--vae/--lora``); :func:`model_dirs` for ``--models``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """A problem with the command line or the workflow, reported without a traceback."""


@dataclasses.dataclass(frozen=True)
class StandIn:
    """Replace a workflow's model loaders by one node that builds stand-in models.

    Every output of a ``loaders`` node is rewired to the replacement's output of the same type
    (MODEL, CLIP, VAE); ``passthrough`` nodes (e.g. a LoRA loader, which has no file for a
    stand-in) are removed and their consumers get the node's own input of that name; ``caps``
    limit numeric inputs ``(class_type, input) -> maximum`` so a CPU run stays quick; ``threads``
    sets torch's intra-op threads (tiny models are all small ops, where thread hand-offs cost
    more than they give: 10x slower on a busy 2-core machine), unless OMP_NUM_THREADS is set.
    ``prepare`` ("module:function") edits the prompt before ``--set``: ``f(prompt, input_dir) ->
    prompt`` (e.g. model files, subjects and a prompt the stand-in model knows, reference images
    written to input_dir). ``variants`` pick other replacement inputs for graphs of another
    model family: ``(class_type, input, value)`` -> inputs, used when a node of that type has
    that input value (e.g. a CLIPLoader of type "flux2": the FLUX.2 stand-ins).
    """

    node: str
    inputs: dict
    description: str
    loaders: frozenset = frozenset({"UNETLoader", "DualCLIPLoader", "VAELoader", "CLIPLoader",
                                    "CheckpointLoaderSimple", "UnetLoaderGGUF", "DualCLIPLoaderGGUF"})
    passthrough: dict = dataclasses.field(default_factory=lambda: {
        "MUSAR_LoadDualLoRA": "model", "LoraLoaderModelOnly": "model"})
    caps: dict = dataclasses.field(default_factory=dict)
    threads: int | None = 1
    prepare: str | None = None
    variants: dict = dataclasses.field(default_factory=dict)

    def inputs_for(self, prompt: dict) -> dict:
        """The replacement node's inputs for this graph (a matching variant, else ``inputs``)."""
        for (kind, name, value), inputs in self.variants.items():
            if any(n["class_type"] == kind and (name is None or n["inputs"].get(name) == value)
                   for n in prompt.values()):
                return dict(inputs)
        return dict(self.inputs)


STANDINS = {
    "tiny": StandIn(
        node="MUSAR_TinyFluxLoader", inputs={"size": "tiny (128 wide, 2+2 blocks)", "seed": 0},
        description="random tiny FLUX stand-ins, a pipeline check on CPU in seconds (the images "
                    "are noise: it shows the pipeline runs, not image quality)",
        caps={("EmptySD3LatentImage", "width"): 256, ("EmptySD3LatentImage", "height"): 256,
              ("EmptyLatentImage", "width"): 256, ("EmptyLatentImage", "height"): 256,
              ("EmptyFlux2LatentImage", "width"): 256, ("EmptyFlux2LatentImage", "height"): 256,
              ("Flux2Scheduler", "width"): 256, ("Flux2Scheduler", "height"): 256,
              ("ImageScaleToTotalPixels", "megapixels"): 0.04,
              ("ImageScaleToMaxDimension", "largest_size"): 192,
              ("MUSAR_Subject", "reference_size"): 128},
        variants={("CLIPLoader", "clip_name", "qwen_3_4b.safetensors"): {
                      "size": "FLUX.2 [klein] tiny (128 wide, 2+2 blocks, Qwen3 text)", "seed": 0},
                  ("CLIPLoader", "type", "qwen_image"): {
                      "size": "Qwen-Image-Edit tiny (64 wide, 2 blocks, Qwen2.5-VL text)", "seed": 0},
                  ("CLIPLoader", "type", "flux2"): {"size": "FLUX.2 tiny (128 wide, 2+2 blocks)",
                                                    "seed": 0},
                  ("EmptyFlux2LatentImage", None, None): {"size": "FLUX.2 tiny (128 wide, 2+2 blocks)",
                                                          "seed": 0}}),
    "toy": StandIn(
        node="MUSAR_ToyWorldLoader", inputs={"model_file": "toy_flux.safetensors"},
        description="the trained toy-world FLUX, codec, text encoder and MUSAR LoRA "
                    "(toyworld/weights, docs/TOY_WORLD.md): held-out toy subjects, their reference "
                    "images and a prompt that names their slots but not their colours replace the "
                    "workflow's, so the colours in the image come from the references",
        passthrough={"LoraLoaderModelOnly": "model"},
        prepare="toyworld.demo:prepare",
        caps={("EmptySD3LatentImage", "width"): 128, ("EmptySD3LatentImage", "height"): 128,
              ("EmptyLatentImage", "width"): 128, ("EmptyLatentImage", "height"): 128,
              ("MUSAR_Subject", "reference_size"): 128}),
}

# --flag -> (ComfyUI model folder, [(loader class_type, input)]) the file is selected in.
MODEL_FLAGS = {
    "unet": ("diffusion_models", [("UNETLoader", "unet_name"), ("UnetLoaderGGUF", "unet_name")]),
    "clip_l": ("text_encoders", [("DualCLIPLoader", "clip_name1")]),
    "t5": ("text_encoders", [("DualCLIPLoader", "clip_name2")]),
    "vae": ("vae", [("VAELoader", "vae_name")]),
    "lora": ("loras", [("MUSAR_LoadDualLoRA", "lora_name"), ("LoraLoaderModelOnly", "lora_name"),
                       ("LoraLoader", "lora_name")]),
}
# Loader inputs whose combo is a model folder's file list (for "missing file" messages; ComfyUI
# 0.3.75 checks V1 list combos itself but not V3 "COMBO" inputs, so those are checked here).
MODEL_INPUTS = {
    ("UNETLoader", "unet_name"): "diffusion_models", ("UnetLoaderGGUF", "unet_name"): "diffusion_models",
    ("DualCLIPLoader", "clip_name1"): "text_encoders", ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("CLIPLoader", "clip_name"): "text_encoders", ("VAELoader", "vae_name"): "vae",
    ("MUSAR_LoadDualLoRA", "lora_name"): "loras", ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras", ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
}



# ---------------------------------------------------------------------------------------------
# prompt edits (pure: API prompt + object_info in, API prompt out)


def links_of(node: dict):
    """(input name, [node id, slot]) of every linked input of an API node."""
    for name, value in node["inputs"].items():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            yield name, value


def _free_id(prompt: dict) -> str:
    numbers = [int(k) for k in prompt if str(k).isdigit()]
    return str(max(numbers, default=0) + 1)


def substitute_standins(prompt: dict, object_info: dict, standin: StandIn) -> dict:
    """The same graph with its model loaders replaced by ``standin.node`` (see :class:`StandIn`)."""
    prompt = copy.deepcopy(prompt)
    inputs = standin.inputs_for(prompt)  # before the loaders (which may name the family) go
    loaders = [k for k, n in prompt.items() if n["class_type"] in standin.loaders]
    if not loaders:
        raise UsageError(f"the workflow has no model loader to replace ({', '.join(sorted(standin.loaders))})")
    new_id = _free_id(prompt)
    provides = {t: i for i, t in enumerate(object_info[standin.node]["output"])}
    remap = {}
    for key in loaders:
        for slot, kind in enumerate(object_info[prompt[key]["class_type"]]["output"]):
            if kind not in provides:
                raise UsageError(f"{standin.node} has no {kind} output to replace node {key} "
                                 f"({prompt[key]['class_type']})")
            remap[(key, slot)] = [new_id, provides[kind]]
    for key, node in list(prompt.items()):
        name = standin.passthrough.get(node["class_type"])
        source = node["inputs"].get(name) if name else None
        if isinstance(source, list):
            info = object_info[node["class_type"]]
            kind = {**info["input"].get("required", {}), **info["input"].get("optional", {})}[name][0]
            for slot, out_kind in enumerate(info["output"]):
                if out_kind == kind:
                    remap[(key, slot)] = source
            loaders.append(key)
    for key in loaders:
        del prompt[key]
    for node in prompt.values():
        for name, link in list(links_of(node)):
            seen = 0
            while (link[0], link[1]) in remap and seen <= len(remap):
                link, seen = remap[(link[0], link[1])], seen + 1
            node["inputs"][name] = list(link)
    prompt[new_id] = {"inputs": inputs, "class_type": standin.node,
                      "_meta": {"title": object_info[standin.node].get("display_name") or standin.node}}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            cap = standin.caps.get((node["class_type"], name))
            if cap is not None and isinstance(value, (int, float)) and value > cap:
                node["inputs"][name] = cap
    return prompt


def find_node(prompt: dict, ref: str) -> str:
    """A node by id, or by its title / class_type when that names exactly one node."""
    if ref in prompt:
        return ref
    hits = [k for k, n in prompt.items() if ref in (n.get("_meta", {}).get("title"), n["class_type"])]
    if len(hits) == 1:
        return hits[0]
    listing = ", ".join(f"{k}={n.get('_meta', {}).get('title') or n['class_type']}"
                        for k, n in sorted(prompt.items(), key=lambda kv: (len(kv[0]), kv[0])))
    why = "matches several nodes" if hits else "is not a node id, title or type of the prompt"
    raise UsageError(f"--set: {ref!r} {why}; nodes: {listing}")


def _coerce(kind, text: str, where: str):
    try:
        if kind == "INT":
            return int(text)
        if kind == "FLOAT":
            return float(text)
    except ValueError:
        raise UsageError(f"--set {where}: expected a {kind.lower()}, got {text!r}") from None
    if kind == "BOOLEAN":
        low = text.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise UsageError(f"--set {where}: expected true or false, got {text!r}")
        return low in ("true", "1", "yes", "on")
    if kind in ("STRING", "COMBO") or isinstance(kind, list):
        return text
    raise UsageError(f"--set {where}: this input is a {kind} connection, not a value")


def apply_overrides(prompt: dict, object_info: dict, assignments: list[str]) -> dict:
    """``NODE.INPUT=VALUE`` edits; NODE is an id, title or class_type; VALUE is typed by the
    input's definition (INT, FLOAT, BOOLEAN, STRING / COMBO)."""
    prompt = copy.deepcopy(prompt)
    for item in assignments:
        target, sep, text = item.partition("=")
        ref, dot, name = target.rpartition(".")
        if not sep or not dot or not ref or not name:
            raise UsageError(f"--set {item!r}: expected NODE.INPUT=VALUE, e.g. 11.seed=7")
        key = find_node(prompt, ref)
        node = prompt[key]
        info = object_info[node["class_type"]]["input"]
        specs = {**info.get("required", {}), **info.get("optional", {})}
        if name not in specs:
            raise UsageError(f"--set {item!r}: node {key} ({node['class_type']}) has no input "
                             f"{name!r}; inputs: {', '.join(specs)}")
        node["inputs"][name] = _coerce(specs[name][0], text, item)
    return prompt


def set_model_files(prompt: dict, files: dict, link_root: Path) -> dict:
    """Symlink the given model files into ``link_root/<folder>/`` and select them in the loaders.
    ``files``: MODEL_FLAGS key -> path. Returns {folder: directory} to register with ComfyUI."""
    folders = {}
    for flag, path in files.items():
        folder, targets = MODEL_FLAGS[flag]
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"--{flag.replace('_', '-')} {path}: no such file")
        directory = link_root / folder
        directory.mkdir(parents=True, exist_ok=True)
        link = directory / path.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path)  # never copy multi-GB model files
        folders[folder] = directory
        hits = [n for n in prompt.values() for cls, name in targets
                if n["class_type"] == cls and name in n["inputs"]]
        if not hits:
            logger.warning("--%s given, but the workflow has no %s node", flag,
                           " / ".join(c for c, _ in targets))
        for node in hits:
            for cls, name in targets:
                if node["class_type"] == cls:
                    node["inputs"][name] = path.name
    return folders


def model_dirs(models: Path, folder_paths) -> list[tuple[str, str]]:
    """(folder name, directory) pairs of a ComfyUI-style models directory (``--models``)."""
    if not models.is_dir():
        raise UsageError(f"--models {models}: not a directory")
    pairs, expected = [], set()
    default_root = os.path.abspath(folder_paths.models_dir)
    for folder, (paths, _) in folder_paths.folder_names_and_paths.items():
        for path in paths:
            if os.path.dirname(os.path.abspath(path)) == default_root:
                expected.add(os.path.basename(path) + "/")
                candidate = models / os.path.basename(path)
                if candidate.is_dir():
                    pairs.append((folder, str(candidate)))
    if not pairs:
        raise UsageError(f"--models {models}: none of ComfyUI's model folders is in it (expected a "
                         f"ComfyUI models directory with e.g. {', '.join(sorted(expected)[:8])} ...)")
    return pairs
