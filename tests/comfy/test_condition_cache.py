"""Isolation and the exact condition cache through real ComfyUI sampling on the stand-ins.

With ``isolate`` on, every condition (a MUSAR subject, a routed reference) attends only to its
own tokens; modulated at a fixed timestep, its keys and values are then the same at every step,
so computing them once per run and CFG branch (``condition_cache``) gives the image of the
uncached isolated run. Fixed modulation: MUSAR subjects always (timestep 0, guidance 1); routed
references on FLUX.1 / Kontext by the pack's block patches; on FLUX.2 [klein] and
Qwen-Image-Edit-2511 by ComfyUI's ``index_timestep_zero`` (0.33+: skipped, naming it, where the
ComfyUI lacks it).

Tolerance: cached = uncached to 1e-4 (``EXACT``, the suite's tolerance for routed vs the dense
reference; measured here 1.3e-5 to 2.2e-5 on latents of magnitude ~1 after 4 steps, float32).
The two runs are not bit-identical: the cached steps run the canvas and prompt through the same
ops on shorter sequences, and a matrix product over fewer rows may round its last bits
differently. Each test prints the gap it measured. Isolation's own effect is checked to be
far above that tolerance, so a cache that silently did something else could not pass."""

import comfy.model_management
import pytest
import torch
from musar_helpers import (
    assert_routing_acts,
    make_subjects,
    pack_module,
    ref_conds,
    ref_latents,
    route_refs,
    routed,
    sample,
    sample_refs,
    spy_block_attention,
)

import nodes as comfy_nodes

pytestmark = pytest.mark.usefixtures("one_thread")
EXACT = 1e-4
TIMESTEP_ZERO = "index_timestep_zero"


def assert_exact(cached: torch.Tensor, uncached: torch.Tensor) -> None:
    gap = float((cached - uncached).abs().max())
    print(f"cached vs uncached isolated: max |diff| {gap:.3e}"
          f"{' (bit-identical)' if gap == 0 else ''}")
    assert gap <= EXACT, f"the cached run differs from the uncached isolated run by {gap:.3e}"


def cached_calls(captured) -> int:
    """Block attention calls that ran fewer queries than their layout's tokens (conditions
    cached: their keys and values came from the cache)."""
    return sum(1 for c in captured if c[2].shape[2] < c[0].total)


def require_timestep_zero():
    kind, spec = comfy_nodes.NODE_CLASS_MAPPINGS["FluxKontextMultiReferenceLatentMethod"] \
        .INPUT_TYPES()["required"]["reference_latents_method"]
    if TIMESTEP_ZERO not in (spec.get("options", ()) if kind == "COMBO" else kind):
        pytest.skip(f"this ComfyUI has no reference method {TIMESTEP_ZERO} (added after 0.3.75)")


@pytest.fixture(scope="module")
def flux1(tiny_flux):
    return tiny_flux(seed=3)


@pytest.fixture(scope="module")
def klein(standins):
    return standins.build_flux(standins.flux2_unet_config(guidance=False), seed=7)


@pytest.fixture(scope="module")
def qwen_2511(pack):
    builders = pack_module(pack, "nodes.testing.qwen")
    try:
        return builders.build_qwen_image(builders.qwen_image_unet_config(ref_method=TIMESTEP_ZERO), seed=3)
    except Exception as e:  # the pack's ModelError: this ComfyUI has no 2511 method
        pytest.skip(str(e))


# ---- MUSAR subjects (FLUX.1, both ComfyUI versions) -------------------------------------------
@pytest.mark.parametrize("dynamic", [False, True])
def test_isolated_subjects_cached_equal_the_uncached_isolated_run(pack, flux1, monkeypatch, dynamic):
    subjects = make_subjects(pack)
    isolated, _ = routed(pack, flux1, subjects, dynamic=dynamic, isolate=True)
    cached, rec = routed(pack, flux1, subjects, dynamic=dynamic, isolate=True, cache=True)
    want = sample(isolated, steps=4)
    captured = spy_block_attention(pack, monkeypatch)
    got = sample(cached, steps=4)
    assert cached_calls(captured) == 3 * 4  # steps 2-4 (CFG batched), 4 blocks each
    assert rec.latest.caches == []  # released when the run ended
    assert_exact(got, want)
    assert_routing_acts(want, sample(routed(pack, flux1, subjects, dynamic=dynamic)[0], steps=4))


