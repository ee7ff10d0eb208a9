"""MUSAR Route References on Qwen-Image-Edit (2509: reference method "index"; 2511:
"index_timestep_zero", ComfyUI 0.33+) through real ComfyUI sampling on a tiny stand-in built
from ComfyUI's own QwenImage classes: routed = the dense masked reference, routing off = the
stock graph bit for bit, blocked reference pairs carry no information, hard regions give exactly
the requested route, per-reference strength = the dense reference with its bias, each routing
effect far above the tolerance; and the edit text-encoder path (TextEncodeQwenImageEditPlus with
pictures) on the tiny Qwen2.5-VL."""

import comfy.sample
import pytest
import torch
from musar_helpers import (
    assert_close,
    assert_routing_acts,
    pack_module,
    route_refs,
    spy_block_attention,
    use_dense_reference,
)

import nodes as comfy_nodes

pytestmark = pytest.mark.usefixtures("one_thread")
REF_SIZES = [(8, 8), (8, 12), (6, 10)]  # latent (h, w) per reference


@pytest.fixture(scope="module")
def builders(pack):
    return pack_module(pack, "nodes.testing.qwen")


@pytest.fixture(scope="module")
def qwen(builders):
    return builders.build_qwen_image(builders.qwen_image_unet_config(), seed=3)


@pytest.fixture(scope="module")
def qwen_2511(builders):
    try:
        return builders.build_qwen_image(builders.qwen_image_unet_config(ref_method="index_timestep_zero"), seed=3)
    except Exception as e:  # ModelError of the pack: this ComfyUI has no 2511 method
        pytest.skip(str(e))


def refs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 16, 1, h, w, generator=g) for h, w in REF_SIZES[:n]]


def conds(references, seed=0, uncond_refs=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for with_refs in (True, uncond_refs):
        extra = {"reference_latents": list(references)} if with_refs and references else {}
        out.append([[torch.randn(1, 9, 64, generator=g), extra]])
    return out


def sample(model, cond, steps=3, cfg=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 16, 1, 16, 16, generator=g)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", *cond,
                               torch.zeros_like(noise), seed=seed, disable_pbar=True)


