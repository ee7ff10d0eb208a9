"""MUSAR Route References through real ComfyUI sampling on the tiny FLUX.1 (Kontext) and FLUX.2
stand-ins: routed sampling equals the dense masked reference for 1..6 references under every
reference method and FLUX.2's positions, routing off is bit-identical to the stock
ReferenceLatent graph, blocked reference pairs carry no information, hard regions give exactly
the requested route, the input MODEL is unchanged, CFG batches share one route, fp8 weights,
MUSAR subjects and routed references in one MODEL."""

import pytest
import torch
from musar_helpers import (
    REF_SIZES,
    assert_close,
    assert_routing_acts,
    make_subjects,
    pack_module,
    ref_conds,
    ref_latents,
    route_refs,
    routed,
    sample_refs,
    spy_block_attention,
    spy_layouts,
    use_dense_reference,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: small ops
METHODS = ("offset", "index", "uxo")


@pytest.fixture(scope="module")
def flux1(tiny_flux):
    return tiny_flux(seed=3)


@pytest.fixture(scope="module")
def flux2(standins):
    return standins.build_flux(standins.flux2_unet_config(), seed=5)


@pytest.mark.parametrize("n", range(1, 7))
@pytest.mark.parametrize("method", METHODS)
def test_routed_references_equal_the_dense_reference_flux1(pack, flux1, monkeypatch, n, method):
    conds = ref_conds(flux1, ref_latents(flux1, n, seed=n), method)
    patched, rec = route_refs(pack, flux1, dynamic=True, symmetric=n % 2 == 0)
    seen = spy_layouts(pack, monkeypatch)
    fast = sample_refs(patched, conds)
    assert len(rec.latest.routes) == 2 and seen[0][0].n_references == n
    assert {lay.reference_lens for lay, _ in seen} == {tuple(h * w // 4 for h, w in REF_SIZES[:n])}
    static = sample_refs(route_refs(pack, flux1, dynamic=False)[0], conds)
    if n > 1:  # one reference: every route is that reference, static alone is the same
        assert_routing_acts(fast, static)  # dynamic routing's effect
        assert_routing_acts(static, sample_refs(flux1, conds))  # references no longer see each other
    use_dense_reference(pack, monkeypatch)
    assert_close(fast, sample_refs(patched, conds))


@pytest.mark.parametrize("n", range(1, 7))
def test_routed_references_equal_the_dense_reference_flux2(pack, flux2, monkeypatch, n):
    conds = ref_conds(flux2, ref_latents(flux2, n, seed=n))  # FLUX.2's own "index" x 10 positions
    patched, rec = route_refs(pack, flux2, dynamic=True, block_prompt_references=n % 2 == 1)
    seen = spy_layouts(pack, monkeypatch)
    fast = sample_refs(patched, conds)
    assert len(rec.latest.routes) == 2 and seen[0][0].n_references == n
    assert seen[0][0].prompt_len == 512  # FLUX.2 pads the prompt to 512 tokens
    static = sample_refs(route_refs(pack, flux2, dynamic=False, block_prompt_references=n % 2 == 1)[0], conds)
    if n > 1:
        assert_routing_acts(fast, static)
    assert_routing_acts(static, sample_refs(flux2, conds))  # refs apart (n > 1), prompt apart (odd n)
    use_dense_reference(pack, monkeypatch)
    assert_close(fast, sample_refs(patched, conds))


@pytest.mark.parametrize("family", ["flux1", "flux2"])
def test_routing_off_is_bit_identical_to_the_stock_reference_graph(pack, request, family):
    model = request.getfixturevalue(family)
    for method in (METHODS if family == "flux1" else (None,)):
        conds = ref_conds(model, ref_latents(model, 3), method)
        stock = sample_refs(model, conds)
        off, _ = route_refs(pack, model, static=False, dynamic=False)
        assert torch.equal(sample_refs(off, conds), stock)
        routed_out = sample_refs(route_refs(pack, model, dynamic=False)[0], conds)
        assert not torch.equal(routed_out, stock)  # static routing does change the result
        assert torch.equal(sample_refs(model, conds), stock)  # the input MODEL is unchanged
    assert "musar_attachment" not in model.model_options["transformer_options"]


def test_strength_zero_returns_the_input_model(pack, flux2):
    nodes = pack_module(pack, "nodes.references")
    out = nodes.MusarRouteReferences.execute(flux2, static_routing=True, block_prompt_references=False,
                                             dynamic_routing=True, start_percent=0.2, end_percent=1.0,
                                             routing_blocks="double", threshold=0.0, smoothing=3,
                                             symmetric=False, strength=0.0)
    assert out.result[0] is flux2


def test_blocked_reference_pairs_carry_no_information_in_every_block(pack, flux2, monkeypatch):
    """In every block of a FLUX.2 stand-in, replacing reference 1's keys/values by another run's
    leaves the other references' attention output bit-identical (and the prompt's when prompt
    <-> reference blocking is on)."""
    attention = pack_module(pack, "musar.attention")
    captured = spy_block_attention(pack, monkeypatch)
    refs = ref_latents(flux2, 3)
    other = [refs[0], torch.randn_like(refs[1]), refs[2]]
    for block in (False, True):
        captured.clear()
        for r in (refs, other):
            patched, _ = route_refs(pack, flux2, dynamic=False, block_prompt_references=block)
            sample_refs(patched, ref_conds(flux2, r), steps=1, cfg=1.0)
        first, second = captured[:4], captured[4:]
        assert len(first) == len(second) == 4
        for (layout, plan, q, k, v, kernel), (_, _, _, k2, v2, _) in zip(first, second):
            r1 = layout.reference(1)
            k_mix, v_mix = k.clone(), v.clone()
            k_mix[:, :, r1], v_mix[:, :, r1] = k2[:, :, r1], v2[:, :, r1]
            base = attention.routed_attention(q, k, v, layout, plan, kernel)
            mixed = attention.routed_attention(q, k_mix, v_mix, layout, plan, kernel)
            for rows in (layout.reference(0), layout.reference(2)):
                assert torch.equal(base[:, rows], mixed[:, rows])
            assert torch.equal(base[:, layout.prompt], mixed[:, layout.prompt]) == block
            assert not torch.equal(base[:, layout.x], mixed[:, layout.x])


def _labels(pack, regions):
    refs = pack_module(pack, "musar.references")
    out = refs.ReferenceLabels()
    for j, region in enumerate(regions):
        if region is not None:
            out = out.add(refs.ReferenceLabel(j + 1, f"ref {j + 1}", None, region))
    return out


def _halves(pack, size=128, mode="hard"):
    regions = pack_module(pack, "musar.regions")
    left, right = torch.zeros(size, size), torch.zeros(size, size)
    left[:, : size // 2], right[:, size // 2:] = 1, 1
    return regions.Region(left, mode), regions.Region(right, mode)


@pytest.mark.parametrize("family", ["flux1", "flux2"])
def test_hard_regions_give_exactly_the_requested_route(pack, request, family):
    model = request.getfixturevalue(family)
    left, right = _halves(pack)
    conds = ref_conds(model, ref_latents(model, 3))
    patched, rec = route_refs(pack, model, _labels(pack, [left, None, right]), dynamic=True)
    sample_refs(patched, conds, steps=4)
    want = torch.tensor([0] * 4 + [2] * 4).repeat(8)[None].to(torch.int16)  # 8 x 8 token grid
    assert len(rec.latest.routes) == 4  # from the first step: hard regions need no scores
    assert all(torch.equal(route, want) for _, route in rec.latest.routes)
    only, rec = route_refs(pack, model, _labels(pack, [left, None, right]), dynamic=False)
    sample_refs(only, conds, steps=2)
    assert all(torch.equal(route, want) for _, route in rec.latest.routes)


def test_regions_and_routes_match_the_dense_reference(pack, flux1, monkeypatch):
    left, _ = _halves(pack)
    _, soft_right = _halves(pack, mode="soft")
    conds = ref_conds(flux1, ref_latents(flux1, 3), "index")
    patched, rec = route_refs(pack, flux1, _labels(pack, [left, soft_right, None]), dynamic=True)
    fast = sample_refs(patched, conds, steps=4)
    routes = [route for _, route in rec.latest.routes]
    assert all((r.reshape(8, 8)[:, :4] == 0).all() for r in routes)
    use_dense_reference(pack, monkeypatch)
    torch.testing.assert_close(fast, sample_refs(patched, conds, steps=4), rtol=1e-4, atol=1e-4)


def test_cond_and_uncond_with_references_run_batched_and_share_one_route(pack, flux1, monkeypatch):
    conds = ref_conds(flux1, ref_latents(flux1, 2))  # the negative holds the references too
    patched, _ = route_refs(pack, flux1, dynamic=True)
    seen = spy_layouts(pack, monkeypatch)
    sample_refs(patched, conds, steps=3)
    routes = [plan.route for _, plan in seen if plan.route is not None]
    assert {lay.n_references for lay, _ in seen} == {2} and routes
    assert all(r.shape[0] == 2 and torch.equal(r[0], r[1]) for r in routes)


def test_uncond_without_references_runs_apart_and_stays_unrouted(pack, flux1, monkeypatch):
    conds = ref_conds(flux1, ref_latents(flux1, 2), uncond_refs=False)
    patched, _ = route_refs(pack, flux1, dynamic=True)
    seen = spy_layouts(pack, monkeypatch)
    fast = sample_refs(patched, conds, steps=3)
    assert {(lay.n_references, plan.route is None) for lay, plan in seen} >= {(0, True), (2, False)}
    use_dense_reference(pack, monkeypatch)
    torch.testing.assert_close(fast, sample_refs(patched, conds, steps=3), rtol=1e-4, atol=1e-4)


def test_fp8_weights_with_routed_references(pack, standins, monkeypatch):
    model = standins.build_flux(standins.flux2_unet_config(), seed=5, dtype=torch.float8_e4m3fn,
                                compute_dtype=torch.float32)
    conds = ref_conds(model, ref_latents(model, 3))
    patched, _ = route_refs(pack, model, dynamic=True)
    fast = sample_refs(patched, conds)
    assert torch.isfinite(fast).all()
    use_dense_reference(pack, monkeypatch)
    torch.testing.assert_close(fast, sample_refs(patched, conds), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", ["subjects first", "references first"])
def test_subjects_and_references_route_together_in_one_model(pack, flux1, monkeypatch, order):
    """Two MUSAR subjects and two routed references in one MODEL (either node first): one
    layout, one route over the four conditions (reference 1's hard left-half region is route
    index 2, after the subjects), equal to the dense reference."""
    subjects = make_subjects(pack)
    labels = _labels(pack, [_halves(pack)[0], None])
    conds = ref_conds(flux1, ref_latents(flux1, 2), "offset")
    if order == "subjects first":
        patched, _ = route_refs(pack, routed(pack, flux1, subjects)[0], labels, dynamic=True)
    else:
        patched, _ = routed(pack, route_refs(pack, flux1, labels)[0], subjects, dynamic=True)
    rec = patched.model_options["transformer_options"]["musar_attachment"].recorder
    seen = spy_layouts(pack, monkeypatch)
    fast = sample_refs(patched, conds, steps=3)
    layout = seen[0][0]
    assert (layout.n_subjects, layout.n_references) == (2, 2)
    assert rec.latest.conditions.captions == ("subject 1", "subject 2", "ref 1", "reference 2")
    routes = [r.reshape(8, 8) for _, r in rec.latest.routes]
    assert len(routes) == 3 and all((r[:, :4] == 2).all() and int(r.max()) < 4 for r in routes)
    use_dense_reference(pack, monkeypatch)
    torch.testing.assert_close(fast, sample_refs(patched, conds, steps=3), rtol=1e-4, atol=1e-4)


def _strengths(pack, values):
    refs = pack_module(pack, "musar.references")
    out = refs.ReferenceLabels()
    for j, s in enumerate(values):
        out = out.add(refs.ReferenceLabel(j + 1, strength=s))
    return out


@pytest.mark.parametrize("family", ["flux1", "flux2"])
def test_reference_strength_equals_the_dense_reference_with_its_bias(pack, request, family, monkeypatch):
    """Per-reference strength inside real sampling (strengths 1, 0.3, 0): routed sampling equals
    the dense reference with the same log-weight biases, and the strengths act far above the
    tolerance (tier 1 proves strength 0 hides the reference from the canvas exactly)."""
    model = request.getfixturevalue(family)
    refs = ref_latents(model, 3)
    conds = ref_conds(model, refs)
    patched, _ = route_refs(pack, model, _strengths(pack, (1.0, 0.3, 0.0)), dynamic=True)
    fast = sample_refs(patched, conds)
    plain = sample_refs(route_refs(pack, model, dynamic=True)[0], conds)
    assert_routing_acts(fast, plain)
    use_dense_reference(pack, monkeypatch)
    assert_close(fast, sample_refs(patched, conds))
