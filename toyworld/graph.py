"""API-format ComfyUI graphs of the toy experiments (the pack's nodes + stock KSampler / VAEDecode),
and ``Runner``: runs them in-process through ComfyUI's PromptExecutor with the toy files in place.

    MUSAR_ToyWorldLoader -> MUSAR_LoadDualLoRA -> MUSAR_ApplyRouting -> KSampler -> VAEDecode
    LoadImage_i -> MUSAR_Subject_i (chained)                           -> MUSAR_RoutingPreview
    CLIPTextEncode (prompt), CLIPTextEncode "" (negative), EmptySD3LatentImage (batch = seeds)

``settings`` None gives the text-only graph (no subjects, no MUSAR nodes). Node ids follow the
shipped workflows: 1 loader, 5 LoRA, 6 prompt, 8 negative, 9 latent, 10 routing, 11 KSampler,
12 decode, 14 routing preview, 20 + 2i Load Image, 21 + 2i Subject.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROUTING_DEFAULTS = dict(static_routing=True, dynamic_routing=True, start_percent=0.2, end_percent=1.0,
                        routing_blocks="double", threshold=0.0, smoothing=3, symmetric=False,
                        strength=1.0, condition_cache=False, positions="shared")
SAMPLING = dict(steps=20, cfg=2.5, sampler="euler", scheduler="simple")  # [chosen], docs/TOY_WORLD.md §4


def _node(class_type: str, title: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def toy_graph(prompt_text: str, subjects: list[tuple[str, str]], settings: dict | None, *, seed: int,
              lora: str | None, batch: int = 1, size: int = 128, model_file: str = "toy_flux.safetensors",
              steps: int = SAMPLING["steps"], cfg: float = SAMPLING["cfg"]) -> dict:
    """``subjects``: (caption, image file in ComfyUI's input folder) per subject."""
    g = {
        "1": _node("MUSAR_ToyWorldLoader", "Toy world", model_file=model_file),
        "6": _node("CLIPTextEncode", "Prompt", text=prompt_text, clip=["1", 1]),
        "8": _node("CLIPTextEncode", "Negative", text="", clip=["1", 1]),
        "9": _node("EmptySD3LatentImage", "Latent", width=size, height=size, batch_size=batch),
        "11": _node("KSampler", "KSampler", seed=seed, steps=steps, cfg=cfg, sampler_name=SAMPLING["sampler"],
                    scheduler=SAMPLING["scheduler"], denoise=1.0, model=["1", 0], positive=["6", 0],
                    negative=["8", 0], latent_image=["9", 0]),
        "12": _node("VAEDecode", "VAE Decode", samples=["11", 0], vae=["1", 2]),
        "13": _node("PreviewImage", "Image", images=["12", 0]),
    }
    if settings is None:
        return g
    model = ["1", 0]
    if lora:
        g["5"] = _node("MUSAR_LoadDualLoRA", "MUSAR Load Dual LoRA", lora_name=lora, strength_noisy=1.0,
                       strength_subject=1.0, model=model)
        model = ["5", 0]
    chain = None
    for i, (caption, image) in enumerate(subjects):
        g[str(20 + 2 * i)] = _node("LoadImage", f"Subject {i + 1} image", image=image)
        inputs = dict(caption=caption, crop="center crop", reference_size=size,
                      image=[str(20 + 2 * i), 0], vae=["1", 2], clip=["1", 1])
        if chain is not None:
            inputs["subjects"] = chain
        g[str(21 + 2 * i)] = _node("MUSAR_Subject", f"MUSAR Subject {i + 1}", **inputs)
        chain = [str(21 + 2 * i), 0]
    g["10"] = _node("MUSAR_ApplyRouting", "MUSAR Apply Routing", **{**ROUTING_DEFAULTS, **settings},
                    model=model, subjects=chain)
    return routed(g)


def routed(g: dict) -> dict:
    """Sample with the routing node "10"'s MODEL; with dynamic routing, also preview its route
    (the runner reads the overlay's image as the route)."""
    g["11"]["inputs"]["model"] = ["10", 0]
    if g["10"]["inputs"]["dynamic_routing"]:
        g["14"] = _node("MUSAR_RoutingPreview", "Routing preview", step=-1, opacity=0.5, routing=["10", 1],
                        images=["12", 0])
        g["15"] = _node("PreviewImage", "Routing overlay", images=["14", 0])
    return g


def to_uint8(images) -> np.ndarray:
    """(B, H, W, 3) float tensor in 0..1 -> uint8 array."""
    return (images.clamp(0, 1).numpy() * 255).round().astype(np.uint8)


class Runner:
    """ComfyUI folders for the toy graphs, restored on exit (scripts may run inside a test
    process): ``input`` = <work>/input, the loader's weights folder = ``weights``
    (MUSAR_TOY_WEIGHTS), and a loras folder <work>/loras holding ``loras`` (name -> file)."""

    def __init__(self, pack, weights: Path, work: Path, loras: dict[str, Path] | None = None):
        self.pack, self.weights, self.work, self.loras = pack, Path(weights), Path(work), loras or {}
        self.executor = self.last = None  # last: the latest run's result (its nodes' outputs)

    def __enter__(self) -> Runner:
        import folder_paths

        self.input = self.work / "input"
        self.input.mkdir(parents=True, exist_ok=True)
        self._old = folder_paths.get_input_directory(), os.environ.get("MUSAR_TOY_WEIGHTS")
        self._lora_dir = str(self.work / "loras")
        if self.loras:
            Path(self._lora_dir).mkdir(parents=True, exist_ok=True)
            for name, src in self.loras.items():
                shutil.copy2(src, Path(self._lora_dir) / name)
            folder_paths.add_model_folder_path("loras", self._lora_dir, is_default=True)
            folder_paths.filename_list_cache.pop("loras", None)
        os.environ["MUSAR_TOY_WEIGHTS"] = str(self.weights.resolve())
        folder_paths.set_input_directory(str(self.input))
        return self

    def __exit__(self, *exc) -> None:
        import folder_paths

        folder_paths.set_input_directory(self._old[0])
        loras = folder_paths.folder_names_and_paths["loras"][0]
        if self._lora_dir in loras:
            loras.remove(self._lora_dir)
            folder_paths.filename_list_cache.pop("loras", None)
        if self._old[1] is None:
            os.environ.pop("MUSAR_TOY_WEIGHTS", None)
        else:
            os.environ["MUSAR_TOY_WEIGHTS"] = self._old[1]

    def save_input(self, image: Image.Image, name: str) -> str:
        if not (self.input / name).is_file():
            image.save(self.input / name)
        return name

    def run(self, graph: dict) -> dict:
        """Execute; returns {"images": uint8 (B, H, W, 3), "route": uint8 overlay or None}."""
        from musar_run import runtime

        result = runtime.run_prompt(graph, executor=self.executor)
        result.raise_for_error()
        self.executor, self.last = result.executor, result
        route = result.output("14")[0] if "14" in graph else None
        return {"images": to_uint8(result.output("12")[0]), "route": None if route is None else to_uint8(route)}
