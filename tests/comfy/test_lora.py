"""Dual-branch LoRA as object patches inside ComfyUI: token ranges, files through the node,
stacking, fp8 weights, clone safety."""

import folder_paths
import pytest
import torch
from musar_helpers import make_subjects, pack_module, routed, sample


@pytest.fixture(scope="module")
def model(tiny_flux):
    return tiny_flux(seed=5)


def _random_dual(pack, model, rank_n=2, rank_s=4, seed=0, zero_up=False):
    lora = pack_module(pack, "musar.lora")
    patcher = pack_module(pack, "nodes.patcher")
    dm = model.model.diffusion_model
    names = lora.target_modules(len(dm.double_blocks), len(dm.single_blocks))
    params = lora.init_trainable(patcher.model_shapes(model, names), rank_n, rank_s, seed)
    if not zero_up:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for k, v in params.items():
                if k.endswith(".up"):
                    v.copy_(torch.randn(v.shape, generator=g) * 0.5)
    return lora.from_trainable(params)


def test_wrapped_module_applies_each_branch_to_its_tokens(pack, model):
    lora_modules = pack_module(pack, "nodes.lora_modules")
    session = pack_module(pack, "musar.session")
    layout_mod = pack_module(pack, "musar.layout")
    base = model.get_model_object("diffusion_model.double_blocks.0.img_attn.qkv")
    dual = _random_dual(pack, model)
    noisy, subject = dual.modules["double_blocks.0.img_attn.qkv"]
    layout = layout_mod.TokenLayout(7, 16, (3, 2), (8, 4))
    x = torch.randn(2, layout.img_len, base.in_features)
    for n_s, s_s, changed in ((1.0, 0.0, slice(0, 16)), (0.0, 1.0, slice(16, 28))):
        twin = lora_modules.wrap(base, "double_blocks.0.img_attn.qkv", noisy, subject, n_s, s_s)
        assert twin.weight is base.weight and type(base).__name__ != type(twin).__name__
        with session.activate(session.MusarCall(layout)):
            out = twin(x)
        ref = base(x)
        moved = (out - ref).abs().amax(dim=(0, 2)) > 0
        expect = torch.zeros(layout.img_len, dtype=torch.bool)
        expect[changed] = True
        assert torch.equal(moved, expect)
    assert not hasattr(base, "_musar_branches")


def _save(pack, dual, name):
    lora = pack_module(pack, "musar.lora")
    path = f"{folder_paths.get_folder_paths('loras')[0]}/{name}"
    import os
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lora.save_dual_lora(path, dual)
    return name


def test_lora_node_changes_the_output_and_leaves_the_input_model_alone(pack, model):
    lora_nodes = pack_module(pack, "nodes.lora")
    name = _save(pack, _random_dual(pack, model), "tiny_dual.safetensors")
    subjects = make_subjects(pack)
    before = sample(model)
    plain_routed, _ = routed(pack, model, subjects)
    loaded = lora_nodes.MusarLoadDualLoRA.execute(model, name, 1.0, 1.0).result[0]
    with_lora, _ = routed(pack, loaded, subjects)
    a, b = sample(plain_routed), sample(with_lora)
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(sample(model), before)
    assert not model.object_patches


def test_noisy_and_subject_branches_act_independently(pack, model):
    lora_nodes = pack_module(pack, "nodes.lora")
    name = _save(pack, _random_dual(pack, model, seed=3), "tiny_dual_b.safetensors")
    subjects = make_subjects(pack)
    outs = {}
    for key, (s_n, s_s) in {"none": (0.0, 0.0), "noisy": (1.0, 0.0), "subject": (0.0, 1.0)}.items():
        loaded = lora_nodes.MusarLoadDualLoRA.execute(model, name, s_n, s_s).result[0]
        outs[key] = sample(routed(pack, loaded, subjects)[0])
    assert (outs["noisy"] - outs["none"]).abs().max() > 1e-4
    assert (outs["subject"] - outs["none"]).abs().max() > 1e-4
    assert (outs["noisy"] - outs["subject"]).abs().max() > 1e-4
    # without subjects the subject branch has no tokens to act on: bit-identical to no LoRA
    loaded = lora_nodes.MusarLoadDualLoRA.execute(model, name, 0.0, 1.0).result[0]
    assert torch.equal(sample(loaded), sample(model))


def test_zero_initialised_lora_is_bit_identical(pack, model):
    patcher = pack_module(pack, "nodes.patcher")
    dual = _random_dual(pack, model, zero_up=True)
    subjects = make_subjects(pack)
    with_lora = patcher.apply_lora(model, dual, 1.0, 1.0)
    assert torch.equal(sample(routed(pack, with_lora, subjects)[0]), sample(routed(pack, model, subjects)[0]))


def test_two_dual_loras_stack(pack, model):
    patcher = pack_module(pack, "nodes.patcher")
    a, b = _random_dual(pack, model, seed=1), _random_dual(pack, model, seed=2)
    one = sample(patcher.apply_lora(model, a, 1.0, 1.0))
    both = patcher.apply_lora(patcher.apply_lora(model, a, 1.0, 1.0), b, 1.0, 1.0)
    twin = both.object_patches["diffusion_model.img_in"]
    assert len(twin._musar_branches) == 2
    assert (sample(both) - one).abs().max() > 1e-4


def test_lora_for_another_width_is_refused_before_sampling(pack, model, tiny_flux):
    lora_nodes = pack_module(pack, "nodes.lora")
    errors = pack_module(pack, "musar.errors")
    wide = tiny_flux(hidden=256, heads=4)
    name = _save(pack, _random_dual(pack, wide), "wide_dual.safetensors")
    with pytest.raises(errors.LoRAFormatError, match="256 features|different model"):
        lora_nodes.MusarLoadDualLoRA.execute(model, name, 1.0, 1.0)


def test_fp8_weights_with_lora_and_routing(pack, standins):
    cfg = standins.flux_unet_config()
    fp32 = standins.build_flux(cfg, seed=4)
    fp8 = standins.build_flux(cfg, seed=4, dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert fp8.model.diffusion_model.img_in.weight.dtype == torch.float8_e4m3fn
    patcher = pack_module(pack, "nodes.patcher")
    subjects = make_subjects(pack)
    dual = _random_dual(pack, fp32)
    outs = [sample(routed(pack, patcher.apply_lora(m, dual, 1.0, 1.0), subjects)[0]) for m in (fp32, fp8)]
    assert torch.isfinite(outs[1]).all()
    assert (outs[0] - outs[1]).abs().max() < 0.25 * outs[0].abs().max()
    assert fp8.model.diffusion_model.img_in.weight.dtype == torch.float8_e4m3fn
