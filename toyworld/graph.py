"""API-format ComfyUI graphs of the toy evaluation: the pack's nodes + stock KSampler / VAEDecode.

    MUSAR_ToyWorldLoader -> MUSAR_LoadDualLoRA -> MUSAR_ApplyRouting -> KSampler -> VAEDecode
    LoadImage_i -> MUSAR_Subject_i (chained)                           -> MUSAR_RoutingPreview
    CLIPTextEncode (prompt), CLIPTextEncode "" or ConditioningZeroOut (negative), EmptySD3LatentImage

``settings`` None gives the text-only graph (no subjects, no MUSAR nodes).
Node ids follow the shipped workflows: 1 loader, 5 LoRA, 6 prompt, 8 negative, 9 latent,
10 routing, 11 KSampler, 12 decode, 14 routing preview, 20 + 2i Load Image, 21 + 2i Subject.
"""

from __future__ import annotations

ROUTING_DEFAULTS = dict(static_routing=True, dynamic_routing=True, start_percent=0.2, end_percent=1.0,
                        routing_blocks="double", threshold=0.0, smoothing=3, symmetric=False,
                        strength=1.0, condition_cache=False, positions="shared")


def _node(class_type: str, title: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def base_nodes(prompt_text: str, seed: int, steps: int, cfg: float, size: int, model_file: str) -> dict:
    negative = (_node("CLIPTextEncode", "Negative", text="", clip=["1", 1]) if cfg != 1.0
                else _node("ConditioningZeroOut", "Negative (unused at cfg 1)", conditioning=["6", 0]))
    return {
        "1": _node("MUSAR_ToyWorldLoader", "Toy world", model_file=model_file),
        "6": _node("CLIPTextEncode", "Prompt", text=prompt_text, clip=["1", 1]),
        "8": negative,
        "9": _node("EmptySD3LatentImage", "Latent", width=size, height=size, batch_size=1),
        "11": _node("KSampler", "KSampler", seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                    scheduler="simple", denoise=1.0, model=["1", 0], positive=["6", 0],
                    negative=["8", 0], latent_image=["9", 0]),
        "12": _node("VAEDecode", "VAE Decode", samples=["11", 0], vae=["1", 2]),
        "13": _node("PreviewImage", "Image", images=["12", 0]),
    }


def toy_graph(prompt_text: str, subjects: list[tuple[str, str]], settings: dict | None, *, seed: int,
              lora: str | None, steps: int = 20, cfg: float = 1.0, size: int = 128,
              reference_size: int = 128, model_file: str = "toy_flux.safetensors") -> dict:
    """``subjects``: (caption, image file in ComfyUI's input folder) per subject."""
    g = base_nodes(prompt_text, seed, steps, cfg, size, model_file)
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
        inputs = dict(caption=caption, crop="center crop", reference_size=reference_size,
                      image=[str(20 + 2 * i), 0], vae=["1", 2], clip=["1", 1])
        if chain is not None:
            inputs["subjects"] = chain
        g[str(21 + 2 * i)] = _node("MUSAR_Subject", f"MUSAR Subject {i + 1}", **inputs)
        chain = [str(21 + 2 * i), 0]
    g["10"] = _node("MUSAR_ApplyRouting", "MUSAR Apply Routing", **{**ROUTING_DEFAULTS, **settings},
                    model=model, subjects=chain)
    g["11"]["inputs"]["model"] = ["10", 0]
    if not g["10"]["inputs"]["dynamic_routing"]:
        return g  # no route to preview
    g["14"] = _node("MUSAR_RoutingPreview", "Routing preview", step=-1, opacity=0.5, routing=["10", 1],
                    images=["12", 0])
    g["15"] = _node("PreviewImage", "Routing overlay", images=["14", 0])
    return g
