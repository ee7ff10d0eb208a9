"""What newer ComfyUI adds that users combine with the pack, through real sampling, and the one
typed error for a hook the pack needs. Each feature test runs on every ComfyUI that has the
feature and is skipped, naming what is missing, on one that does not (0.3.75 has none of
``index_timestep_zero``, FluxKVCache, ModelAttentionBackend).

The stand-in for the timestep-zero references is FLUX.2 without guidance embedding, as FLUX.2
[klein]: ComfyUI 0.33 runs ``index_timestep_zero`` only on FLUX.2 models without it (on FLUX.1
and on FLUX.2 [dev] its own forward fails with a batch mismatch, with or without MUSAR)."""

import comfy.ldm.flux.layers as flux_layers
import comfy.ldm.modules.attention as comfy_attention
import pytest
import torch
from musar_helpers import (
    make_subjects,
    pack_module,
    ref_conds,
    ref_latents,
    route_refs,
    routed,
    sample_refs,
    spy_block_attention,
    use_dense_reference,
)

import nodes as comfy_nodes

pytestmark = pytest.mark.usefixtures("one_thread")
TIMESTEP_ZERO = "index_timestep_zero"


def core_node(name: str):
    """A core node class of this ComfyUI, or a skip naming what this ComfyUI lacks."""
    cls = comfy_nodes.NODE_CLASS_MAPPINGS.get(name)
    if cls is None:
        pytest.skip(f"this ComfyUI has no {name} node (added after 0.3.75)")
    return cls


def require_timestep_zero():
    kind, spec = core_node("FluxKontextMultiReferenceLatentMethod").INPUT_TYPES()["required"][
        "reference_latents_method"]
    if TIMESTEP_ZERO not in (spec.get("options", ()) if kind == "COMBO" else kind):
        pytest.skip(f"this ComfyUI has no reference method {TIMESTEP_ZERO}")


@pytest.fixture(scope="module")
def klein(standins):
    return standins.build_flux(standins.flux2_unet_config(guidance=False), seed=7)


@pytest.fixture(scope="module")
def flux1(tiny_flux):
    return tiny_flux(seed=3)


def _kv_cache(model):
    out = core_node("FluxKVCache").execute(model)
    return out.result[0] if hasattr(out, "result") else out[0]


def _attention_backend(model):
    return core_node("ModelAttentionBackend")().patch(model, "pytorch attention")[0]


def _count_lse(pack, monkeypatch) -> list:
    lse = pack_module(pack, "musar.attention").SDPA_LSE
    calls, forward = [], lse.forward

    def counting(q, k, v):
        calls.append(q.shape[2])
        return forward(q, k, v)

    monkeypatch.setattr(lse, "forward", counting)
    return calls


# ---- the hooks the pack needs -----------------------------------------------------------------
def test_block_modulation_is_learned_from_comfys_own_apply_mod(pack):
    """The stacked modulation the block patch hands ComfyUI's blocks gives each segment its own
    row when ComfyUI's apply_mod applies it (the convention differs between 0.3.75 and 0.33)."""
    hooks = pack_module(pack, "nodes.hooks")
    mod = hooks.block_modulation()
    rows = [torch.randn(2, 8) for _ in range(2)]
    stack = mod.stack(*rows)
    got = flux_layers.apply_mod(torch.ones(2, 5, 8), stack, None, [(0, 2, 1), (2, 5, 0)])
    torch.testing.assert_close(got[:, :2], rows[1][:, None].expand(-1, 2, -1))
    torch.testing.assert_close(got[:, 2:], rows[0][:, None].expand(-1, 3, -1))


def test_an_unknown_modulation_convention_is_one_hook_error_naming_the_version(pack, monkeypatch):
    hooks = pack_module(pack, "nodes.hooks")
    errors = pack_module(pack, "musar.errors")

    def other_apply_mod(tensor, m_mult, m_add=None, modulation_dims=None):  # a future layout
        return tensor * m_mult.mean()

    monkeypatch.setattr(flux_layers, "apply_mod", other_apply_mod)
    hooks.block_modulation.cache_clear()
    try:
        with pytest.raises(errors.HookError, match=rf"ComfyUI {hooks.comfy_version()}: .*apply_mod"):
            routed(pack, flux1_model(pack), make_subjects(pack))  # at patch time
    finally:
        monkeypatch.undo()
        hooks.block_modulation.cache_clear()


