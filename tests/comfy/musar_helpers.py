"""Shared helpers for tier-2 tests: subjects, conditioning and sampling on the tiny FLUX."""

import importlib

import comfy.sample
import torch


def pack_module(pack, name):
    return importlib.import_module(f"{pack.__name__}.{name}")


def make_subjects(pack, sizes=((8, 8), (8, 12)), caption_lens=(3, 5), seed=0, context_dim=64):
    subj = pack_module(pack, "musar.subjects")
    g = torch.Generator().manual_seed(seed)
    out = subj.SubjectSet()
    for i, ((h, w), n) in enumerate(zip(sizes, caption_lens)):
        out = out.add(subj.Subject(torch.randn(1, 16, h, w, generator=g), f"subject {i}",
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
    ups (a fresh LoRA's ups are zero, i.e. a no-op)."""
    lora = pack_module(pack, "musar.lora")
    patcher = pack_module(pack, "nodes.patcher")
    dm = model.model.diffusion_model
    names = lora.target_modules(len(dm.double_blocks), len(dm.single_blocks))
    params = lora.init_trainable(patcher.model_shapes(model, names), *ranks, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in params.items():
            if key.endswith(".up"):
                value.copy_(torch.randn(value.shape, generator=g) * scale)
    return params, lora.from_trainable(params)


TINY = "tiny (128 wide, 2+2 blocks)"
ROUTING = {"static_routing": True, "dynamic_routing": True, "start_percent": 0.2, "end_percent": 1.0,
           "routing_blocks": "double", "threshold": 0.0, "smoothing": 3, "symmetric": False,
           "strength": 1.0, "condition_cache": False, "positions": "shared"}


def routing_graph(n_subjects=2, **routing):
    """API prompt: tiny stand-ins -> N chained MUSAR Subjects ("100", "101" ...) -> MUSAR Apply
    Routing ("20") -> KSampler ("4", 1 step) -> VAE Decode ("5") -> PreviewImage ("6")."""
    g = {
        "1": {"class_type": "MUSAR_TinyFluxLoader", "inputs": {"size": TINY, "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "two things"}},
        "3": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x2040ff}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["20", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0],
            "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
        "20": {"class_type": "MUSAR_ApplyRouting", "inputs": {"model": ["1", 0], "subjects": [str(100 + n_subjects - 1), 0], **{**ROUTING, **routing}}},
    }
    for i in range(n_subjects):
        g[str(100 + i)] = {"class_type": "MUSAR_Subject", "inputs": {
            "image": ["9", 0], "vae": ["1", 2], "clip": ["1", 1], "caption": f"thing {i}",
            "crop": "center crop", "reference_size": 64, **({"subjects": [str(99 + i), 0]} if i else {})}}
    return g