def test_subject_cache_without_isolation_stays_an_approximation(pack, flux1):
    subjects = make_subjects(pack)
    exact = sample(routed(pack, flux1, subjects)[0], steps=4)
    approx = sample(routed(pack, flux1, subjects, cache=True)[0], steps=4)
    gap = (exact - approx).abs().max()
    assert gap > 10 * EXACT  # the subjects saw the canvas: frozen keys are not the same
    assert gap < (exact - sample(flux1, steps=4)).abs().max()  # but below MUSAR's whole effect


# ---- routed references ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["offset", "index"])
@pytest.mark.parametrize("uncond_refs", [True, False])
def test_isolated_kontext_references_cached_equal_the_uncached_run(pack, flux1, monkeypatch, method,
                                                                   uncond_refs):
    """FLUX.1 (Kontext): the pack modulates isolated references as condition tokens; with
    references on the negative too, CFG runs batched, without them in two calls (two caches)."""
    conds = ref_conds(flux1, ref_latents(flux1, 3, seed=1), method, uncond_refs=uncond_refs)
    isolated, _ = route_refs(pack, flux1, dynamic=True, isolate=True)
    cached, rec = route_refs(pack, flux1, dynamic=True, isolate=True, cache=True)
    want = sample_refs(isolated, conds, steps=4)
    captured = spy_block_attention(pack, monkeypatch)
    got = sample_refs(cached, conds, steps=4)
    assert cached_calls(captured) == 3 * 4  # the negative without references has none to cache
    assert rec.latest.caches == []
    assert_exact(got, want)
    assert_routing_acts(want, sample_refs(route_refs(pack, flux1, dynamic=True)[0], conds, steps=4))


def check_reference_cache(pack, model, run, monkeypatch) -> None:
    """``run(model)`` samples the model's references: isolated + cached = isolated uncached, the
    cache was used, isolation acts."""
    want = run(route_refs(pack, model, dynamic=True, isolate=True)[0])
    captured = spy_block_attention(pack, monkeypatch)
    got = run(route_refs(pack, model, dynamic=True, isolate=True, cache=True)[0])
    assert cached_calls(captured) > 0
    assert_exact(got, want)
    assert_routing_acts(want, run(route_refs(pack, model, dynamic=True)[0]))


def test_isolated_timestep_zero_references_cached_equal_the_uncached_run_klein(pack, klein, monkeypatch):
    require_timestep_zero()
    conds = ref_conds(klein, ref_latents(klein, 3, seed=2), TIMESTEP_ZERO)
    check_reference_cache(pack, klein, lambda m: sample_refs(m, conds, steps=4), monkeypatch)


def test_isolated_qwen_2511_references_cached_equal_the_uncached_run(pack, qwen_2511, monkeypatch):
    from test_qwen_references import conds, refs
    from test_qwen_references import sample as qwen_sample

    cond = conds(refs(3, seed=4))
    check_reference_cache(pack, qwen_2511, lambda m: qwen_sample(m, cond, steps=4), monkeypatch)


def test_a_sampling_timestep_reference_method_is_refused_before_sampling(pack, klein, monkeypatch):
    errors = pack_module(pack, "musar.errors")
    cached, _ = route_refs(pack, klein, isolate=True, cache=True)
    captured = spy_block_attention(pack, monkeypatch)
    with pytest.raises(errors.LayoutError, match="modulated at a fixed timestep"):
        sample_refs(cached, ref_conds(klein, ref_latents(klein, 2), "index"))
    assert not captured  # no block ran


