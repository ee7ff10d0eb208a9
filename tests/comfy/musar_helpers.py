"""Shared helpers for tier-2 tests: subjects, conditioning and sampling on the tiny FLUX, random
dual LoRAs, an attention spy, and API-prompt builders (ComfyUI is imported only inside the
functions that run it, so the adversarial tier - no ComfyUI in its process - builds its prompts
with the same helpers)."""

import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw


def pack_module(pack, name):
    """A module of the pack as ComfyUI loaded it (``runtime.pack_module``)."""
    from musar_run import runtime

    return runtime.pack_module(pack, name)


def make_subjects(pack, sizes=((8, 8), (8, 12)), caption_lens=(3, 5), seed=0, context_dim=64):
    subj = pack_module(pack, "musar.subjects")
    g = torch.Generator().manual_seed(seed)
    out = subj.SubjectSet()
    for i, ((h, w), n) in enumerate(zip(sizes, caption_lens)):
        out = out.add(subj.Subject(torch.randn(1, 16, h, w, generator=g), f"subject {i + 1}",
                                   torch.randn(1, n, context_dim, generator=g)))
    return out


def conds(seed=0, length=7, context_dim=64, pooled=32, guidance=3.5):
    g = torch.Generator().manual_seed(seed)
    pos = [[torch.randn(1, length, context_dim, generator=g),
            {"pooled_output": torch.randn(1, pooled, generator=g), "guidance": guidance}]]
    neg = [[torch.randn(1, length, context_dim, generator=g),
            {"pooled_output": torch.randn(1, pooled, generator=g), "guidance": guidance}]]
    return pos, neg


def sample(model, steps=3, cfg=2.0, seed=0, size=16, cond_seed=0):
    import comfy.sample

    pos, neg = conds(cond_seed)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 16, size, size, generator=g)
    latent = torch.zeros(1, 16, size, size)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", pos, neg, latent,
                               seed=seed, disable_pbar=True)


def settings(pack, **kw):
    """RoutingSettings as the tests name them (dynamic, symmetric, cache, position_mode, blocks),
    dynamic routing from the first step (start_percent 0)."""
    names = {"static": "static_routing", "dynamic": "dynamic_routing", "cache": "condition_cache",
             "position_mode": "positions", "blocks": "routing_blocks"}
    values = {"start_percent": 0.0, "end_percent": 1.0}
    values.update({names.get(k, k): v for k, v in kw.items()})
    return pack_module(pack, "musar.settings").RoutingSettings(**values)


def routed(pack, model, subjects, **kw):
    """A routed clone of ``model`` and the Recorder of its sampling runs."""
    return pack_module(pack, "nodes.patcher").apply_routing(model, subjects, settings(pack, **kw))