def flux1_model(pack):
    standins = pack_module(pack, "nodes.testing.standins")
    return standins.build_flux(standins.flux_unet_config(), seed=1)


def test_a_block_without_per_segment_modulation_is_refused_at_patch_time(pack, monkeypatch):
    hooks = pack_module(pack, "nodes.hooks")
    errors = pack_module(pack, "musar.errors")
    hooks.block_modulation.cache_clear()

    class OldBlock:  # what a ComfyUI without per-segment modulation offers
        def forward(self, img, txt, vec, pe, attn_mask=None):
            return img, txt

    monkeypatch.setattr(flux_layers, "DoubleStreamBlock", OldBlock)
    try:
        with pytest.raises(errors.HookError, match="DoubleStreamBlock.forward has no modulation_dims_img"):
            routed(pack, flux1_model(pack), make_subjects(pack))
    finally:
        monkeypatch.undo()
        hooks.block_modulation.cache_clear()


def test_attention_without_block_position_is_a_hook_error(pack):
    """A ComfyUI whose FLUX forward stops saying which block runs attention gets one typed
    error at the first attention call, not a wrong route."""
    errors = pack_module(pack, "musar.errors")
    patcher = pack_module(pack, "nodes.patcher")
    session = pack_module(pack, "musar.session")
    layout = pack_module(pack, "musar.layout")
    call = session.MusarCall(layout.TokenLayout(2, 4, (1,), (2,)), attachment=object())
    q = torch.randn(1, 2, 9, 8)
    with session.activate(call), pytest.raises(errors.HookError, match="block_type"):
        patcher._AttentionOverride()(comfy_attention.attention_pytorch, q, q, q, 2,
                                     transformer_options={"total_blocks": 2})


# ---- index_timestep_zero references ----------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
def test_timestep_zero_references_route_like_the_dense_reference(pack, klein, monkeypatch, n):
    require_timestep_zero()
    conds = ref_conds(klein, ref_latents(klein, n, seed=n), TIMESTEP_ZERO)
    patched, rec = route_refs(pack, klein, dynamic=True)
    captured = spy_block_attention(pack, monkeypatch)
    fast = sample_refs(patched, conds)
    assert captured and {c[0].n_references for c in captured} == {n} and rec.latest.routes
    stock = sample_refs(klein, conds)
    assert (fast - stock).abs().max() > 1e-2  # routing acts on this stand-in
    use_dense_reference(pack, monkeypatch)
    torch.testing.assert_close(fast, sample_refs(patched, conds), rtol=1e-4, atol=1e-4)


def test_timestep_zero_references_with_routing_off_are_the_stock_graph(pack, klein):
    require_timestep_zero()
    conds = ref_conds(klein, ref_latents(klein, 3), TIMESTEP_ZERO)
    stock = sample_refs(klein, conds)
    off, _ = route_refs(pack, klein, static=False, dynamic=False)
    assert torch.equal(sample_refs(off, conds), stock)


def test_subjects_with_timestep_zero_references_are_refused_before_sampling(pack, flux1, monkeypatch):
    require_timestep_zero()
    errors = pack_module(pack, "musar.errors")
    captured = spy_block_attention(pack, monkeypatch)
    patched, _ = route_refs(pack, routed(pack, flux1, make_subjects(pack))[0])
    with pytest.raises(errors.LayoutError, match=TIMESTEP_ZERO):
        sample_refs(patched, ref_conds(flux1, ref_latents(flux1, 2), TIMESTEP_ZERO))
    assert not captured  # no block ran


# ---- FluxKVCache -----------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["cache first", "routing first"])
def test_core_kv_cache_routes_like_the_dense_reference_on_its_cached_steps(pack, klein, monkeypatch, order):
    conds = ref_conds(klein, ref_latents(klein, 3))
    if order == "cache first":
        patched, _ = route_refs(pack, _kv_cache(klein), dynamic=True)
    else:
        patched = _kv_cache(route_refs(pack, klein, dynamic=True)[0])
    captured = spy_block_attention(pack, monkeypatch)
    fast = sample_refs(patched, conds, steps=4)
    cached = [c for c in captured if c[2].shape[2] < c[3].shape[2]]
    assert cached and len(cached) < len(captured)  # the first step ran whole, later ones cached
    assert all(c[3].shape[2] == c[0].total for c in cached)
    stock = sample_refs(_kv_cache(klein), conds, steps=4)
    assert (fast - stock).abs().max() > 1e-2
    use_dense_reference(pack, monkeypatch)
    torch.testing.assert_close(fast, sample_refs(patched, conds, steps=4), rtol=1e-4, atol=1e-4)