# ---- a cache never outlives its run, never serves another input ---------------------------------
def test_a_second_run_with_other_references_or_prompt_gets_no_stale_cache(pack, flux1):
    cached, _ = route_refs(pack, flux1, isolate=True, cache=True)
    first = ref_conds(flux1, ref_latents(flux1, 2, seed=5), "index", seed=1)
    other_refs = ref_conds(flux1, ref_latents(flux1, 2, seed=6), "index", seed=1)
    other_prompt = ref_conds(flux1, ref_latents(flux1, 2, seed=5), "index", seed=2)
    sample_refs(cached, first, steps=3)
    for conds in (other_refs, other_prompt):
        fresh, _ = route_refs(pack, flux1, isolate=True, cache=True)
        assert torch.equal(sample_refs(cached, conds, steps=3), sample_refs(fresh, conds, steps=3))


def test_another_lora_on_the_same_routing_gets_no_stale_cache(pack, flux1):
    from musar_helpers import random_dual_lora

    patcher = pack_module(pack, "nodes.patcher")
    subjects = make_subjects(pack)
    cached, _ = routed(pack, flux1, subjects, isolate=True, cache=True)
    sample(cached, steps=3)
    _, lora = random_dual_lora(pack, flux1, seed=3, scale=0.3)
    with_lora = patcher.apply_lora(cached, lora, 1.0, 1.0)
    uncached = patcher.apply_lora(routed(pack, flux1, subjects, isolate=True)[0], lora, 1.0, 1.0)
    got, want = sample(with_lora, steps=3), sample(uncached, steps=3)
    assert_exact(got, want)
    assert_routing_acts(got, sample(cached, steps=3))  # the LoRA changed the image


def test_cancel_mid_run_leaves_no_stale_cache(pack, flux1, monkeypatch):
    blocks = pack_module(pack, "musar.block")
    cached, rec = route_refs(pack, flux1, isolate=True, cache=True)
    conds = ref_conds(flux1, ref_latents(flux1, 3, seed=7), "index")
    want = sample_refs(cached, conds, steps=4)
    original, calls = blocks.block_attention, []

    def interrupting(call, *a):
        calls.append(call.cached)
        if len(calls) == 7:  # the second step, inside its third block: the cache is in use
            raise comfy.model_management.InterruptProcessingException()
        return original(call, *a)

    monkeypatch.setattr(blocks, "block_attention", interrupting)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample_refs(cached, conds, steps=4)
    assert calls[-1] and rec.latest.caches == []
    monkeypatch.setattr(blocks, "block_attention", original)
    assert torch.equal(sample_refs(cached, conds, steps=4), want)


# ---- refused before sampling ----------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"isolate": True, "symmetric": True, "dynamic": True}, "turn symmetric or isolate off"),
    ({"cache": True}, "exact only for isolated references"),
    ({"isolate": True, "strength": 0.5}, "set strength to 1 or turn isolate off"),
])
def test_settings_that_let_references_see_the_canvas_are_refused(pack, flux1, kw, match):
    errors = pack_module(pack, "musar.errors")
    with pytest.raises(errors.RoutingError, match=match):
        route_refs(pack, flux1, **kw)


def test_with_core_flux_kv_cache_our_exact_cache_wins(pack, klein):
    require_timestep_zero()
    cls = comfy_nodes.NODE_CLASS_MAPPINGS.get("FluxKVCache")
    if cls is None:
        pytest.skip("this ComfyUI has no FluxKVCache node (added after 0.3.75)")
    out = cls.execute(klein)
    core_cached = out.result[0] if hasattr(out, "result") else out[0]
    conds = ref_conds(klein, ref_latents(klein, 3, seed=8), TIMESTEP_ZERO)
    ours, _ = route_refs(pack, klein, dynamic=True, isolate=True, cache=True)
    both, _ = route_refs(pack, core_cached, dynamic=True, isolate=True, cache=True)
    assert torch.equal(sample_refs(both, conds, steps=4), sample_refs(ours, conds, steps=4))