def random_dual_lora(pack, model, ranks=(2, 4), seed=0, scale=0.5):
    """(trainable factors, DualLoRA) on every MUSAR target module of ``model`` with seeded random
    ups times ``scale`` (``scale`` 0: the zero ups of a fresh LoRA, i.e. a no-op)."""
    lora = pack_module(pack, "musar.lora")
    patcher = pack_module(pack, "nodes.patcher")
    dm = model.model.diffusion_model
    names = lora.target_modules(len(dm.double_blocks), len(dm.single_blocks))
    params = lora.init_trainable(patcher.model_shapes(model, names), *ranks, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in params.items():
            if key.endswith(".up") and scale:
                value.copy_(torch.randn(value.shape, generator=g) * scale)
    return params, lora.from_trainable(params)


# ---- ComfyUI ReferenceLatent references (FLUX.1 Kontext / FLUX.2 stand-ins) ----------------
REF_SIZES = [(8, 8), (8, 12), (4, 8), (10, 6), (6, 6), (8, 4)]  # latent (h, w) per reference


def channels(model):
    """Latent channels of a FLUX (16) or FLUX.2 (128) stand-in."""
    return model.model.diffusion_model.params.in_channels


def ref_latents(model, n, seed=0):
    """``n`` seeded reference latents of the sizes REF_SIZES (FLUX.2: half, patch 1)."""
    g = torch.Generator().manual_seed(seed)
    scale = 1 if channels(model) == 16 else 2  # FLUX.2 latents are half the size (patch 1)
    return [torch.randn(1, channels(model), h // scale, w // scale, generator=g)
            for h, w in REF_SIZES[:n]]


def ref_conds(model, refs, method=None, uncond_refs=True, seed=0):
    """(positive, negative) conditioning holding ``refs`` as ReferenceLatents (the negative too
    unless ``uncond_refs`` is False), with ``method`` as reference_latents_method."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for with_refs in (True, uncond_refs):
        extra = {"pooled_output": torch.randn(1, 32, generator=g), "guidance": 3.5}
        if with_refs and refs:
            extra["reference_latents"] = list(refs)
            if method:
                extra["reference_latents_method"] = method
        out.append([[torch.randn(1, 7, 64, generator=g), extra]])
    return out


def sample_refs(model, conds, steps=3, cfg=2.0, size=16, seed=0):
    import comfy.sample

    pos, neg = conds
    scale = 1 if channels(model) == 16 else 2
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, channels(model), size // scale, size // scale, generator=g)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", pos, neg,
                               torch.zeros_like(noise), seed=seed, disable_pbar=True)


def route_refs(pack, model, labels=None, **kw):
    """A clone of ``model`` with its references routed (dynamic routing from the first step)."""
    refs = pack_module(pack, "musar.references")
    return pack_module(pack, "nodes.patcher").route_references(
        model, labels or refs.ReferenceLabels(), settings(pack, **kw))


def spy_layouts(pack, monkeypatch):
    """Records (layout, plan) of every routed block attention call, in call order."""
    blocks = pack_module(pack, "musar.block")
    seen, original = [], blocks.block_attention

    def spy(call, *a):
        seen.append((call.layout, call.plan))
        return original(call, *a)

    monkeypatch.setattr(blocks, "block_attention", spy)
    return seen




TOL = 1e-4  # the equivalence tolerance of routed vs dense-reference sampling


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


def assert_routing_acts(routed_out: torch.Tensor, other: torch.Tensor, factor: float = 100) -> None:
    """The routing effect under test moves the result by at least ``factor`` x the equivalence
    tolerance, so an error in it could not hide inside that tolerance."""
    gap = float((routed_out - other).abs().max())
    assert gap >= factor * TOL, f"routing changed the result by only {gap:.2e} (< {factor} x {TOL})"


def use_dense_reference(pack, monkeypatch) -> None:
    """From now on routed attention inside sampling is the slow dense reference (full boolean
    mask, explicit softmax) of the same layout, plan and query rows."""
    attention = pack_module(pack, "musar.attention")

    def reference(q, k, v, layout, plan, kernel, rows=None):
        return attention.dense_reference(q, k, v, layout, plan, rows)

    monkeypatch.setattr(attention, "routed_attention", reference)


def spy_block_attention(pack, monkeypatch) -> list:
    """Runs MUSAR's block attention unchanged and records every call's (layout, plan, q, k, v,
    kernel), q / k / v cloned, in call order."""
    blocks = pack_module(pack, "musar.block")
    captured = []
    original = blocks.block_attention

    def spy(call, block, q, k, v, mask, kernel):
        captured.append((call.layout, call.plan, q.clone(), k.clone(), v.clone(), kernel))
        return original(call, block, q, k, v, mask, kernel)

    monkeypatch.setattr(blocks, "block_attention", spy)
    return captured


def sampler_nodes(first: int, model: list, clip: list, vae: list, text: str, *, steps=1, cfg=1.0,
                  seed=1, size=64) -> dict:
    """API-prompt nodes ``first`` .. ``first + 4``: CLIPTextEncode(text) -> (both conds of) a
    KSampler on ``model`` over an empty ``size`` px latent -> VAE Decode -> PreviewImage."""
    ids = [str(first + i) for i in range(5)]
    return {
        ids[0]: {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": text}},
        ids[1]: {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        ids[2]: {"class_type": "KSampler", "inputs": {
            "model": model, "positive": [ids[0], 0], "negative": [ids[0], 0], "latent_image": [ids[1], 0],
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0}},
        ids[3]: {"class_type": "VAEDecode", "inputs": {"samples": [ids[2], 0], "vae": vae}},
        ids[4]: {"class_type": "PreviewImage", "inputs": {"images": [ids[3], 0]}},
    }


TINY = "tiny (128 wide, 2+2 blocks)"
ROUTING = {"static_routing": True, "dynamic_routing": True, "start_percent": 0.2, "end_percent": 1.0,
           "routing_blocks": "double", "threshold": 0.0, "smoothing": 3, "symmetric": False,
           "strength": 1.0, "condition_cache": False, "positions": "shared"}


def routing_graph(n_subjects=2, **routing):
    """API prompt: tiny stand-ins -> N chained MUSAR Subjects ("100", "101" ...) -> MUSAR Apply
    Routing ("20") -> KSampler ("4", 1 step) -> VAE Decode ("5") -> PreviewImage ("6")."""
    g = {
        "1": {"class_type": "MUSAR_TinyFluxLoader", "inputs": {"size": TINY, "seed": 0}},
        **sampler_nodes(2, ["20", 0], ["1", 1], ["1", 2], "two things"),
        "9": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x2040ff}},
        "20": {"class_type": "MUSAR_ApplyRouting", "inputs": {"model": ["1", 0], "subjects": [str(100 + n_subjects - 1), 0], **{**ROUTING, **routing}}},
    }
    for i in range(n_subjects):
        g[str(100 + i)] = {"class_type": "MUSAR_Subject", "inputs": {
            "image": ["9", 0], "vae": ["1", 2], "clip": ["1", 1], "caption": f"thing {i}",
            "crop": "center crop", "reference_size": 64, **({"subjects": [str(99 + i), 0]} if i else {})}}
    return g


COLOURS = [(200, 40, 40), (40, 160, 60), (40, 80, 200), (220, 180, 30), (150, 60, 170)]


def make_pairs(root: Path, n_items: int = 4, size: int = 64) -> Path:
    """A folder-layout dataset of single-subject pairs: one coloured shape per item, two scenes."""
    for i in range(n_items):
        folder = root / f"item_{i}"
        folder.mkdir(parents=True)
        for k, bg in enumerate(((235, 235, 230), (90, 110, 130))):
            img = Image.new("RGB", (size, size), bg)
            box = (size // 4 + 4 * k, size // 4, 3 * size // 4, 3 * size // 4 - 4 * k)
            draw = ImageDraw.Draw(img)
            (draw.ellipse if i % 2 else draw.rectangle)(box, fill=COLOURS[i % len(COLOURS)])
            img.save(folder / f"panel_{k}.png")
        (folder / "meta.json").write_text(json.dumps({
            "item": f"object {i}", "description_0": f"object {i} on a light table",
            "description_1": f"object {i} in a dark room"}))
    return root