def test_core_kv_cache_with_routing_off_is_the_stock_kv_cache(pack, klein):
    conds = ref_conds(klein, ref_latents(klein, 3))
    stock = sample_refs(_kv_cache(klein), conds, steps=4)
    off, _ = route_refs(pack, _kv_cache(klein), static=False, dynamic=False)
    assert torch.equal(sample_refs(off, conds, steps=4), stock)


def test_core_kv_cache_with_subjects_is_refused_before_sampling(pack, flux1, monkeypatch):
    errors = pack_module(pack, "musar.errors")
    patched, _ = routed(pack, _kv_cache(flux1), make_subjects(pack))
    captured = spy_block_attention(pack, monkeypatch)
    with pytest.raises(errors.LayoutError, match="Flux KV Cache"):
        sample_refs(patched, ref_conds(flux1, ref_latents(flux1, 2)))
    assert not captured


# ---- attention backends ----------------------------------------------------------------------
@pytest.mark.parametrize("order", ["backend first", "routing first"])
def test_model_attention_backend_keeps_routing_on_with_the_fast_executor(pack, flux1, monkeypatch, order):
    subjects = make_subjects(pack, ((8, 8), (8, 12), (4, 8)), (2, 3, 4))
    if order == "backend first":
        patched, _ = routed(pack, _attention_backend(flux1), subjects, dynamic=True)
    else:
        patched = _attention_backend(routed(pack, flux1, subjects, dynamic=True)[0])
    calls = _count_lse(pack, monkeypatch)
    captured = spy_block_attention(pack, monkeypatch)
    fast = sample_refs(patched, ref_conds(flux1, []), steps=3)
    assert captured and calls  # routed, by the log-sum-exp executor (the backend is SDPA)
    stock = sample_refs(_attention_backend(flux1), ref_conds(flux1, []), steps=3)
    assert (fast - stock).abs().max() > 1e-2
    use_dense_reference(pack, monkeypatch)
    torch.testing.assert_close(fast, sample_refs(patched, ref_conds(flux1, []), steps=3),
                               rtol=1e-4, atol=1e-4)


def test_an_attention_override_set_after_routing_keeps_routing_on(pack, flux1, monkeypatch):
    """Any ComfyUI: a node after MUSAR that sets its own attention override (replacing the
    MODEL's) does not switch routing off; MUSAR routes through it."""
    seen = []

    def theirs(func, *args, **kwargs):
        seen.append(func.__name__)
        return func(*args, **kwargs)

    patched, _ = routed(pack, flux1, make_subjects(pack), dynamic=True)
    after = patched.clone()
    after.model_options["transformer_options"]["optimized_attention_override"] = theirs
    captured = spy_block_attention(pack, monkeypatch)
    fast = sample_refs(after, ref_conds(flux1, []), steps=2)
    assert captured and seen
    torch.testing.assert_close(fast, sample_refs(patched, ref_conds(flux1, []), steps=2),
                               rtol=1e-5, atol=1e-5)


def test_a_forward_that_never_calls_the_attention_hook_is_one_hook_error(pack, flux1):
    """Were a ComfyUI to stop calling ``optimized_attention_override``, sampling would run
    unrouted and look fine: the first model call stops with a HookError instead (simulated by
    an inner wrapper that drops the override before FLUX sees it)."""
    import comfy.patcher_extension

    errors = pack_module(pack, "musar.errors")
    patched, _ = routed(pack, flux1, make_subjects(pack))
    stripped = patched.clone()

    def drop_override(executor, *args, **kwargs):
        args = list(args)
        args[7] = {k: v for k, v in args[7].items() if k != "optimized_attention_override"}
        return executor(*args, **kwargs)

    stripped.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", drop_override)
    with pytest.raises(errors.HookError, match="optimized_attention_override"):
        sample_refs(stripped, ref_conds(flux1, []), steps=1)
