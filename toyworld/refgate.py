"""The multi-reference toy base's graph and gate, through the real ComfyUI graph (PromptExecutor;
docs/TOY_WORLD.md, "The multi-reference base").

Graph (``ref_graph``; node ids)::

    1 MUSAR_ToyWorldLoader (toy_flux_refs.safetensors) -> 6 CLIPTextEncode (the prompt)
    20+3j LoadImage (reference j's 48 px picture) -> 21+3j VAEEncode -> 22+3j ReferenceLatent (chained)
    19 FluxKontextMultiReferenceLatentMethod "index" -> 11 KSampler (toyworld.graph.SAMPLING;
       negative 8 = CLIPTextEncode "" without references; 9 EmptySD3LatentImage 128 x 128)
    -> 12 VAEDecode -> 13 PreviewImage
    routing: 10 MUSAR_RouteReferences between loader and sampler (+ 14 MUSAR_RoutingPreview when dynamic)
    regions: 30 SolidMask 0 (128 px), 31 SolidMask 1 (48 px); per reference 40+3j MaskComposite (its
       slot's rectangle) -> 41+3j MUSAR_LayoutRegion -> 42+3j MUSAR_ReferenceLabel (chained)

Gate (``ref_gate``; cases ``toyworld.multiref.gate_cases``: held-out identities, noise seeds
1,000,000-1,000,095, one image each):
- (a) one reference: the prompted slot shows the reference's identity (>= 90 % of its cells agree,
  the evaluation's "subject right") and no other slot holds a block; rate >= 0.8;
- (b) four references filling every slot: every subject right; rate >= 0.8.

    python -m toyworld.refgate [--weights .cache/toyworld/refbase] [--model toy_flux_refs.safetensors]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from . import common
from .common import run_script, write_json
from .graph import SAMPLING, _node, routed
from .multiref import REF_MODEL_FILE, case_scene, gate_cases, reference_picture
from .world import BLOCK, CELL, PANEL, SLOTS, Identity, World

logger = logging.getLogger("toyworld.refgate")
THRESHOLDS = {"single_right": 0.8, "four_right": 0.8}  # decided in the brief of this base
ROUTE_DEFAULTS = dict(static_routing=True, block_prompt_references=False, dynamic_routing=True,
                      start_percent=0.2, end_percent=1.0, routing_blocks="double", threshold=0.0,
                      smoothing=3, symmetric=False, strength=1.0)  # MUSAR Route References' defaults


def _references(g: dict, files: list[str]) -> list:
    """LoadImage -> VAEEncode -> ReferenceLatent per file, chained from the prompt; the method node."""
    cond = ["6", 0]
    for j, file in enumerate(files):
        a, b, c = (str(20 + 3 * j + k) for k in range(3))
        g[a] = _node("LoadImage", f"Image {j + 1}", image=file)
        g[b] = _node("VAEEncode", f"VAE Encode {j + 1}", pixels=[a, 0], vae=["1", 2])
        g[c] = _node("ReferenceLatent", f"Reference {j + 1}", conditioning=cond, latent=[b, 0])
        cond = [c, 0]
    g["19"] = _node("FluxKontextMultiReferenceLatentMethod", "Reference method", conditioning=cond,
                    reference_latents_method="index")
    return ["19", 0]


def _regions(g: dict, slots: list[str], mode: str, strength: float) -> list:
    """One MUSAR Layout Region per reference (its slot's rectangle), labelled in a chain."""
    # ids from 100: the references' nodes take 20 + 3j ... (four references reach 31)
    g["100"] = _node("SolidMask", "Empty mask", value=0.0, width=PANEL, height=PANEL)
    g["101"] = _node("SolidMask", "Block mask", value=1.0, width=BLOCK * CELL, height=BLOCK * CELL)
    labels = None
    for j, slot in enumerate(slots):
        a, b, c = (str(110 + 3 * j + k) for k in range(3))
        row, col = SLOTS[slot]
        g[a] = _node("MaskComposite", f"Region {j + 1}", destination=["100", 0], source=["101", 0],
                     x=col * CELL, y=row * CELL, operation="add")
        g[b] = _node("MUSAR_LayoutRegion", f"Layout region {j + 1}", mask=[a, 0], mode=mode, strength=strength)
        inputs = dict(reference=j + 1, caption=f"image {j + 1}", color="", region=[b, 0])
        if labels is not None:
            inputs["labels"] = labels
        g[c] = _node("MUSAR_ReferenceLabel", f"Label {j + 1}", **inputs)
        labels = [c, 0]
    return labels


def ref_graph(prompt: str, files: list[str], *, seed: int, model_file: str = REF_MODEL_FILE,
              routing: dict | None = None, regions: tuple[list[str], str, float] | None = None,
              kv_cache: bool = False) -> dict:
    """The API graph of one image: ``files`` the reference pictures in image order (ComfyUI input
    folder), ``routing`` MUSAR Route References' settings over ``ROUTE_DEFAULTS`` (None: the
    stock graph), ``regions`` (slot per reference, mode, strength), ``kv_cache`` core's Flux KV
    Cache on the stock graph's MODEL (ComfyUI 0.33+)."""
    g = {
        "1": _node("MUSAR_ToyWorldLoader", "Toy world", model_file=model_file),
        "6": _node("CLIPTextEncode", "Prompt", text=prompt, clip=["1", 1]),
        "8": _node("CLIPTextEncode", "Negative", text="", clip=["1", 1]),
        "9": _node("EmptySD3LatentImage", "Latent", width=PANEL, height=PANEL, batch_size=1),
        "11": _node("KSampler", "KSampler", seed=seed, steps=SAMPLING["steps"], cfg=SAMPLING["cfg"],
                    sampler_name=SAMPLING["sampler"], scheduler=SAMPLING["scheduler"], denoise=1.0,
                    model=["1", 0], positive=["6", 0], negative=["8", 0], latent_image=["9", 0]),
        "12": _node("VAEDecode", "VAE Decode", samples=["11", 0], vae=["1", 2]),
        "13": _node("PreviewImage", "Image", images=["12", 0]),
    }
    g["11"]["inputs"]["positive"] = _references(g, files)
    if kv_cache:
        g["16"] = _node("FluxKVCache", "Flux KV Cache", model=["1", 0])
        g["11"]["inputs"]["model"] = ["16", 0]
    if routing is None:
        return g
    g["10"] = _node("MUSAR_RouteReferences", "MUSAR Route References", model=["1", 0],
                    **{**ROUTE_DEFAULTS, **routing})
    if regions is not None:
        g["10"]["inputs"]["labels"] = _regions(g, *regions)
    return routed(g)


def reference_files(runner, names: list[str]) -> list[str]:
    """Write each identity's reference picture into the runner's input folder; their file names."""
    files = []
    for name in names:
        file = f"refblock_{name}.png".replace(" ", "_")
        files.append(runner.save_input(reference_picture(Identity.parse(name)), file))
    return files


def judge(detector, image, case: dict) -> dict:
    """One gate image: ``right`` is part (a) for a single-reference case, part (b) for four."""
    placed = list(case_scene(case).placed)
    s = detector.score(image, placed)
    blocks = detector.read_panel(image)
    right = s["all_right"] and (s["extra"] == 0 if case["kind"] == "single" else True)
    return {"right": bool(right), "subjects_right": sum(s["right"]) / len(placed),
            "filled": all(blocks[p.slot].well_formed for p in placed), "extra": s["extra"]}


def summarise(rows: list[dict]) -> dict:
    rates = {}
    for kind in ("single", "four"):
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            rates[f"{kind}_right"] = {"rate": round(sum(r["right"] for r in sel) / len(sel), 3), "n": len(sel)}
            rates[f"{kind}_subjects_right"] = round(sum(r["subjects_right"] for r in sel) / len(sel), 3)
            rates[f"{kind}_filled"] = round(sum(r["filled"] for r in sel) / len(sel), 3)
    passed = all(k in rates and rates[k]["rate"] >= t for k, t in THRESHOLDS.items())
    summary = ", ".join(f"{k} {rates[k]['rate']:.2f} (>= {t})" for k, t in THRESHOLDS.items() if k in rates)
    return {"passed": passed, "rates": rates, "thresholds": THRESHOLDS, "summary": summary}


def ref_gate(model_path: Path, weights: Path, work: Path, threads: int = 1, cases: list[dict] | None = None) -> dict:
    """Measure the gate of ``model_path`` (codec and text encoder in ``weights``); ``cases``
    defaults to every gate case."""
    pack = common.setup(threads=threads)
    graph, detector = common.module(pack, "toyworld.graph"), common.module(pack, "toyworld.detector")
    cases = gate_cases(World(0)) if cases is None else cases
    rows = []
    with graph.Runner(pack, weights, work) as runner:
        for case in cases:
            files = reference_files(runner, case["subjects"])
            g = ref_graph(case_scene(case).prompt, files, seed=case["seed"], model_file=Path(model_path).name)
            rows.append({"id": case["id"], "kind": case["kind"], **judge(detector, runner.run(g)["images"][0], case)})
    seeds = [c["seed"] for c in cases]
    return {**summarise(rows), "images": len(rows), "sampling": SAMPLING, "seeds": [min(seeds), max(seeds)],
            "rows": rows}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=common.CACHE_DIR / "refbase")
    p.add_argument("--model", default=REF_MODEL_FILE)
    p.add_argument("--work", type=Path, default=common.CACHE_DIR / "refbase" / "gate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def work(args) -> dict:
    result = ref_gate(args.weights / args.model, args.weights, args.work, args.threads)
    write_json(result, args.work / "refbase_gate.json")
    logger.info("%s", json.dumps({k: result[k] for k in ("passed", "rates", "summary")}))
    return result


if __name__ == "__main__":
    raise SystemExit(run_script(parse, work))