@pytest.mark.parametrize("variant", ["2509", "2511"])
@pytest.mark.parametrize("n", [2, 3])
def test_routed_qwen_references_equal_the_dense_reference(pack, request, monkeypatch, variant, n):
    model = request.getfixturevalue("qwen" if variant == "2509" else "qwen_2511")
    cond = conds(refs(n, seed=n))
    patched, rec = route_refs(pack, model, dynamic=True)
    captured = spy_block_attention(pack, monkeypatch)
    fast = sample(patched, cond)
    assert len(rec.latest.routes) == 2 and {c[0].n_references for c in captured} == {n}
    assert {c[0].reference_lens for c in captured} == {tuple(h * w // 4 for h, w in REF_SIZES[:n])}
    static = sample(route_refs(pack, model, dynamic=False)[0], cond)
    assert_routing_acts(fast, static)  # dynamic routing's effect
    assert_routing_acts(static, sample(model, cond))  # references no longer see each other
    use_dense_reference(pack, monkeypatch)
    assert_close(fast, sample(patched, cond))


@pytest.mark.parametrize("variant", ["2509", "2511"])
def test_qwen_routing_off_is_the_stock_graph_bit_for_bit(pack, request, variant):
    model = request.getfixturevalue("qwen" if variant == "2509" else "qwen_2511")
    cond = conds(refs(3))
    stock = sample(model, cond)
    off, _ = route_refs(pack, model, static=False, dynamic=False)
    assert torch.equal(sample(off, cond), stock)
    assert torch.equal(sample(model, cond), stock)  # the input MODEL is unchanged


def test_blocked_qwen_reference_pairs_carry_no_information(pack, qwen, monkeypatch):
    attention = pack_module(pack, "musar.attention")
    captured = spy_block_attention(pack, monkeypatch)
    base, other = refs(3), refs(3)
    other = [base[0], torch.randn_like(base[1]), base[2]]
    for r in (base, other):
        patched, _ = route_refs(pack, qwen, dynamic=False)
        sample(patched, conds(r), steps=1, cfg=1.0)
    first, second = captured[:2], captured[2:]
    assert len(first) == len(second) == 2  # two Qwen blocks, one call each
    for (layout, plan, q, k, v, kernel), (_, _, _, k2, v2, _) in zip(first, second):
        r1 = layout.reference(1)
        k_mix, v_mix = k.clone(), v.clone()
        k_mix[:, :, r1], v_mix[:, :, r1] = k2[:, :, r1], v2[:, :, r1]
        a = attention.routed_attention(q, k, v, layout, plan, kernel)
        b = attention.routed_attention(q, k_mix, v_mix, layout, plan, kernel)
        for rows in (layout.reference(0), layout.reference(2)):
            assert torch.equal(a[:, rows], b[:, rows])
        assert not torch.equal(a[:, layout.x], b[:, layout.x])


def test_hard_regions_give_exactly_the_requested_qwen_route(pack, qwen):
    regions = pack_module(pack, "musar.regions")
    references = pack_module(pack, "musar.references")
    left, right = torch.zeros(128, 128), torch.zeros(128, 128)
    left[:, :64], right[:, 64:] = 1, 1
    labels = references.ReferenceLabels().add(references.ReferenceLabel(1, region=regions.Region(left))) \
        .add(references.ReferenceLabel(3, region=regions.Region(right)))
    patched, rec = route_refs(pack, qwen, labels, dynamic=True)
    sample(patched, conds(refs(3)), steps=3)
    want = torch.tensor([0] * 4 + [2] * 4).repeat(8)[None].to(torch.int16)
    assert len(rec.latest.routes) == 3 and all(torch.equal(r, want) for _, r in rec.latest.routes)


def test_qwen_reference_strength_equals_the_dense_reference_with_its_bias(pack, qwen, monkeypatch):
    references = pack_module(pack, "musar.references")
    labels = references.ReferenceLabels()
    for j, s in enumerate((0.2, 1.0, 0.0)):
        labels = labels.add(references.ReferenceLabel(j + 1, strength=s))
    cond = conds(refs(3))
    patched, _ = route_refs(pack, qwen, labels, dynamic=True)
    fast = sample(patched, cond)
    assert_routing_acts(fast, sample(route_refs(pack, qwen, dynamic=True)[0], cond))
    use_dense_reference(pack, monkeypatch)
    assert_close(fast, sample(patched, cond))


def test_the_edit_text_encoder_path_feeds_routed_references(pack, builders, qwen, monkeypatch):
    """TextEncodeQwenImageEditPlus on the tiny Qwen2.5-VL: each picture's vision tokens are in
    the prompt ("Picture 1: ..."), and they stay with the prompt when references are routed
    [chosen: the language model has already mixed every picture into every later prompt token,
    so no token of the prompt belongs to one picture alone]: the layout's prompt is the whole
    conditioning, it sees every reference unless prompt <-> reference blocking is on."""
    clip = builders.build_qwen_clip(0)
    encode = comfy_nodes.NODE_CLASS_MAPPINGS["TextEncodeQwenImageEditPlus"]
    pictures = [torch.rand(1, 48, 48, 3, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    out = encode.execute(clip, "the two things together", None, *pictures)
    cond = (out.result if hasattr(out, "result") else out)[0]
    text_only = (lambda o: (o.result if hasattr(o, "result") else o)[0])(
        encode.execute(clip, "the two things together", None))
    assert cond[0][0].shape[1] > text_only[0][0].shape[1]  # the pictures' vision tokens
    tokens = cond[0][0]
    positive = [[tokens, {"reference_latents": refs(2)}]]
    negative = [[tokens, {"reference_latents": refs(2)}]]
    seen = []
    blocks = pack_module(pack, "musar.block")
    original = blocks.block_attention

    def spy(call, *a):
        seen.append(call.layout)
        return original(call, *a)

    monkeypatch.setattr(blocks, "block_attention", spy)
    for block in (False, True):
        patched, _ = route_refs(pack, qwen, dynamic=True, block_prompt_references=block)
        fast = sample(patched, (positive, negative), steps=2)
        assert seen[-1].prompt_len == tokens.shape[1]
    use_dense_reference(pack, monkeypatch)
    assert_close(fast, sample(patched, (positive, negative), steps=2))
