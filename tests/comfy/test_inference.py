"""MUSAR inside ComfyUI's FLUX: equivalence with the dense reference, no-ops, clone safety,
isolation, CFG batching, the condition cache and per-segment modulation."""

import pytest
import torch
from musar_helpers import (
    ROUTING,
    assert_close,
    assert_routing_acts,
    make_subjects,
    pack_module,
    routed,
    sample,
    spy_block_attention,
    use_dense_reference,
)


@pytest.fixture(scope="module")
def model(tiny_flux):
    return tiny_flux(seed=3)


SIZES = [(8, 8), (8, 12), (4, 8), (10, 6), (6, 6), (8, 4)]


@pytest.mark.parametrize("n", [1, 2, 3, 6])
@pytest.mark.parametrize("dynamic,symmetric", [(False, False), (True, False), (True, True)])
def test_patched_sampling_equals_dense_reference(pack, model, monkeypatch, n, dynamic, symmetric):
    subjects = make_subjects(pack, SIZES[:n], tuple(range(2, 2 + n)), seed=n)
    patched, rec = routed(pack, model, subjects, dynamic=dynamic, symmetric=symmetric)
    fast = sample(patched, steps=3, cfg=2.0)
    if dynamic:
        assert len(rec.latest.routes) == 2  # steps 2 and 3 routed from the previous step's scores
    # the effect under test: static routing vs none; dynamic (symmetric) vs static alone
    if not (dynamic and n == 1):  # one subject: every route is that subject (dynamic = static)
        below = dict(dynamic=symmetric) if dynamic else dict(static=False, dynamic=False)
        assert_routing_acts(fast, sample(routed(pack, model, subjects, **below)[0], steps=3, cfg=2.0))
    use_dense_reference(pack, monkeypatch)
    assert_close(fast, sample(patched, steps=3, cfg=2.0))


def test_cond_and_uncond_run_batched_and_share_one_route(pack, model, monkeypatch):
    blocks = pack_module(pack, "musar.block")
    seen = []
    original = blocks.block_attention

    def spy(call, block, q, *a):
        seen.append((q.shape[0], None if call.plan.route is None else call.plan.route.clone()))
        return original(call, block, q, *a)

    monkeypatch.setattr(blocks, "block_attention", spy)
    patched, _ = routed(pack, model, make_subjects(pack))
    sample(patched, steps=3, cfg=3.0)
    assert {b for b, _ in seen} == {2}
    routes = [r for _, r in seen if r is not None]
    assert routes and all(torch.equal(r[0], r[1]) for r in routes)


def test_input_model_is_unchanged_after_a_patched_run(pack, model):
    before = sample(model)
    patched, _ = routed(pack, model, make_subjects(pack))
    sample(patched)
    assert torch.equal(sample(model), before)
    assert "musar_attachment" not in model.model_options["transformer_options"]


def test_zero_subjects_is_bit_identical_to_the_unpatched_model(pack, model):
    subj = pack_module(pack, "musar.subjects")
    patched, _ = routed(pack, model, subj.SubjectSet())
    assert torch.equal(sample(patched), sample(model))


def test_routing_node_returns_the_input_model_for_strength_zero(pack, model):
    routing_nodes = pack_module(pack, "nodes.apply_routing")
    out = routing_nodes.MusarApplyRouting.execute(model, make_subjects(pack), **{**ROUTING, "strength": 0.0})
    assert out.result[0] is model


def test_subjects_change_the_output(pack, model):
    patched, _ = routed(pack, model, make_subjects(pack))
    other, _ = routed(pack, model, make_subjects(pack, seed=9))
    a, b, plain = sample(patched), sample(other), sample(model)
    assert (a - plain).abs().max() > 1e-4 and (a - b).abs().max() > 1e-4


def _capture_blocks(pack, monkeypatch):
    patcher = pack_module(pack, "nodes.patcher")
    outputs = {}
    original = patcher._BlockPatch.__call__

    def spy(self, args, extra):
        out = original(self, args, extra)
        outputs.setdefault((self.kind, self.index), []).append({k: v.clone() for k, v in out.items()})
        return out

    monkeypatch.setattr(patcher._BlockPatch, "__call__", spy)
    return outputs


def _with_image(pack, subjects, j, seed):
    subj = pack_module(pack, "musar.subjects")
    s = subjects.subjects[j]
    g = torch.Generator().manual_seed(seed)
    changed = subj.Subject(torch.randn(s.latent.shape, generator=g), s.caption, s.caption_tokens)
    return subj.SubjectSet(tuple(changed if i == j else x for i, x in enumerate(subjects.subjects)))


