"""Dual-branch LoRA as object patches inside ComfyUI: token ranges, files through the node,
stacking, fp8 weights, clone safety."""

import os
import shutil

import folder_paths
import pytest
import torch
from musar_helpers import make_subjects, pack_module, random_dual_lora, routed, sample


@pytest.fixture(scope="module")
def model(tiny_flux):
    return tiny_flux(seed=5)


def _random_dual(pack, model, seed=0, zero_up=False):
    return random_dual_lora(pack, model, seed=seed, scale=0.0 if zero_up else 0.5)[1]


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
    loaded = lora_nodes.MusarLoadDualLoRA.execute(model, lora_name=name, strength_noisy=1.0, strength_subject=1.0).result[0]
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
        loaded = lora_nodes.MusarLoadDualLoRA.execute(model, lora_name=name, strength_noisy=s_n, strength_subject=s_s).result[0]
        outs[key] = sample(routed(pack, loaded, subjects)[0])
    assert (outs["noisy"] - outs["none"]).abs().max() > 1e-4
    assert (outs["subject"] - outs["none"]).abs().max() > 1e-4
    assert (outs["noisy"] - outs["subject"]).abs().max() > 1e-4
    # without subjects the subject branch has no tokens to act on: bit-identical to no LoRA
    loaded = lora_nodes.MusarLoadDualLoRA.execute(model, lora_name=name, strength_noisy=0.0, strength_subject=1.0).result[0]
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
        lora_nodes.MusarLoadDualLoRA.execute(model, lora_name=name, strength_noisy=1.0, strength_subject=1.0)


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


# ---- through the executor: bad values, malformed files, linked widgets ------------------------
@pytest.fixture(scope="module")
def run_prompt():
    from musar_run import runtime

    executor = runtime.new_executor()
    return lambda prompt: runtime.run_prompt(prompt, executor=executor)


@pytest.fixture(scope="module")
def tiny_lora(pack, standins):
    """A random dual LoRA for the loader node's tiny FLUX (MUSAR_TinyFluxLoader, seed 0)."""
    model = standins.build_flux(standins.flux_unet_config(), seed=0)
    return _save(pack, _random_dual(pack, model, seed=7), "graph_dual.safetensors")


def _graph(lora_name, noisy=1.0, subject=1.0):
    from test_training import _generation

    prompt = _generation(lora_name, 1.0)
    prompt["2"]["inputs"].update(strength_noisy=noisy, strength_subject=subject)
    return prompt


def _executed(result):
    return [d for e, d in result.messages if e == "execution_error"][0]["executed"]


def test_strengths_fed_from_primitive_nodes_give_the_literal_image(run_prompt, tiny_lora):
    literal = run_prompt(_graph(tiny_lora, 0.7, -0.4))
    prompt = _graph(tiny_lora)
    prompt["f1"] = {"class_type": "PrimitiveFloat", "inputs": {"value": 0.7}}
    prompt["f2"] = {"class_type": "PrimitiveFloat", "inputs": {"value": -0.4}}
    prompt["2"]["inputs"].update(strength_noisy=["f1", 0], strength_subject=["f2", 0])
    linked = run_prompt(prompt)
    literal.raise_for_error()
    linked.raise_for_error()
    assert torch.equal(literal.output("9")[0], linked.output("9")[0])


@pytest.mark.parametrize("noisy, subject, bad", [
    (float("nan"), 1.0, "strength_noisy"), (1.0, float("nan"), "strength_subject"),
    (3.0, 1.0, "strength_noisy")])
def test_nan_or_out_of_range_strength_is_refused(run_prompt, tiny_lora, noisy, subject, bad):
    literal = run_prompt(_graph(tiny_lora, noisy, subject))  # refused at validation
    assert not literal.ok and "2" in literal.node_errors and bad in str(literal.node_errors)
    prompt = _graph(tiny_lora)  # the same value through a link: refused when the node runs
    prompt["f"] = {"class_type": "PrimitiveFloat", "inputs": {"value": noisy if bad == "strength_noisy" else subject}}
    prompt["2"]["inputs"][bad] = ["f", 0]
    result = run_prompt(prompt)
    assert result.error["node_id"] == "2" and result.error["exception_type"].endswith("MusarError")
    assert bad in result.error["exception_message"] and "8" not in _executed(result)


@pytest.mark.parametrize("name", ["../outside_dual.safetensors", "{abs}", "../../models/outside_dual.safetensors",
                                  "../outside_dual.safetensors\x00", "", "/etc/passwd"])
def test_lora_names_cannot_leave_the_loras_folder(run_prompt, tiny_lora, name):
    loras = folder_paths.get_folder_paths("loras")[0]
    outside = os.path.join(os.path.dirname(loras), "outside_dual.safetensors")  # a real LoRA
    if not os.path.exists(outside):
        shutil.copy(os.path.join(loras, tiny_lora), outside)
    name = name.replace("{abs}", outside)
    result = run_prompt(_graph(name))
    assert not result.ok and "2" in result.node_errors, result
    text = str(result.node_errors)
    assert "is not in models/loras" in text and os.path.dirname(loras) not in text.replace(name, "")


def _malformed(pack, kind):
    """A LoRA file in models/loras that parses as safetensors but is malformed in one way."""
    from safetensors.torch import save_file

    lora = pack_module(pack, "musar.lora")
    path = os.path.join(folder_paths.get_folder_paths("loras")[0], "musar_test", f"bad_{kind}.safetensors")
    src = os.path.join(folder_paths.get_folder_paths("loras")[0], "graph_dual.safetensors")
    tensors, meta = lora.read_safetensors(src)
    key = "musar.double_blocks.0.img_attn.qkv.subject.up"
    if kind == "nan":
        tensors[key] = torch.full_like(tensors[key], float("nan"))
    elif kind == "1d":
        tensors[key] = tensors[key][:, 0].contiguous()
    elif kind == "gelu":
        tensors["musar.double_blocks.0.img_mlp.1.noisy.down"] = torch.ones(2, 512)
        tensors["musar.double_blocks.0.img_mlp.1.noisy.up"] = torch.ones(512, 2)
        key = "img_mlp.1"
    elif kind == "version":
        meta["musar.format_version"] = "1.0"
        key = "musar.format_version"
    elif kind == "deep":
        tensors["musar.double_blocks.7.img_attn.qkv.subject.down"] = torch.ones(4, 128)
        tensors["musar.double_blocks.7.img_attn.qkv.subject.up"] = torch.ones(384, 4)
        key = "double_blocks.7"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path, metadata=meta)
    return f"musar_test/bad_{kind}.safetensors", key


@pytest.mark.parametrize("kind", ["nan", "1d", "gelu", "version", "deep"])
def test_malformed_lora_file_is_a_format_error_before_sampling(pack, run_prompt, tiny_lora, kind):
    name, key = _malformed(pack, kind)
    result = run_prompt(_graph(name))
    err = result.error
    assert err["node_id"] == "2" and err["exception_type"].endswith("LoRAFormatError"), err
    assert key in err["exception_message"], err["exception_message"]
    assert "8" not in _executed(result)  # KSampler never ran
    run_prompt(_graph(tiny_lora)).raise_for_error()  # the executor keeps working
