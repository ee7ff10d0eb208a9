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


def settings(pack, model_depth=(2, 2), **kw):
    session = pack_module(pack, "musar.session")
    routing = pack_module(pack, "musar.routing")
    blocks = routing.parse_blocks(kw.pop("blocks", "double"), *model_depth)
    defaults = dict(static=True, dynamic=True, sigma_start=float("inf"), sigma_end=0.0,
                    routing_blocks=blocks)
    defaults.update(kw)
    if not defaults["dynamic"]:
        defaults["routing_blocks"] = frozenset()
    return session.RoutingSettings(**defaults)


def routed(pack, model, subjects, **kw):
    session = pack_module(pack, "musar.session")
    patcher = pack_module(pack, "nodes.patcher")
    rec = session.Recorder(tuple(s.caption for s in subjects.subjects))
    return patcher.apply_routing(model, subjects, settings(pack, **kw), rec), rec