def test_static_isolation_in_the_first_block(pack, model, monkeypatch):
    """Changing subject 1's image leaves subject 0's condition tokens and the prompt tokens
    unchanged at the output of the first block (later blocks mix through X, which the paper's
    mask lets conditions and the prompt see)."""
    subjects = make_subjects(pack, SIZES[:3], (2, 3, 4))
    runs = []
    for s in (subjects, _with_image(pack, subjects, 1, 99)):
        outputs = _capture_blocks(pack, monkeypatch)
        patched, _ = routed(pack, model, s, dynamic=False)
        sample(patched, steps=1, cfg=1.0)
        runs.append(outputs[("double_block", 0)][0])
        monkeypatch.undo()
    layout = _layout(subjects, prompt=7, x=64)
    a, b = runs
    for stream, rows in (("txt", layout.prompt), ("txt", layout.caption(0)), ("txt", layout.caption(2)),
                         ("img", layout.image_in_img_stream(0)), ("img", layout.image_in_img_stream(2))):
        torch.testing.assert_close(a[stream][:, rows], b[stream][:, rows], rtol=0, atol=1e-6)
    assert (a["img"][:, layout.image_in_img_stream(1)] - b["img"][:, layout.image_in_img_stream(1)]).abs().max() > 1e-3
    assert (a["img"][:, :64] - b["img"][:, :64]).abs().max() > 1e-5  # X sees every condition


def _layout(subjects, prompt, x):
    layout = pack_module_from(subjects, "musar.layout")
    return layout.TokenLayout(prompt, x, tuple(s.caption_tokens.shape[1] for s in subjects.subjects),
                              tuple(s.n_tokens for s in subjects.subjects))


def pack_module_from(obj, name):
    import importlib
    root = type(obj).__module__.rsplit(".musar.", 1)[0]
    return importlib.import_module(f"{root}.{name}")


def test_blocked_pairs_carry_no_information_in_every_block(pack, model, monkeypatch):
    """In every block, replacing subject 1's keys/values by another run's leaves the attention
    output of the prompt and of subject 0 bit-for-bit unchanged."""
    attention = pack_module(pack, "musar.attention")
    captured = spy_block_attention(pack, monkeypatch)
    subjects = make_subjects(pack, SIZES[:3], (2, 3, 4))
    other = _with_image(pack, subjects, 1, 5)
    for s in (subjects, other):
        patched, _ = routed(pack, model, s, dynamic=False)
        sample(patched, steps=1, cfg=1.0)
    first, second = captured[:4], captured[4:]
    assert len(first) == len(second) == 4  # 2 double + 2 single blocks
    for (layout, plan, q, k, v, kernel), (_, _, _, k2, v2, _) in zip(first, second):
        c1 = torch.cat([torch.arange(s.start, s.stop) for s in layout.condition(1)])
        k_mix, v_mix = k.clone(), v.clone()
        k_mix[:, :, c1], v_mix[:, :, c1] = k2[:, :, c1], v2[:, :, c1]
        base = attention.routed_attention(q, k, v, layout, plan, kernel)
        mixed = attention.routed_attention(q, k_mix, v_mix, layout, plan, kernel)
        for rows in (layout.prompt, *layout.condition(0), *layout.condition(2)):
            assert torch.equal(base[:, rows], mixed[:, rows])
        assert not torch.equal(base[:, layout.x], mixed[:, layout.x])


def test_dynamic_route_isolates_x_tokens_routed_elsewhere(pack, model, monkeypatch):
    session = pack_module(pack, "musar.session")
    route = torch.zeros(1, 64, dtype=torch.long)
    route[:, 32:] = 1
    monkeypatch.setattr(session.RunState, "route_for", lambda self, *a: route)
    subjects = make_subjects(pack, SIZES[:2], (2, 3))
    runs = []
    for s in (subjects, _with_image(pack, subjects, 1, 7)):
        outputs = _capture_blocks(pack, monkeypatch)
        monkeypatch.setattr(session.RunState, "route_for", lambda self, *a: route)
        patched, _ = routed(pack, model, s, dynamic=True)
        sample(patched, steps=1, cfg=1.0)
        runs.append(outputs[("double_block", 0)][0]["img"])
    a, b = runs
    torch.testing.assert_close(a[:, :32], b[:, :32], rtol=0, atol=1e-6)
    assert (a[:, 32:64] - b[:, 32:64]).abs().max() > 1e-5


