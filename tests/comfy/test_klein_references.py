"""MUSAR Route References on FLUX.2 [klein] (ComfyUI 0.33+: the FLUX.2 architecture without
guidance embedding, text from Qwen3 with three layers tapped) through real ComfyUI sampling on
a tiny stand-in: its own text encoder and template, both klein reference methods ("index" and
"index_timestep_zero"), routed = the dense masked reference, routing off = the stock graph bit
for bit, hard regions, per-reference strength, each effect far above the tolerance. Skipped,
saying so, on a ComfyUI without klein (0.3.75)."""

import pytest
import torch
from musar_helpers import (
    assert_close,
    assert_routing_acts,
    pack_module,
    ref_latents,
    route_refs,
    sample_refs,
    spy_block_attention,
    use_dense_reference,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def klein_clip(standins, pack):
    errors = pack_module(pack, "musar.errors")
    try:
        return standins.build_klein_clip(0)
    except errors.ModelError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def klein(standins, klein_clip):
    return standins.build_flux(standins.klein_unet_config(), seed=11)


def klein_conds(clip, refs, method=None):
    """(positive, negative) from klein's own text encoder; the negative holds the references too."""
    out = []
    for text in ("two things side by side", ""):
        tokens = clip.tokenize(text)
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        extra = {"pooled_output": pooled, "reference_latents": list(refs)}
        if method:
            extra["reference_latents_method"] = method
        out.append([[cond, extra]])
    return out


@pytest.mark.parametrize("method", ["index", "index_timestep_zero"])
def test_routed_klein_references_equal_the_dense_reference(pack, klein, klein_clip, monkeypatch, method):
    conds = klein_conds(klein_clip, ref_latents(klein, 3), method)
    assert conds[0][0][0].shape[-1] == 3 * pack_module(pack, "nodes.testing.standins").KLEIN_TE_WIDTH
    patched, rec = route_refs(pack, klein, dynamic=True)
    captured = spy_block_attention(pack, monkeypatch)
    fast = sample_refs(patched, conds)
    assert len(rec.latest.routes) == 2 and {c[0].n_references for c in captured} == {3}
    static = sample_refs(route_refs(pack, klein, dynamic=False)[0], conds)
    assert_routing_acts(fast, static)
    assert_routing_acts(static, sample_refs(klein, conds))
    use_dense_reference(pack, monkeypatch)
    assert_close(fast, sample_refs(patched, conds))


def test_klein_routing_off_is_the_stock_graph_bit_for_bit(pack, klein, klein_clip):
    conds = klein_conds(klein_clip, ref_latents(klein, 3))
    stock = sample_refs(klein, conds)
    off, _ = route_refs(pack, klein, static=False, dynamic=False)
    assert torch.equal(sample_refs(off, conds), stock)


def test_klein_hard_regions_and_strength(pack, klein, klein_clip, monkeypatch):
    regions = pack_module(pack, "musar.regions")
    references = pack_module(pack, "musar.references")
    left, right = torch.zeros(128, 128), torch.zeros(128, 128)
    left[:, :64], right[:, 64:] = 1, 1
    labels = references.ReferenceLabels().add(
        references.ReferenceLabel(1, region=regions.Region(left), strength=0.5)).add(
        references.ReferenceLabel(3, region=regions.Region(right), strength=0.0))
    conds = klein_conds(klein_clip, ref_latents(klein, 3))
    patched, rec = route_refs(pack, klein, labels, dynamic=True)
    fast = sample_refs(patched, conds, steps=3)
    want = torch.tensor([0] * 4 + [2] * 4).repeat(8)[None].to(torch.int16)
    assert all(torch.equal(r, want) for _, r in rec.latest.routes)
    use_dense_reference(pack, monkeypatch)
    assert_close(fast, sample_refs(patched, conds, steps=3))