def test_condition_tokens_use_clean_modulation(pack, model, monkeypatch):
    """Row 1 of the modulation input (condition tokens) is FLUX's vector at timestep 0 and
    guidance 1; row 0 is the sampling vector; and with equal rows the per-segment block equals
    the stock block (the segment plumbing adds nothing else)."""
    from comfy.ldm.flux.layers import timestep_embedding

    patcher = pack_module(pack, "nodes.patcher")
    session = pack_module(pack, "musar.session")
    dm = model.model.diffusion_model
    checks = []
    original = patcher._BlockPatch.__call__

    def spy(self, args, extra):
        call = session.ACTIVE.get()
        vec = args["vec"]
        clean = call.clean_vec(vec)
        checks.append((vec.clone(), clean.clone()))
        if self.kind == "double_block" and self.index == 0:
            call._clean = vec  # both rows equal -> must reproduce the stock block
            mine = original(self, {**args, "img": args["img"].clone(), "txt": args["txt"].clone()}, extra)
            stock = extra["original_block"]({**args, "img": args["img"].clone(), "txt": args["txt"].clone()})
            for key in ("img", "txt"):
                torch.testing.assert_close(mine[key], stock[key], rtol=1e-5, atol=1e-5)
            call._clean = clean
        return original(self, args, extra)

    monkeypatch.setattr(patcher._BlockPatch, "__call__", spy)
    patched, _ = routed(pack, model, make_subjects(pack), dynamic=False)
    sample(patched, steps=2, cfg=1.0)
    from musar_helpers import conds
    pooled = conds(0)[0][0][1]["pooled_output"]
    zero = torch.zeros(1)
    expected = (dm.time_in(timestep_embedding(zero, 256)) + dm.guidance_in(timestep_embedding(zero + 1, 256))
                + dm.vector_in(pooled))
    for _vec, clean in checks:
        torch.testing.assert_close(clean, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(checks[0][0], checks[-1][0])  # the sampling vector does change


def test_masked_subject_uses_only_kept_tokens_and_matches_the_reference(pack, model, monkeypatch):
    subj = pack_module(pack, "musar.subjects")
    g = torch.Generator().manual_seed(4)
    latent = torch.randn(1, 16, 8, 8, generator=g)
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1  # left half of the reference image
    keep = subj.Subject.keep_from_mask(mask, latent)
    assert int(keep.sum()) == 8  # 4x4 token grid, left two columns
    subjects = make_subjects(pack, ((8, 8),), (3,)).add(subj.Subject(latent, "half", torch.randn(1, 2, 64, generator=g), keep))
    patched, _ = routed(pack, model, subjects)
    fast = sample(patched)
    use_dense_reference(pack, monkeypatch)
    torch.testing.assert_close(fast, sample(patched), rtol=1e-4, atol=1e-4)


def test_kontext_reference_latents_are_routed_with_the_canvas(pack, model, monkeypatch):
    """ComfyUI's own ReferenceLatent tokens (appended after X) join the canvas group."""
    import comfy.sample
    from musar_helpers import conds

    pos, neg = conds()
    ref = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    for c in (pos, neg):
        c[0][1]["reference_latents"] = [ref]
    patched, _ = routed(pack, model, make_subjects(pack), position_mode="kontext")
    noise = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))

    def run():
        return comfy.sample.sample(patched, noise, 3, 2.0, "euler", "simple", pos, neg,
                                   torch.zeros_like(noise), seed=0, disable_pbar=True)

    blocks = pack_module(pack, "musar.block")
    extras = []
    original = blocks.block_attention
    monkeypatch.setattr(blocks, "block_attention",
                        lambda call, *a: extras.append(call.layout.extra_len) or original(call, *a))
    fast = run()
    assert set(extras) == {16}
    use_dense_reference(pack, monkeypatch)
    torch.testing.assert_close(fast, run(), rtol=1e-4, atol=1e-4)


def test_two_patched_models_do_not_share_state(pack, model):
    a_model, rec_a = routed(pack, model, make_subjects(pack, seed=1))
    b_model, rec_b = routed(pack, model, make_subjects(pack, seed=2))
    alone_a, alone_b = sample(a_model, seed=1), sample(b_model, seed=2)
    interleaved = [sample(a_model, seed=1), sample(b_model, seed=2), sample(a_model, seed=1)]
    assert torch.equal(interleaved[0], alone_a) and torch.equal(interleaved[2], alone_a)
    assert torch.equal(interleaved[1], alone_b)
    assert rec_a.latest is not rec_b.latest
